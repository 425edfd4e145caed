"""Reruns on the local backend from real records in real git repositories: materialized code
(a worktree with the recorded patch), pinned generated values, overrides, changed inputs,
unreachable commits, whole sweeps, and `runrec diff` / `runrec ls` around them."""

import importlib
import json
import os
import secrets
import sys

import jobfns
import pytest
from helpers import git, run_cli

import runrec_cluster as rr
from runrec_cluster.rerun.core import order_with_reruns
from runrec_cluster.rerun.overrides import apply_overrides, coerce, rewrite_argv

TRAIN = """\
import random
import runrec_cluster as rr

FACTOR = {factor}


def train(x, scale=1):
    import extra

    run = rr.current_run()
    seed = run.log_config({{"seed": random.randrange(10**9)}})["seed"]
    value = x * FACTOR * scale + extra.BONUS
    run.log_metrics({{"value": value}})
    return {{"value": value, "seed": seed}}
"""

SCRIPT = """\
import argparse, json, random
import runrec_cluster as rr

p = argparse.ArgumentParser()
p.add_argument("--lr", type=float, default=0.1)
p.add_argument("--data")
a = p.parse_args()
run = rr.current_run()
seed = run.log_config({"seed": random.randrange(10**9)})["seed"]
n = len(open(a.data).read()) if a.data else 0
run.log_metrics({"loss": round(1 - a.lr, 6), "n": n, "seed": seed})
"""


def _module_repo(tmp_path, factor=2):
    """A repository with one module (unique name) defining ``train``; returns (dir, name)."""
    d = tmp_path / "proj"
    d.mkdir()
    git(d, "init", "-q", "-b", "main")
    name = f"calc_{secrets.token_hex(4)}"
    (d / f"{name}.py").write_text(TRAIN.format(factor=factor))
    (d / "extra.py").write_text("BONUS = 0\n")
    git(d, "add", ".")
    git(d, "commit", "-qm", "first")
    return d, name


def _import(d, name):
    sys.path.insert(0, str(d))
    try:
        return importlib.import_module(name)
    finally:
        sys.path.remove(str(d))


def _ex(store, cwd, **kw):
    return rr.Executor(backend="local", store=store, cwd=cwd, **kw)


def test_dirty_original_reruns_from_materialized_code_after_the_tree_moved_on(store, tmp_path):
    d, name = _module_repo(tmp_path)
    # the original ran on uncommitted changes: a modified module and a new untracked file
    (d / f"{name}.py").write_text(TRAIN.format(factor=3))
    (d / "extra.py").write_text("BONUS = 7\n")
    mod = _import(d, name)
    orig_h = _ex(store, d).submit(mod.train, 5)
    original = orig_h.result(timeout=60)
    assert original["value"] == 5 * 3 + 7
    orig = orig_h.record()
    assert orig.code.dirty and orig.code.patch_blob
    # the working tree moves on: the change is committed, then changed again
    git(d, "add", "-A")
    git(d, "commit", "-qm", "second")
    (d / f"{name}.py").write_text(TRAIN.format(factor=10))
    git(d, "commit", "-qam", "third")

    notes = []
    h = rr.rerun(store, orig.run_id[:12], reason="reproduce", echo=notes.append)
    assert h.result(timeout=60) == original  # same value, and the generated seed is pinned
    rec = h.record()
    assert rec.rerun_of == orig.run_id and rec.rerun_root == orig.run_id
    assert rec.rerun.reason == "reproduce" and rec.rerun.code_from == "worktree"
    assert rec.rerun.function_from == "name"
    wt = rec.rerun.code_dir
    assert wt.startswith(os.path.join(store.root, "worktrees")) and os.path.isdir(wt)
    assert rec.entrypoint.cwd == wt and rec.execution.backend == "local"
    # the new run records exactly the original code: same commit, same patch
    assert (rec.code.commit, rec.code.patch_blob) == (orig.code.commit, orig.code.patch_blob)
    assert rec.config["seed"].value == orig.config["seed"].value
    assert rec.config["seed"].source == "generated" and rec.rerun.pinned == {
        "seed": orig.config["seed"].value
    }
    assert [x.what for x in rec.rerun.intended] == ["entrypoint.cwd"]
    assert any("materialized" in n for n in notes)
    # the code there is the original's, not the current checkout's
    assert "FACTOR = 3" in open(os.path.join(wt, f"{name}.py")).read()
    assert "FACTOR = 10" in (d / f"{name}.py").read_text()

    # a rerun of the rerun keeps the root of the chain
    h2 = rr.rerun(store, rec.run_id, overrides={"scale": "2"}, echo=notes.append)
    r2 = h2.wait(timeout=60)
    assert h2.result()["value"] == 5 * 3 * 2 + 7
    assert r2.rerun_of == rec.run_id and r2.rerun_root == orig.run_id
    assert r2.config["scale"].value == 2 and r2.config["scale"].source == "given"

    # diff: the override is intended, the code location declared; the metric moved
    out = run_cli("diff", orig.run_id, r2.run_id, "--json", "--store", store.root)
    assert out.returncode == 0, out.stderr
    doc = json.loads(out.stdout)
    by_key = {c["key"]: c for c in doc["differences"]}
    assert by_key["config.scale"]["label"] == "intended"
    assert by_key["config.scale"]["a"] == 1 and by_key["config.scale"]["b"] == 2
    assert by_key["metrics.value"]["label"] == "incidental"
    assert "code.commit" not in by_key and "code.patch" not in by_key
    assert "chain of reruns" in doc["relation"]

    # ls: reruns right after their original, marked
    out = run_cli("ls", "--store", store.root)
    lines = [ln for ln in out.stdout.splitlines() if "train" in ln]
    assert len(lines) == 3
    assert "↳" not in lines[0] and "↳ train" in lines[1] and "  ↳ train" in lines[2]


