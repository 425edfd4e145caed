"""Code capture: commit, branch, dirty flag, the uncommitted change itself, submodules.

Never raises for a missing repository, a detached HEAD or an empty repository: those are
recorded. The recorded patch (tracked changes as ``git diff HEAD --binary`` plus untracked text
files under ``UNTRACKED_TEXT_CAP`` as new-file diffs) re-applies with ``git apply`` on the
recorded commit and reproduces the working tree; binary or larger untracked files are listed
with their size and hash.

Runrec's own files never count as a change (docs/store-layout.md): the store the run is recorded
in (``exclude``) and any other runrec store that lies untracked in the repository (a directory
holding the store metadata file, e.g. a ``./runrec-store`` made before stores ignored
themselves) are left out of the dirty flag, the untracked list and the patch, with git pathspec
excludes; so the dirty flag equals ``git status --porcelain -- . ':(exclude)<store>'``. A store
committed to the repository is the user's content and counts, unless it is the run's own store.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

from runrec_cluster.capture.redact import strip_url_credentials
from runrec_cluster.errors import CaptureError
from runrec_cluster.record import CodeInfo, Submodule, UntrackedFile
from runrec_cluster.store.layout import META_FILE

if TYPE_CHECKING:
    import git

UNTRACKED_TEXT_CAP = 1024 * 1024  # bytes per untracked file whose content is recorded
UNTRACKED_LIST_CAP = 10_000  # untracked files listed at most


def capture_code(
    path: str,
    put_blob: Callable[[bytes], str] | None = None,
    *,
    exclude: Sequence[str | os.PathLike[str]] = (),
) -> CodeInfo:
    """The code at ``path`` (its repository); ``put_blob`` stores the uncommitted change.

    ``exclude``: directories left out of the capture (the store the run is recorded in); those
    outside the repository are ignored. Untracked runrec stores are left out anyway."""
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
        return _capture(repo, put_blob, exclude)
    except Exception as exc:  # git missing, odd repo states: recorded, never a crash
        return CodeInfo(
            is_repo=True, root=repo.working_tree_dir, error=f"{type(exc).__name__}: {exc}"
        )
    finally:
        repo.close()


def _capture(
    repo: git.Repo,
    put_blob: Callable[[bytes], str] | None,
    exclude: Sequence[str | os.PathLike[str]],
) -> CodeInfo:
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

    skip = _inside(os.fspath(root), exclude)  # the run's store: not even listed
    all_untracked = _untracked_names(repo, _pathspec(skip))
    skip = sorted({*skip, *_untracked_stores(all_untracked)})
    untracked_names = [n for n in all_untracked if not _under(n, skip)]
    spec = _pathspec(skip)
    # tracked changes, staged or not, against HEAD (binary-safe); in an empty repo, nothing
    tracked = b""
    if commit is not None:
        diff = ["diff", "HEAD", "--binary", "--no-color", "--no-ext-diff", *spec]
        tracked = _git_bytes(repo, diff)
    untracked, new_files = _untracked(root, untracked_names[:UNTRACKED_LIST_CAP])
    patch_parts = [tracked, *new_files]
    patch = b"".join(p if p.endswith(b"\n") or not p else p + b"\n" for p in patch_parts)
    dirty = bool(tracked) or bool(untracked_names)
    if commit is None:
        dirty = bool(untracked_names) or bool(_git_bytes(repo, ["status", "--porcelain", *spec]))
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


def _untracked_names(repo: git.Repo, spec: list[str]) -> list[str]:
    """Untracked files that git does not ignore, relative to the repository root (what
    ``git status --porcelain --untracked-files=all`` lists as ``??``)."""
    out = _git_bytes(repo, ["ls-files", "--others", "--exclude-standard", "-z", *spec])
    return [n for n in out.decode("utf-8", "surrogateescape").split("\0") if n]


def _pathspec(dirs: list[str]) -> list[str]:
    """Git arguments limiting a command to the repository less ``dirs``."""
    return ["--", ".", *(f":(exclude,literal){d}" for d in dirs)] if dirs else []


def _inside(root: str, dirs: Sequence[str | os.PathLike[str]]) -> list[str]:
    """Those of ``dirs`` inside the repository at ``root``, relative to it, ``/``-separated."""
    real_root = os.path.realpath(root)
    found: list[str] = []
    for d in dirs:
        real = os.path.realpath(os.fspath(d))
        if real == real_root or os.path.commonpath([real, real_root]) != real_root:
            continue  # outside the repository (or the repository itself): nothing to leave out
        found.append(os.path.relpath(real, real_root).replace(os.sep, "/"))
    return found


def _untracked_stores(untracked: list[str]) -> list[str]:
    """The untracked runrec stores: directories whose metadata file ``META_FILE`` is
    untracked (not the repository root itself)."""
    found = []
    for name in untracked:
        head, _, base = name.rpartition("/")
        if base == META_FILE and head:
            found.append(head)
    return found


def _under(name: str, dirs: list[str]) -> bool:
    return any(name == d or name.startswith(d + "/") for d in dirs)


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
