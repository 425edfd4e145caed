"""Kept copies of artifacts on the local backend: real runs, a real rerun that rewrites the
original's artifact in place, promotion and ``rr.Artifact`` from the kept copy, ``runrec diff``'s
artifact section. Ground truth: the bytes the test reads back from the file the job wrote
(sha256, BLAKE3), ``os.stat`` inode numbers, the version files on disk."""

import hashlib
import json
import os
import stat
import sys

import jobfns
import pytest
from blake3 import blake3
from helpers import git, run_cli

import runrec_cluster as rr
from runrec_cluster.capture import inputs as capture_inputs
from runrec_cluster.lineage import promote
from runrec_cluster.store import layout
from runrec_cluster.store.promoted import list_promotions

SCRIPT = """\
import argparse, os
import runrec_cluster as rr

p = argparse.ArgumentParser()
p.add_argument("--out")
p.add_argument("--reps", type=int, default=5000)
a = p.parse_args()
data = ("weights of " + os.environ["RUNREC_RUN_ID"] + ";").encode() * a.reps
# rewrite in place, as most code does: the same inode, truncated and written again
with open(a.out, "r+b" if os.path.exists(a.out) else "wb") as f:
    f.seek(0)
    f.truncate()
    f.write(data)
rr.current_run().log_artifact(a.out, name="model")
"""


def sha256(path) -> str:
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


def b3(path) -> str:
    with open(path, "rb") as f:
        return "blake3:" + blake3(f.read()).hexdigest()


def versions(store, run_id):
    return {p: open(p, "rb").read() for p in store.version_files(run_id)}


@pytest.fixture
def script_repo(repo):
    (repo / "train.py").write_text(SCRIPT)
    git(repo, "commit", "-qam", "script")
    return repo


def _submit(store, repo, out, *extra):
    h = rr.Executor(backend="local", store=store, cwd=repo).submit_command(
        [sys.executable, "train.py", "--out", str(out), *extra]
    )
    rec = h.wait(timeout=120)
    assert rec.state == rr.RunState.SUCCEEDED, rec.failure
    return rec


