"""Issue 13, repro 1: the code capture leaves runrec's stores out (real git repositories); the
dirty flag is checked against `git status --porcelain` with the same directories excluded."""

from helpers import git

from runrec_cluster.capture.git import capture_code
from runrec_cluster.store import layout


def _status(repo, *excluded: str) -> str:
    spec = ["--", ".", *(f":(exclude){d}" for d in excluded)] if excluded else []
    return git(repo, "status", "--porcelain", "--untracked-files=all", *spec)


def _fake_store(d):
    """A directory with what a store holds at its top (without the .gitignore a new store
    gets: a store made before stores ignored themselves)."""
    (d / "logs").mkdir(parents=True)
    (d / layout.META_FILE).write_bytes(b"\x00meta")
    (d / "logs" / "stdout.txt").write_text("hello\n")


def test_explicit_exclude_inside_repo(repo, store):
    s = repo / "records"
    (s / "logs").mkdir(parents=True)  # no metadata file: only the explicit exclude finds it
    (s / "logs" / "stdout.txt").write_text("hello\n")
    assert _status(repo) != "" and _status(repo, "records") == ""
    assert capture_code(str(repo), store.put_blob).dirty is True
    code = capture_code(str(repo), store.put_blob, exclude=[str(s)])
    assert code.dirty is False and code.untracked == [] and code.patch_blob is None


def test_untracked_store_found_without_being_named(repo, store):
    _fake_store(repo / "a" / "runrec-store")
    (repo / "train.py").write_text("print('changed')\n")
    assert sorted(_status(repo, "a/runrec-store").splitlines()) == [" M train.py"]
    code = capture_code(str(repo), store.put_blob)
    assert code.dirty is True and code.untracked == []
    patch = store.get_blob(code.patch_blob)
    assert b"train.py" in patch and b"runrec-store" not in patch


def test_exclude_outside_repo_changes_nothing(repo, store, tmp_path):
    (repo / "notes.txt").write_text("n\n")
    code = capture_code(str(repo), store.put_blob, exclude=[str(tmp_path / "elsewhere"), repo])
    assert code.dirty is True and [u.path for u in code.untracked] == ["notes.txt"]


def test_committed_store_counts_unless_it_is_the_runs_store(repo, store):
    """A store committed to the repository is the user's content: its changes are recorded,
    unless it is the store the run is recorded in."""
    _fake_store(repo / "fixtures" / "old-store")
    git(repo, "add", ".")
    git(repo, "commit", "-qm", "fixture store")
    (repo / "fixtures" / "old-store" / "logs" / "stdout.txt").write_text("changed\n")
    assert _status(repo) != ""
    assert capture_code(str(repo), store.put_blob).dirty is True
    own = capture_code(str(repo), store.put_blob, exclude=[repo / "fixtures" / "old-store"])
    assert _status(repo, "fixtures/old-store") == "" and own.dirty is False


def test_repo_without_commit(tmp_path, store):
    d = tmp_path / "empty"
    d.mkdir()
    git(d, "init", "-q", "-b", "main")
    _fake_store(d / "runrec-store")
    assert _status(d, "runrec-store") == ""
    code = capture_code(str(d), store.put_blob)
    assert code.commit is None and code.dirty is False and code.untracked == []
    (d / "train.py").write_text("x = 1\n")
    git(d, "add", "train.py")
    assert capture_code(str(d), store.put_blob).dirty is True
