"""Issue 13, repros 5, 8 and 13, run as written on the local backend: ``runrec submit`` leaves
the command's options to the command, a per-call ``name=`` wins over the Executor's, and unknown
column names are errors (exit 2, with the closest known names) on the row path (``runrec ls``)
and the index path (``runrec table``, ``rr.query``) alike. Ground truth is what the test itself
wrote, passed or saw the script print, never runrec's output read back."""

import json
import os
import re
import sys

import jobfns
import pytest
from helpers import run_cli

import runrec_cluster as rr

ARGS_PY = """import json, sys
with open(sys.argv[0] + ".argv.json", "w") as f:
    json.dump(sys.argv, f)
"""


def _run_id(stdout: str) -> str:
    m = re.search(r"submitted run ([0-9a-z]+)", stdout)
    assert m, stdout
    return m.group(1)


# ---------------------------------------------------------------------------------------------
# repro 5: runrec submit without -- steals nothing
# ---------------------------------------------------------------------------------------------


def test_submit_without_dashdash_gives_the_command_its_options(repo, tmp_path):
    (repo / "args.py").write_text(ARGS_PY)
    store = tmp_path / "store"
    py = sys.executable
    out = run_cli(
        "submit", "--store", str(store), "--backend", "local",
        py, "args.py", "--name", "foo", "--wait",
        cwd=repo,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    run_id = _run_id(out.stdout)
    assert f"\nrun {run_id} " not in out.stdout  # --wait was the script's: runrec did not wait
    rec = rr.RunHandle(rr.Store(store), run_id).wait(timeout=120)
    assert rec.state.value == "succeeded", rec.failure
    seen = json.loads((repo / "args.py.argv.json").read_text())  # what the script received
    assert seen == ["args.py", "--name", "foo", "--wait"]
    assert rec.entrypoint.argv == [py, *seen]  # the record says exactly what ran
    assert rec.name == os.path.basename(py)  # the default name, not "foo"


def test_submit_runrec_options_before_the_command_and_dashdash_still_work(repo, tmp_path):
    (repo / "args.py").write_text(ARGS_PY)
    store = tmp_path / "store"
    py = sys.executable
    out = run_cli(
        "submit", "--store", str(store), "--name", "mine", "--wait",
        py, "args.py", "--wait", "--", "-x",
        cwd=repo,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    run_id = _run_id(out.stdout)
    assert f"run {run_id} succeeded" in out.stdout  # runrec's own --wait
    seen = json.loads((repo / "args.py.argv.json").read_text())
    assert seen == ["args.py", "--wait", "--", "-x"]
    rec = rr.load(rr.Store(store), run_id)
    assert rec.name == "mine" and rec.entrypoint.argv == [py, *seen]

    out = run_cli(
        "submit", "--store", str(store), "--wait", "--", py, "args.py", "--name", "x",
        cwd=repo,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    seen = json.loads((repo / "args.py.argv.json").read_text())
    assert seen == ["args.py", "--name", "x"]
    rec = rr.load(rr.Store(store), _run_id(out.stdout))
    assert rec.entrypoint.argv == [py, *seen] and rec.name == os.path.basename(py)


# ---------------------------------------------------------------------------------------------
# repro 8: a per-call name= wins over the Executor's name
# ---------------------------------------------------------------------------------------------


def test_per_call_name_wins_over_the_executor_name(repo, store):
    ex = rr.Executor(backend="local", store=store, name="from-executor", cwd=repo)
    h_call = ex.submit(jobfns.train, 0.1, name="from-call")
    h_default = ex.submit(jobfns.train, 0.2)
    h_cmd = ex.submit_command([sys.executable, "-c", "pass"], name="cmd-call")
    h_cmd_default = ex.submit_command([sys.executable, "-c", "pass"])
    hs_map = ex.map_array(jobfns.train, [{"lr": 0.1}, {"lr": 0.3}], name="map-call")
    plain = rr.Executor(backend="local", store=store, cwd=repo)
    h_plain = plain.submit_command([sys.executable, "-c", "pass"])
    expected = {
        h_call.run_id: "from-call",
        h_default.run_id: "from-executor",
        h_cmd.run_id: "cmd-call",
        h_cmd_default.run_id: "from-executor",
        hs_map[0].run_id: "map-call",
        hs_map[1].run_id: "map-call",
        h_plain.run_id: os.path.basename(sys.executable),
    }
    for h in [h_call, h_default, h_cmd, h_cmd_default, *hs_map, h_plain]:
        rec = h.wait(timeout=120)
        assert rec.state.value == "succeeded", rec.failure
        assert rec.name == expected[h.run_id]


# ---------------------------------------------------------------------------------------------
# repro 13: unknown column names are errors
# ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tagged(tmp_path_factory):
    """Three real runs with config.lr and metrics.acc; only the first has the tag team=a."""
    base = tmp_path_factory.mktemp("names")
    store = rr.Store(base / "store")
    ex = rr.Executor(backend="local", store=store, cwd=base)
    hs = [
        ex.submit(jobfns.train, 0.1, tags={"team": "a"}),
        ex.submit(jobfns.train, 0.01),
        ex.submit(jobfns.train, 0.5),
    ]
    for h in hs:
        assert h.wait(timeout=120).state.value == "succeeded"
    return store, hs


def _both(store, *args):
    """``runrec ls`` (the row path) and ``runrec table`` (the index path) with ``args``."""
    return (
        run_cli("ls", "--store", store.root, *args),
        run_cli("table", "--store", store.root, *args),
    )


def test_unknown_where_column_exits_2_naming_the_close_name(tagged):
    store, hs = tagged
    for out in _both(store, "--where", "lr > 0.01"):
        assert out.returncode == 2, (out.stdout, out.stderr)
        assert "Traceback" not in out.stderr and out.stdout == ""
        assert "unknown column 'lr' (did you mean config.lr?)" in out.stderr
        assert "  lr > 0.01\n  ^\n" in out.stderr
    ls_err, table_err = (o.stderr for o in _both(store, "--where", "lr > 0.01"))
    assert ls_err == table_err  # the row path and the index path say the same
    with pytest.raises(rr.ExpressionError, match=r"did you mean config\.lr\?"):
        rr.query(store, where="lr > 0.01")
    # a name under a known prefix that no run has is unknown too
    for out in _both(store, "--where", "config.nope > 1 or metrics.acc > 0"):
        assert out.returncode == 2 and "unknown column 'config.nope'" in out.stderr
    for out in _both(store, "--where", "metrics.ac > 0.5"):
        assert out.returncode == 2 and "did you mean metrics.acc" in out.stderr


def test_unknown_columns_and_sort_exit_2(tagged):
    store, hs = tagged
    for out in _both(store, "--columns", "lr,bogus"):
        assert out.returncode == 2, (out.stdout, out.stderr)
        assert "unknown columns 'lr' (did you mean config.lr?), 'bogus'" in out.stderr
    assert (
        _both(store, "--columns", "lr,bogus")[0].stderr
        == _both(store, "--columns", "lr,bogus")[1].stderr
    )
    with pytest.raises(rr.ExpressionError, match="unknown column 'bogus'"):
        rr.query(store, columns=["run_id", "bogus"])
    out = run_cli("ls", "--store", store.root, "--sort", "-acc")
    assert out.returncode == 2 and "did you mean metrics.acc?" in out.stderr


def test_known_names_keep_null_semantics(tagged):
    """tags.team exists on one run: the others read it as null, on both paths."""
    store, hs = tagged
    untagged = sorted(h.run_id for h in hs[1:])
    out = run_cli(
        "ls", "--store", store.root, "--where", "tags.team == null", "--columns", "run_id,tags.team",
        "--json",
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    rows = json.loads(out.stdout)
    assert sorted(r["run_id"] for r in rows) == untagged
    assert all(r["tags.team"] is None for r in rows)
    df = rr.query(store, where="tags.team == null", columns="run_id,tags.team")
    assert sorted(df["run_id"]) == untagged and df["tags.team"].isna().all()
    df = rr.query(store, where="config.lr < 0.2 and packages.torch == null", columns="run_id")
    assert sorted(df["run_id"]) == sorted(h.run_id for h in hs[:2])


def test_empty_store_accepts_run_prefixes_but_not_bare_names(tmp_path):
    store = rr.Store(tmp_path / "empty")
    store.ensure_writable()
    assert len(rr.query(store, where="config.lr > 0.01", columns="run_id,metrics.acc")) == 0
    with pytest.raises(rr.ExpressionError, match="unknown column 'lr'"):
        rr.query(store, where="lr > 0.01")
    out = run_cli("ls", "--store", store.root, "--where", "config.lr > 0.01")
    assert out.returncode == 0 and "no runs match." in out.stdout
    for out in _both(store, "--where", "lr > 0.01"):
        assert out.returncode == 2 and "unknown column 'lr'" in out.stderr


def test_query_sort_checks_its_name_and_sorts(tagged):
    """rr.query(sort=): the order follows the metrics the runs logged (acc = 1 - lr, lr passed
    by this test); an unknown sort column is an ExpressionError like the others."""
    store, hs = tagged
    best_first = [hs[1].run_id, hs[0].run_id, hs[2].run_id]  # lr 0.01, 0.1, 0.5
    df = rr.query(store, columns="run_id,metrics.acc", sort="-metrics.acc")
    assert list(df["run_id"]) == best_first
    t = rr.query(store, columns="run_id,config.lr", sort="config.lr", as_arrow=True)
    assert t.column("run_id").to_pylist() == best_first
    df = rr.query(store, columns="run_id,tags.team", sort="tags.team:desc")
    assert df["run_id"][0] == hs[0].run_id  # the only run with the tag; missing values last
    with pytest.raises(
        rr.ExpressionError, match=r"unknown column 'acc' \(did you mean metrics\.acc"
    ):
        rr.query(store, sort="-acc")
    df = rr.query(store, columns="run_id", sort="metrics.acc")  # by a column not shown
    assert list(df["run_id"]) == best_first[::-1] and list(df.columns) == ["run_id"]
    df = rr.query(store, columns="run_id", sort="-retired")  # nothing retired: every run, as is
    assert sorted(df["run_id"]) == sorted(h.run_id for h in hs)