def test_a_rerun_that_rewrites_the_artifact_in_place_leaves_the_original_promotable(
    store, script_repo, tmp_path
):
    out = tmp_path / "outputs" / "model.bin"
    out.parent.mkdir()
    orig = _submit(store, script_repo, out)
    truth_sha, truth_b3, truth_size = sha256(out), b3(out), out.stat().st_size
    inode = out.stat().st_ino
    art = orig.artifacts[0]
    assert (art.digest, art.size) == (truth_b3, truth_size)  # the digest as before
    assert art.kept == layout.kept_rel(truth_b3) and art.kept_how in ("copy", "reflink")
    kept_path = os.path.join(store.root, art.kept)
    assert os.stat(kept_path).st_ino != inode  # not a hard link to the user's file
    assert stat.S_IMODE(os.stat(kept_path).st_mode) & 0o222 == 0
    before = versions(store, orig.run_id)

    r = run_cli(
        "rerun", orig.run_id[:12], "--set", "reps=6000", "--wait", "--store", store.root,
        cwd=script_repo,
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    new_id = r.stdout.split("submitted rerun ")[1].split()[0]
    assert out.stat().st_ino == inode  # the rerun wrote the same file in place
    assert sha256(out) != truth_sha
    # the original's record and kept copy are untouched
    assert versions(store, orig.run_id) == before
    assert sha256(kept_path) == truth_sha
    assert store.load(new_id).artifacts[0].digest == b3(out)

    r = run_cli("promote", orig.run_id[:12], "model", "--to", "orig-model", "--store", store.root)
    assert r.returncode == 0, r.stderr
    assert "from: the run's kept copy" in r.stdout
    p = promote.verify(store, "orig-model")[0]
    assert p.intact and p.found == truth_b3
    rec = list_promotions(store, "orig-model")[0].promotion
    assert rec.from_kept == art.kept and rec.digest == truth_b3
    assert sha256(os.path.join(store.root, "promoted", "orig-model", "v1", rec.files)) == (
        truth_sha
    )
    # the artifact as an input resolves to the kept copy, with the recorded digest
    ref = capture_inputs.resolve_artifact_input(store, f"{orig.run_id}:model")
    assert ref.path == kept_path and ref.digest == truth_b3

    r = run_cli("diff", orig.run_id, new_id, "--store", store.root)
    assert r.returncode == 0, r.stderr
    row = next(ln for ln in r.stdout.splitlines() if "artifacts.model " in ln)
    assert "changed" in row and "incidental" in row
    row = next(ln for ln in r.stdout.splitlines() if "artifacts.model.size" in ln)
    delta = store.load(new_id).artifacts[0].size - truth_size
    assert f"delta {delta:+,}" in row and "incidental" in row
    r = run_cli("diff", orig.run_id, new_id, "--json", "--store", store.root)
    got = {d["key"]: d for d in json.loads(r.stdout)["differences"]}
    assert got["artifacts.model"]["a"] == truth_b3
    assert got["artifacts.model"]["label"] == "incidental"
    assert got["config.reps"]["label"] == "intended"


def test_over_the_limit_an_artifact_is_recorded_by_digest_only(store, script_repo, tmp_path):
    (script_repo / "runrec.toml").write_text("keep_artifacts_max_mb = 0.01\n")  # 10 KiB
    git(script_repo, "add", "runrec.toml")
    git(script_repo, "commit", "-qm", "small limit")
    out = tmp_path / "model.bin"
    first = _submit(store, script_repo, out)  # about 50 KB
    art = first.artifacts[0]
    assert art.kept is None and art.digest == b3(out)
    assert "over keep_artifacts_max_mb = 0.01: recorded by digest only" in art.not_kept
    assert not os.path.exists(os.path.join(store.root, "artifacts"))
    _submit(store, script_repo, out)  # a second run writes the same path
    with pytest.raises(rr.PromotionError, match="changed since the run recorded it") as e:
        promote.promote(store, first.run_id, "model", to="m")
    assert "no kept copy (" in str(e.value) and "keep_artifacts_max_mb = 0.01" in str(e.value)
    r = run_cli("show", first.run_id, "--store", store.root)
    assert "not kept:" in r.stdout


def test_a_directory_artifact_is_kept_and_promoted_after_it_was_deleted(store, tmp_path):
    d = tmp_path / "ckpt"
    h = rr.Executor(backend="local", store=store, cwd=tmp_path).submit(
        jobfns.write_dir_artifact, str(d)
    )
    h.result(timeout=120)
    truth = {
        os.path.relpath(os.path.join(dp, f), d): sha256(os.path.join(dp, f))
        for dp, _, fs in os.walk(d)
        for f in fs
    }
    rec = store.load(h.run_id)
    art = rec.artifacts[0]
    assert art.is_dir and art.kept.startswith("artifacts/trees/") and art.manifest_blob
    manifest = store.get_obj(art.manifest_blob)
    assert sorted(m[0] for m in manifest) == sorted(truth)
    for p in sorted(d.rglob("*"), reverse=True):
        p.unlink() if p.is_file() else p.rmdir()
    d.rmdir()
    got = promote.promote(store, h.run_id, art.name, to="ckpt")
    assert got.from_kept == art.kept
    copy = os.path.join(store.root, "promoted", "ckpt", "v1", got.files)
    assert {
        os.path.relpath(os.path.join(dp, f), copy): sha256(os.path.join(dp, f))
        for dp, _, fs in os.walk(copy)
        for f in fs
    } == truth


def test_keeping_off_keeps_nothing(store, tmp_path, monkeypatch):
    monkeypatch.setenv("RUNREC_KEEP_ARTIFACTS_MAX_MB", "0")
    d = tmp_path / "ckpt"
    h = rr.Executor(backend="local", store=store, cwd=tmp_path).submit(
        jobfns.write_dir_artifact, str(d)
    )
    h.result(timeout=120)
    art = store.load(h.run_id).artifacts[0]
    assert art.kept is None and "keeping copies is off" in art.not_kept
    assert not os.path.exists(os.path.join(store.root, "artifacts"))
