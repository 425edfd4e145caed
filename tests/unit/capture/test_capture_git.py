"""Code capture against real git repositories."""

import os
import shutil
import subprocess

from helpers import git

from runrec_cluster.capture.git import UNTRACKED_TEXT_CAP, capture_code


def _tree(d):
    out = {}
    for root, dirs, files in os.walk(d):
        dirs[:] = [x for x in dirs if x != ".git"]
        for f in files:
            p = os.path.join(root, f)
            out[os.path.relpath(p, d)] = open(p, "rb").read()
    return out


def test_dirty_tree_with_untracked_and_binary_files_reapplies(repo, store, tmp_path):
    (repo / "train.py").write_text("print('changed')\nprint('more')\n")
    (repo / "weights.bin").write_bytes(bytes(reversed(range(256))) * 4)  # tracked binary change
    (repo / "notes.txt").write_text("untracked text\nno newline at end")
    (repo / "sub dir").mkdir()
    (repo / "sub dir" / "new.py").write_text("x = 1\n")
    (repo / "blob.dat").write_bytes(b"\x00\x01binary" * 10)  # untracked binary: listed, hashed
    (repo / "big.txt").write_text("a" * (UNTRACKED_TEXT_CAP + 10))  # untracked, too large
    code = capture_code(str(repo), store.put_blob)
    assert code.is_repo and code.dirty and code.branch == "main" and not code.detached
    assert code.commit == git(repo, "rev-parse", "HEAD").strip()
    by = {u.path: u for u in code.untracked}
    assert by["notes.txt"].included and by["sub dir/new.py"].included
    assert (
        not by["blob.dat"].included
        and by["blob.dat"].reason == "binary"
        and by["blob.dat"].digest.startswith("sha256:")
    )
    assert not by["big.txt"].included and by["big.txt"].reason == "too large"
    # the recorded change re-applies to the recorded commit and reproduces the tree
    clone = tmp_path / "clone"
    subprocess.run(["git", "clone", "-q", str(repo), str(clone)], check=True)
    git(clone, "checkout", "-q", code.commit)
    patch = tmp_path / "change.patch"
    patch.write_bytes(store.get_blob(code.patch_blob))
    git(clone, "apply", "--binary", str(patch))
    want = _tree(repo)
    del want["blob.dat"], want["big.txt"]  # recorded by hash, not content
    assert _tree(clone) == want


def test_clean_tree_has_no_patch(repo, store):
    code = capture_code(str(repo), store.put_blob)
    assert not code.dirty and code.patch_blob is None and code.untracked == []


def test_detached_head(repo, store):
    sha = git(repo, "rev-parse", "HEAD").strip()
    git(repo, "checkout", "-q", "--detach", sha)
    code = capture_code(str(repo), store.put_blob)
    assert code.detached and code.branch is None and code.commit == sha


def test_no_repository(tmp_path, store):
    d = tmp_path / "plain"
    d.mkdir()
    code = capture_code(str(d), store.put_blob)
    assert not code.is_repo and code.commit is None


def test_repository_without_commits(tmp_path, store):
    d = tmp_path / "empty"
    d.mkdir()
    git(d, "init", "-q")
    (d / "a.py").write_text("x\n")
    code = capture_code(str(d), store.put_blob)
    assert code.is_repo and code.commit is None and code.dirty


def test_remote_credentials_are_stripped(repo, store):
    git(
        repo,
        "remote",
        "add",
        "origin",
        "https://alice:ghp_abcdefghijklmnopqrstuvwxyz0123456789@github.com/org/x.git",
    )
    code = capture_code(str(repo), store.put_blob)
    assert code.remote_url == "https://github.com/org/x.git"


def test_submodule_commit_recorded(repo, store, tmp_path):
    other = tmp_path / "lib"
    other.mkdir()
    git(other, "init", "-q", "-b", "main")
    (other / "lib.py").write_text("y\n")
    git(other, "add", ".")
    git(other, "commit", "-qm", "lib")
    git(repo, "-c", "protocol.file.allow=always", "submodule", "add", "-q", str(other), "lib")
    git(repo, "commit", "-qm", "sub")
    code = capture_code(str(repo), store.put_blob)
    assert code.submodules and code.submodules[0].path == "lib"
    assert code.submodules[0].commit == git(other, "rev-parse", "HEAD").strip()


def test_git_missing_is_recorded_not_raised(repo, store, monkeypatch):
    monkeypatch.setenv("PATH", "/nonexistent")
    monkeypatch.setenv("GIT_PYTHON_GIT_EXECUTABLE", "/nonexistent/git")
    code = capture_code(str(repo), store.put_blob)
    assert code.error or not code.is_repo
    assert shutil.which("git", path="/nonexistent") is None