def test_checkout_that_is_exactly_the_recorded_code_runs_in_place(store, repo):
    h = _ex(store, repo).submit(jobfns.add, 1, b=2)
    orig = h.wait(timeout=60)
    notes = []
    r = rr.rerun(store, orig.run_id, echo=notes.append).wait(timeout=60)
    assert r.state == rr.RunState.SUCCEEDED and r.rerun.code_from == "checkout"
    assert r.entrypoint.cwd == str(repo) and r.rerun.code_dir is None
    # jobfns travels by value (see conftest): not importable from the code, and we said so
    assert r.rerun.function_from == "pickle"
    assert any("pickled call" in n for n in notes)
    assert not os.path.exists(os.path.join(store.root, "worktrees"))


def test_a_rerun_keeps_the_role_of_its_config_file_inputs(store, repo):
    cfg = repo / "params.toml"
    cfg.write_text("b = 7\n")
    git(repo, "add", "params.toml")
    git(repo, "commit", "-qm", "params")
    h = _ex(store, repo).submit(jobfns.add, 1, config_from=[rr.ConfigFile(cfg)])
    orig = h.wait(timeout=60)
    r = rr.rerun(store, orig.run_id).wait(timeout=60)
    assert r.state == rr.RunState.SUCCEEDED and r.config["b"].value == 7
    roles = {i.path: i.role for i in r.inputs}
    assert roles == {str(cfg): "config"} == {i.path: i.role for i in orig.inputs}


