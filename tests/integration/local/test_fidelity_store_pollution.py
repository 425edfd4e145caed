"""Issue 13, repro 1: the store never pollutes what it records.

A fresh repository, `runrec submit --backend local --wait -- python hello.py` twice with the
store inside the repository (the default ./runrec-store, or one given by RUNREC_STORE), then the
second record's dirty flag, untracked list and patch are checked against what git itself says
(`git status --porcelain` with the store excluded) and by re-applying the patch.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys

import pytest
from helpers import git

import runrec_cluster as rr
from runrec_cluster.store import layout

PYTHON = shutil.which("python") or sys.executable


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "RUNREC_STORE"}
    env.update(extra)
    return env


def _submit(cwd, env) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "runrec_cluster", "submit", "--backend", "local", "--wait"]
        + ["--", PYTHON, "hello.py"],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr


def _fresh_repo(d):
    d.mkdir()
    git(d, "init", "-q", "-b", "main")
    (d / "hello.py").write_text("print('hello')\n")
    git(d, "add", ".")
    git(d, "commit", "-qm", "first")
    return d


def _status(repo, store_rel: str | None) -> str:
    """Ground truth: `git status --porcelain`, the store excluded."""
    spec = ["--", ".", f":(exclude){store_rel}"] if store_rel else []
    return git(repo, "status", "--porcelain", "--untracked-files=all", *spec)


def _latest(store_root):
    s = rr.Store(store_root)
    ids = sorted(s.run_ids())
    assert len(ids) == 2
    return s, s.load(ids[-1])


def _patch(s, rec) -> bytes:
    return s.get_blob(rec.code.patch_blob) if rec.code.patch_blob else b""


def _reapplies(repo, patch: bytes, tmp_path) -> None:
    """The patch applied to a clone at the recorded commit gives the working tree's files."""
    clone = tmp_path / "clone"
    git(tmp_path, "clone", "-q", str(repo), str(clone))
    (tmp_path / "p.diff").write_bytes(patch)
    git(clone, "apply", str(tmp_path / "p.diff"))
    for f in ("hello.py", "notes.txt"):
        assert (clone / f).read_bytes() == (repo / f).read_bytes()


def test_default_store_in_repo_gets_gitignore_and_second_run_is_clean(tmp_path):
    repo = _fresh_repo(tmp_path / "repo")
    env = _env()
    _submit(repo, env)
    gi = repo / "runrec-store" / ".gitignore"
    assert gi.is_file()
    assert "*" in gi.read_text().splitlines()
    assert git(repo, "status", "--porcelain", "--untracked-files=all") == ""
    _submit(repo, env)
    assert git(repo, "status", "--porcelain", "--untracked-files=all") == ""
    s, rec = _latest(repo / "runrec-store")
    assert rec.state.value == "succeeded"
    assert rec.code.dirty is False
    assert rec.code.untracked == []
    assert rec.code.patch_blob is None
    # an existing .gitignore is never overwritten (neither by a run nor by `runrec init`)
    os.chmod(gi, 0o644)
    gi.write_text("keep me\n")
    _submit(repo, env)
    init = subprocess.run(
        [sys.executable, "-m", "runrec_cluster", "init", "runrec-store"],
        cwd=repo,
        env=env,
        capture_output=True,
        text=True,
    )
    assert init.returncode == 0, init.stderr
    assert gi.read_text() == "keep me\n"


def test_unignored_store_in_repo_is_left_out_of_the_capture(tmp_path):
    """A ./runrec-store that git does see (made before stores ignored themselves): the second
    run is not dirty, and its record names none of the first run's files."""
    repo = _fresh_repo(tmp_path / "repo")
    env = _env()
    _submit(repo, env)
    os.unlink(repo / "runrec-store" / ".gitignore")
    polluted = git(repo, "status", "--porcelain", "--untracked-files=all")
    assert "runrec-store/" in polluted  # git sees the store: the situation of the repro
    _submit(repo, env)
    assert _status(repo, "runrec-store") == ""
    s, rec = _latest(repo / "runrec-store")
    assert rec.code.dirty is False
    assert rec.code.untracked == []
    assert rec.code.patch_blob is None
    # `runrec init` gives the old store its .gitignore; git then sees nothing at all
    out = subprocess.run(
        [sys.executable, "-m", "runrec_cluster", "init"],
        cwd=repo,
        env=env,
        capture_output=True,
        text=True,
    )
    assert out.returncode == 0, out.stderr
    assert ".gitignore" in out.stdout
    assert git(repo, "status", "--porcelain", "--untracked-files=all") == ""


def test_runrec_store_env_in_repo_and_real_changes_still_recorded(tmp_path):
    """RUNREC_STORE inside the repository (its .gitignore gone), a modified tracked file and a
    new untracked file: dirty, the patch holds both changes and re-applies, no store path."""
    repo = _fresh_repo(tmp_path / "repo")
    store = repo / "records" / "lab store"
    env = _env(RUNREC_STORE=str(store))
    _submit(repo, env)
    os.unlink(store / ".gitignore")
    (repo / "hello.py").write_text("print('hello, changed')\n")
    (repo / "notes.txt").write_text("a note\n")
    _submit(repo, env)
    truth = _status(repo, "records/lab store")
    assert sorted(truth.splitlines()) == [" M hello.py", "?? notes.txt"]
    s, rec = _latest(store)
    assert rec.code.dirty is True
    assert [u.path for u in rec.code.untracked] == ["notes.txt"]
    patch = _patch(s, rec)
    assert b"records/" not in patch and b"lab store" not in patch
    assert b"hello, changed" in patch and b"a note" in patch
    _reapplies(repo, patch, tmp_path)


@pytest.mark.parametrize("dirty", [False, True])
def test_store_outside_repo(tmp_path, dirty):
    repo = _fresh_repo(tmp_path / "repo")
    store = tmp_path / "elsewhere"
    env = _env(RUNREC_STORE=str(store))
    _submit(repo, env)
    if dirty:
        (repo / "hello.py").write_text("print('hello, changed')\n")
        (repo / "notes.txt").write_text("a note\n")
    _submit(repo, env)
    truth = git(repo, "status", "--porcelain", "--untracked-files=all")
    s, rec = _latest(store)
    assert rec.code.dirty is bool(truth)
    assert (store / layout.GITIGNORE).is_file()
    if dirty:
        _reapplies(repo, _patch(s, rec), tmp_path)
    else:
        assert rec.code.patch_blob is None
