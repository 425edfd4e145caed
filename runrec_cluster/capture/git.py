"""Code capture: commit, branch, dirty flag, the uncommitted change itself, submodules.

Never raises for a missing repository, a detached HEAD or an empty repository: those are
recorded. The recorded patch (tracked changes as ``git diff HEAD --binary`` plus untracked text
files under ``UNTRACKED_TEXT_CAP`` as new-file diffs) re-applies with ``git apply`` on the
recorded commit and reproduces the working tree; binary or larger untracked files are listed
with their size and hash.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
from collections.abc import Callable
from typing import TYPE_CHECKING

from runrec_cluster.capture.redact import strip_url_credentials
from runrec_cluster.errors import CaptureError
from runrec_cluster.record import CodeInfo, Submodule, UntrackedFile

if TYPE_CHECKING:
    import git

UNTRACKED_TEXT_CAP = 1024 * 1024  # bytes per untracked file whose content is recorded
UNTRACKED_LIST_CAP = 10_000  # untracked files listed at most


def capture_code(path: str, put_blob: Callable[[bytes], str] | None = None) -> CodeInfo:
    """The code at ``path`` (its repository); ``put_blob`` stores the uncommitted change."""
    try:
        import git  # lazy: GitPython runs `git version` on import, failing on nodes without git
    except ImportError as exc:  # pragma: no cover - a core dependency
        return CodeInfo(is_repo=False, error=f"GitPython not importable: {exc}")
    try:
        repo = git.Repo(path, search_parent_directories=True)
    except (git.InvalidGitRepositoryError, git.NoSuchPathError):
        return CodeInfo(is_repo=False)
    except git.GitCommandError as exc:
        return CodeInfo(is_repo=False, error=f"git failed: {exc}")
    try:
        return _capture(repo, put_blob)
    except Exception as exc:  # git missing, odd repo states: recorded, never a crash
        return CodeInfo(
            is_repo=True, root=repo.working_tree_dir, error=f"{type(exc).__name__}: {exc}"
        )
    finally:
        repo.close()


def _capture(repo: git.Repo, put_blob: Callable[[bytes], str] | None) -> CodeInfo:
    root = repo.working_tree_dir
    if root is None:
        return CodeInfo(is_repo=True, error="bare repository: no working tree")
    try:
        commit = repo.head.commit.hexsha
    except ValueError:  # no commit yet
        commit = None
    detached = repo.head.is_detached
    branch = None if detached else repo.active_branch.name
    remote_url = None
    try:
        if repo.remotes:
            r = repo.remotes["origin"] if "origin" in repo.remotes else repo.remotes[0]
            remote_url = strip_url_credentials(next(iter(r.urls)))
    except Exception:  # remote without url
        remote_url = None

    g = repo.git
    # tracked changes, staged or not, against HEAD (binary-safe); in an empty repo, nothing
    tracked = b""
    if commit is not None:
        tracked = _git_bytes(repo, ["diff", "HEAD", "--binary", "--no-color", "--no-ext-diff"])
    untracked_names = repo.untracked_files
    untracked, new_files = _untracked(root, untracked_names[:UNTRACKED_LIST_CAP])
    patch_parts = [tracked, *new_files]
    patch = b"".join(p if p.endswith(b"\n") or not p else p + b"\n" for p in patch_parts)
    dirty = bool(tracked) or bool(untracked_names)
    if commit is None:
        dirty = bool(untracked_names) or bool(g.status("--porcelain"))
    patch_blob = put_blob(patch) if (patch and put_blob is not None) else None

    submodules = _submodules(repo)
    warnings = None
    if len(untracked_names) > UNTRACKED_LIST_CAP:
        warnings = (
            f"{len(untracked_names)} untracked files; only the first {UNTRACKED_LIST_CAP} listed"
        )
    return CodeInfo(
        is_repo=True,
        root=root,
        remote_url=remote_url,
        branch=branch,
        detached=detached,
        commit=commit,
        dirty=dirty,
        untracked=untracked,
        patch_blob=patch_blob,
        patch_size=len(patch),
        submodules=submodules,
        error=warnings,
    )


def _untracked(
    root: str | os.PathLike[str], names: list[str]
) -> tuple[list[UntrackedFile], list[bytes]]:
    """The untracked files listed, and the new-file diffs of those whose content is recorded
    (text under ``UNTRACKED_TEXT_CAP``)."""
    untracked: list[UntrackedFile] = []
    diffs: list[bytes] = []
    for rel in names:
        full = os.path.join(root, rel)
        try:
            st = os.lstat(full)
            if os.path.islink(full):
                data = os.readlink(full).encode()
            else:
                with open(full, "rb") as f:
                    data = f.read(UNTRACKED_TEXT_CAP + 1)
        except OSError as exc:
            untracked.append(UntrackedFile(path=rel, size=0, reason=f"unreadable: {exc.strerror}"))
            continue
        if st.st_size > UNTRACKED_TEXT_CAP:
            untracked.append(
                UntrackedFile(
                    path=rel, size=st.st_size, digest=_hash_file(full), reason="too large"
                )
            )
        elif b"\0" in data or not _is_text(data):
            untracked.append(
                UntrackedFile(path=rel, size=st.st_size, digest=_sha(data), reason="binary")
            )
        else:
            diffs.append(_new_file_diff(rel, data, st.st_mode))
            untracked.append(
                UntrackedFile(path=rel, size=st.st_size, digest=_sha(data), included=True)
            )
    return untracked, diffs


def _submodules(repo: git.Repo) -> list[Submodule]:
    submodules = []
    try:
        for sm in repo.submodules:
            try:
                submodules.append(Submodule(path=sm.path, commit=sm.module().head.commit.hexsha))
            except Exception:
                submodules.append(Submodule(path=sm.path, commit=sm.hexsha))
    except Exception:
        pass
    return submodules


def _git_bytes(repo: git.Repo, args: list[str]) -> bytes:
    proc = subprocess.run(
        ["git", *args], cwd=repo.working_tree_dir, capture_output=True, check=False
    )
    if proc.returncode != 0:
        raise CaptureError(
            f"git {' '.join(args)} exited {proc.returncode}: {proc.stderr.decode(errors='replace').strip()}"
        )
    return proc.stdout


def _new_file_diff(rel: str, data: bytes, mode: int) -> bytes:
    """A git-style diff adding an untracked text file (what ``git diff --no-index`` prints)."""
    lines = data.split(b"\n")
    no_newline = not data.endswith(b"\n")
    if not no_newline:
        lines = lines[:-1]
    m = "100755" if mode & 0o111 else "100644"
    q = rel.encode()
    head = b"diff --git a/%s b/%s\nnew file mode %s\n" % (q, q, m.encode())
    if not data:
        return head
    body = [b"--- /dev/null\n", b"+++ b/%s\n" % q, b"@@ -0,0 +1,%d @@\n" % len(lines)]
    body += [b"+" + ln + b"\n" for ln in lines]
    if no_newline:
        body.append(b"\\ No newline at end of file\n")
    return head + b"".join(body)


def _is_text(data: bytes) -> bool:
    try:
        data.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


def _sha(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def _hash_file(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return "sha256:" + h.hexdigest()