def test_command_rerun_with_override_from_the_cli(store, repo):
    (repo / "train.py").write_text(SCRIPT)
    git(repo, "commit", "-qam", "script")
    h = _ex(store, repo).submit_command([sys.executable, "train.py", "--lr", "0.1"])
    orig = h.wait(timeout=60)
    assert orig.state == rr.RunState.SUCCEEDED, orig.failure
    out = run_cli(
        "rerun", orig.run_id[:12], "--set", "lr=0.25", "--reason", "try lr", "--wait",
        "--store", store.root, cwd=repo,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    assert "submitted rerun" in out.stdout and "intended: config.lr: 0.1 -> 0.25" in out.stdout
    new_id = out.stdout.split("submitted rerun ")[1].split()[0]
    rec = store.load(new_id)
    assert rec.entrypoint.argv[-2:] == ["--lr", "0.25"]
    assert rec.config["lr"].value == 0.25 and rec.metrics["loss"] == 0.75
    assert rec.metrics["seed"] == orig.metrics["seed"]  # pinned through log_config
    assert rec.rerun.code_from == "checkout"
    assert {d.what for d in rec.rerun.intended} == {"config.lr", "entrypoint.argv"}
    out = run_cli("diff", orig.run_id, new_id, "--store", store.root)
    assert out.returncode == 0, out.stderr
    assert "is a rerun of" in out.stdout and "try lr" in out.stdout
    row = next(ln for ln in out.stdout.splitlines() if "config.lr" in ln)
    assert "0.1" in row and "0.25" in row and "intended" in row
    row = next(ln for ln in out.stdout.splitlines() if "metrics.loss" in ln)
    assert "incidental" in row
    assert "same:" in out.stdout and "inputs" in out.stdout.split("same:")[1]


def test_unknown_key_and_bad_value_are_refused(store, repo):
    orig = _ex(store, repo).submit(jobfns.add, 1).wait(timeout=60)
    out = run_cli("rerun", orig.run_id, "--set", "c=3", "--store", store.root, cwd=repo)
    assert out.returncode == 1 and "Traceback" not in out.stderr
    assert "not a config key" in out.stderr and "its keys: a, b" in out.stderr
    with pytest.raises(rr.RerunError, match="is a int"):
        rr.rerun(store, orig.run_id, overrides={"b": "ten"})
    out = run_cli("rerun", "--store", store.root, cwd=repo)
    assert out.returncode == 2 and "give a RUN, or --sweep ID" in out.stderr
    out = run_cli("rerun", orig.run_id, "--set", "novalue", "--store", store.root, cwd=repo)
    assert out.returncode == 2
    assert len(list(store.run_ids())) == 1  # nothing was submitted


def test_changed_dataset_refuses_unless_allowed(store, repo, tmp_path):
    data = tmp_path / "data.txt"
    data.write_text("abc")
    (repo / "train.py").write_text(SCRIPT)
    git(repo, "commit", "-qam", "script")
    orig = (
        _ex(store, repo)
        .submit_command(
            [sys.executable, "train.py", "--data", str(data)], inputs=[rr.Dataset(data)]
        )
        .wait(timeout=60)
    )
    assert orig.metrics["n"] == 3
    data.write_text("abcdef")
    out = run_cli("rerun", orig.run_id, "--store", store.root, cwd=repo)
    assert out.returncode == 1 and "Traceback" not in out.stderr
    assert f"dataset {data} changed since the run" in out.stderr
    assert "--allow-changed-inputs" in out.stderr
    assert len(list(store.run_ids())) == 1
    h = rr.rerun(store, orig.run_id, allow_changed_inputs=True, echo=lambda m: None)
    rec = h.wait(timeout=60)
    assert rec.metrics["n"] == 6
    (d,) = [x for x in rec.rerun.intended if x.what.startswith("inputs.")]
    assert d.before == orig.inputs[0].digest and d.after == rec.inputs[0].digest != d.before
    doc = json.loads(
        run_cli("diff", orig.run_id, rec.run_id, "--json", "--store", store.root).stdout
    )
    (ch,) = [c for c in doc["differences"] if c["section"] == "inputs"]
    assert ch["label"] == "intended"


def test_unreachable_commit_refuses_with_a_clear_message(store, repo):
    (repo / "train.py").write_text("print('v1')\n")
    git(repo, "commit", "-qam", "v1")
    orig = _ex(store, repo).submit_command([sys.executable, "train.py"]).wait(timeout=60)
    # history rewritten: the recorded commit is amended away and garbage-collected
    (repo / "train.py").write_text("print('v2')\n")
    git(repo, "commit", "-q", "--amend", "-am", "v2")
    git(repo, "reflog", "expire", "--expire=now", "--all")
    git(repo, "gc", "-q", "--prune=now")
    out = run_cli("rerun", orig.run_id, "--store", store.root, cwd=repo)
    assert out.returncode == 1 and "Traceback" not in out.stderr
    assert f"its commit {orig.code.commit} is not reachable in {repo}" in out.stderr
    assert "git fetch" in out.stderr
    assert len(list(store.run_ids())) == 1


def test_a_patch_that_does_not_apply_refuses(store, repo):
    (repo / "train.py").write_text("print('dirty')\n")
    orig = _ex(store, repo).submit_command([sys.executable, "train.py"]).wait(timeout=60)
    bad = store.put_blob(
        b"diff --git a/nope.py b/nope.py\n--- a/nope.py\n+++ b/nope.py\n@@ -1 +1 @@\n-x\n+y\n"
    )
    code = rr.load(store, orig.run_id).code
    store.write_version(
        orig.run_id, "test-tamper", {"code": {**_builtins(code), "patch_blob": bad}}, role="cli"
    )
    with pytest.raises(rr.RerunError, match="does not apply on"):
        rr.rerun(store, orig.run_id, echo=lambda m: None)
    assert not os.listdir(os.path.join(store.root, "worktrees"))  # cleaned up


def _builtins(x):
    import msgspec

    return msgspec.to_builtins(x)


def test_rerun_of_a_whole_sweep(store, repo):
    handles = _ex(store, repo).map_array(jobfns.add, [{"a": i, "b": 1} for i in range(3)])
    origs = [h.wait(timeout=60) for h in handles]
    sweep = origs[0].sweep_id
    out = run_cli(
        "rerun", "--sweep", sweep[:12], "--set", "b=100", "--wait", "--store", store.root, cwd=repo
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.count("submitted rerun") == 3
    news = [r for r in (store.load(i) for i in store.run_ids()) if r.rerun_of]
    assert len(news) == 3 and len({r.sweep_id for r in news}) == 1 and news[0].sweep_id != sweep
    by_orig = {r.rerun_of: r for r in news}
    for o in origs:
        n = by_orig[o.run_id]
        assert n.sweep_index == o.sweep_index
        h = rr.RunHandle(store, n.run_id)
        assert h.result() == o.sweep_index + 100
    out = run_cli("ls", "--sweep", news[0].sweep_id[:12], "--store", store.root)
    assert out.stdout.count("rerun add") == 3  # originals not listed: marked as reruns


def test_diff_of_unrelated_runs_is_all_incidental(store, repo):
    a = _ex(store, repo).submit(jobfns.add, 1).wait(timeout=60)
    b = _ex(store, repo).submit(jobfns.add, 2).wait(timeout=60)
    out = run_cli("diff", a.run_id, b.run_id, "--json", "--store", store.root)
    doc = json.loads(out.stdout)
    assert "unrelated" in doc["relation"]
    keys = {c["key"]: c["label"] for c in doc["differences"]}
    assert keys["config.a"] == "incidental" and keys["result"] == "incidental"
    out = run_cli("diff", a.run_id, "zzzz", "--store", store.root)
    assert out.returncode == 1 and "no run id starts with" in out.stderr


# -- pieces, without jobs ----------------------------------------------------------------------


def test_coerce_follows_the_recorded_type():
    assert coerce("k", "3", 1) == 3 and coerce("k", "0.5", 1.0) == 0.5
    assert coerce("k", "no", True) is False and coerce("k", "x", "y") == "x"
    assert coerce("k", "[1, 2]", [0]) == [1, 2] and coerce("k", "word", None) == "word"
    with pytest.raises(rr.RerunError, match="is a float"):
        coerce("k", "fast", 0.1)


def test_rewrite_argv_and_apply_overrides():
    argv = ["python", "t.py", "--lr", "0.1", "--n=3", "--fast"]
    assert rewrite_argv(argv, {"lr": 0.2, "n": 4, "fast": False}) == [
        "python", "t.py", "--lr", "0.2", "--n=4",
    ]  # fmt: skip

    def f(a, b=2, *rest, c=3, **kw):
        return a, b, rest, c, kw

    args, kwargs = apply_overrides(f, (1,), {"z": 9}, {"b": 5, "c": 6, "z": 10, "new": 1})
    assert f(*args, **kwargs) == (1, 5, (), 6, {"z": 10, "new": 1})


def test_order_with_reruns_puts_reruns_after_their_original():
    from runrec_cluster.record import RunRecord

    a, b, c = (RunRecord(run_id=f"0000000000000000000000000{i}") for i in "abc")
    ra = RunRecord(run_id="0000000000000000000000000d", rerun_of=a.run_id)
    rra = RunRecord(run_id="0000000000000000000000000e", rerun_of=ra.run_id)
    got = [(r.run_id[-1], d) for r, d in order_with_reruns([a, b, c, ra, rra])]
    assert got == [("a", 0), ("d", 1), ("e", 2), ("b", 0), ("c", 0)]
