"""A rerun's code: the recorded commit with the recorded uncommitted change re-applied.

``materialize`` uses the checkout itself when it is exactly the recorded code (same HEAD, same
patch); otherwise ``git worktree add --detach`` of the commit under ``STORE/worktrees/<id>`` (or
in ``workdir``), then ``git apply --binary`` of the recorded patch. ``function_source`` says
whether a function run's function can be imported by name from that code.
"""

from __future__ import annotations

import ast
import hashlib
import os
import subprocess
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from runrec_cluster.capture.git import capture_code
from runrec_cluster.errors import CorruptRecord, RerunError
from runrec_cluster.record import CodeInfo, Entrypoint, RunRecord
from runrec_cluster.store import Store, layout

Echo = Callable[[str], None]  # where a rerun's notes go (the CLI: stderr)


def stderr_echo(msg: str) -> None:
    print(msg, file=sys.stderr)


@dataclass
class Materialized:
    """Where the rerun's code is and where it starts."""

    cwd: str  # the directory the rerun starts in (the original's cwd, mapped into the code)
    root: str | None  # root of that code (None: not pinned)
    code_from: str  # "checkout", "worktree", "directory", "unpinned"
    code_dir: str | None = None  # the materialized tree (worktree / directory)
    notes: list[str] = field(default_factory=list)  # things the record should keep


def _git(cwd: str, *args: str, data: bytes | None = None) -> subprocess.CompletedProcess[bytes]:
    try:
        return subprocess.run(
            ["git", *args], cwd=cwd, capture_output=True, input=data, check=False, timeout=600
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise RerunError(f"cannot run git {' '.join(args)} in {cwd}: {exc}.") from exc


def _err(p: subprocess.CompletedProcess[bytes]) -> str:
    return (p.stderr or p.stdout or b"").decode(errors="replace").strip() or f"exit {p.returncode}"


def _toplevel(path: str) -> str | None:
    if not os.path.isdir(path):
        return None
    p = _git(path, "rev-parse", "--show-toplevel")
    return p.stdout.decode().strip() if p.returncode == 0 else None


def _digest_only(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def _checkout_matches(root: str, commit: str, patch_blob: str | None) -> bool:
    """Whether the working tree at ``root`` is exactly the recorded code (HEAD and patch)."""
    now = capture_code(root, _digest_only)
    return (
        now.is_repo and now.root == root and now.commit == commit and now.patch_blob == patch_blob
    )


def _map_cwd(orig_cwd: str, orig_root: str, new_root: str) -> str:
    rel = os.path.relpath(orig_cwd, orig_root)
    if rel.startswith(os.pardir):
        rel = os.curdir
    d = os.path.normpath(os.path.join(new_root, rel))
    os.makedirs(d, exist_ok=True)  # an untracked empty directory is not in the tree
    return d


def materialize(
    store: Store,
    rec: RunRecord,
    *,
    workdir: str | os.PathLike[str] | None = None,
    label: str | None = None,
    echo: Echo = stderr_echo,
) -> Materialized:
    """The recorded code of ``rec``, ready to run: the checkout itself when it is exactly that,
    else a worktree (or ``workdir``) with the recorded patch applied. Refuses with RerunError."""
    code, ep = rec.code, rec.entrypoint
    orig_cwd = (ep.cwd if ep else "") or (code.root if code else None) or os.getcwd()
    if code is None or not code.is_repo or not code.commit:
        return _unpinned(rec, orig_cwd, echo)
    commit = code.commit
    if workdir is None and code.root and _toplevel(code.root) == code.root:
        if _checkout_matches(code.root, commit, code.patch_blob):
            cwd = orig_cwd if os.path.isdir(orig_cwd) else code.root
            echo(f"code: the checkout {code.root} is exactly the recorded code ({commit[:12]})")
            return Materialized(cwd=cwd, root=code.root, code_from="checkout")
    repo = _repo_with(rec, code, commit)
    if workdir is not None:
        d = os.path.abspath(os.fspath(workdir))
        if os.path.exists(d) and (not os.path.isdir(d) or os.listdir(d)):
            raise RerunError(
                f"cannot materialize the code of {rec.run_id} in {d}: it exists and is not an "
                "empty directory. Give a new directory to --workdir."
            )
        code_from = "directory"
    else:
        d = store.check_inside(os.path.join(store.root, "worktrees", label or layout.new_id()))
        code_from = "worktree"
    os.makedirs(os.path.dirname(d), exist_ok=True)
    p = _git(repo, "worktree", "add", "--detach", d, commit)
    if p.returncode != 0:
        raise RerunError(
            f"cannot rerun {rec.run_id}: `git worktree add --detach {d} {commit[:12]}` in {repo} "
            f"failed: {_err(p)}."
        )
    _reapply(store, rec, code, commit, repo, d)
    notes = [
        f"untracked file {u.path} ({u.size} bytes) was not recorded ({u.reason}); it is not in "
        f"the materialized code"
        for u in code.untracked
        if not u.included
    ]
    for n in notes:
        echo(f"warning: {n}")
    what = f" + recorded change ({code.patch_size} bytes)" if code.patch_blob else ""
    echo(f"code: materialized {commit[:12]}{what} from {repo} in {d}")
    cwd = _map_cwd(orig_cwd, code.root or repo, d)
    return Materialized(cwd=cwd, root=d, code_from=code_from, code_dir=d, notes=notes)


def _unpinned(rec: RunRecord, orig_cwd: str, echo: Echo) -> Materialized:
    """A run recorded outside a repository (or before its first commit): the code as it is."""
    code = rec.code
    why = (
        "was not in a git repository"
        if code is None or not code.is_repo
        else "was in a repository with no commit yet"
    )
    cwd = orig_cwd if os.path.isdir(orig_cwd) else os.getcwd()
    note = (
        f"run {rec.run_id} {why}: its code cannot be pinned; the rerun runs the code in {cwd} "
        "as it is now"
    )
    echo(f"note: {note}")
    return Materialized(cwd=cwd, root=None, code_from="unpinned", notes=[note])


def _repo_with(rec: RunRecord, code: CodeInfo, commit: str) -> str:
    """A repository that has ``commit``: the recorded one, else the one we are in."""
    tried: list[str] = []
    for cand in (code.root, _toplevel(os.getcwd())):
        if not cand or cand in tried:
            continue
        tried.append(cand)
        top = _toplevel(cand)
        if top and _git(top, "cat-file", "-e", f"{commit}^{{commit}}").returncode == 0:
            return top
    where = (
        ", ".join(tried)
        or "no repository (the recorded one is gone and the current directory is not in one)"
    )
    fetch = (
        f"git fetch {code.remote_url} {commit}"
        if code.remote_url
        else f"git fetch <remote> {commit}"
    )
    raise RerunError(
        f"cannot rerun {rec.run_id}: its commit {commit} is not reachable in {where} "
        "(rebased, amended or garbage-collected away, or only on another clone). "
        f"Fetch it ({fetch}) into the repository and run the rerun from there."
    )


def _reapply(store: Store, rec: RunRecord, code: CodeInfo, commit: str, repo: str, d: str) -> None:
    """The recorded uncommitted change and the submodules, in the new worktree ``d``; the
    worktree is removed again when either fails."""

    def give_up(msg: str) -> RerunError:
        _git(repo, "worktree", "remove", "--force", d)
        return RerunError(msg)

    if code.patch_blob:
        try:
            patch = store.get_blob(code.patch_blob)
        except CorruptRecord as exc:
            raise give_up(
                f"cannot rerun {rec.run_id}: its recorded uncommitted change is not readable ({exc})"
            ) from None
        p = _git(d, "apply", "--binary", "--whitespace=nowarn", "-", data=patch)
        if p.returncode != 0:
            raise give_up(
                f"cannot rerun {rec.run_id}: its recorded uncommitted change ({code.patch_size} "
                f"bytes) does not apply on {commit[:12]}: {_err(p)}. The record or the "
                "repository was altered; see `runrec export` for the patch."
            )
    if code.submodules:
        p = _git(d, "submodule", "update", "--init", "--recursive")
        if p.returncode != 0:
            raise give_up(
                f"cannot rerun {rec.run_id}: its submodules could not be checked out in {d}: {_err(p)}."
            )


# -- the function of a function run, by name from the materialized code -----------------------


def _module_file(module: str, dirs: Sequence[str]) -> tuple[str, str] | None:
    """(the directory to put on sys.path, the module's file) for ``module`` under ``dirs``."""
    parts = module.split(".")
    for d in dirs:
        base = os.path.join(d, *parts)
        for f in (base + ".py", os.path.join(base, "__init__.py")):
            if os.path.isfile(f):
                return d, f
    return None


def _defines(path: str, name: str) -> bool:
    try:
        with open(path, "rb") as f:
            tree = ast.parse(f.read())
    except (OSError, SyntaxError, ValueError):
        return False
    for node in tree.body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            if node.name == name:
                return True
        elif isinstance(node, (ast.Assign, ast.AnnAssign)):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            if any(isinstance(t, ast.Name) and t.id == name for t in targets):
                return True
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            if any((a.asname or a.name.split(".")[0]) == name for a in node.names):
                return True
    return False


def function_source(ep: Entrypoint, mat: Materialized) -> tuple[str, str | None, str]:
    """("name", sys.path entry, "") when ``ep.function`` can be imported from the materialized
    code, else ("pickle", None, why not)."""
    mod, _, qual = (ep.function or "").partition(":")
    if mat.root is None:
        return "pickle", None, "the code is not pinned (no git repository)"
    if not mod or not qual:
        return "pickle", None, f"no module:qualname recorded ({ep.function!r})"
    if mod == "__main__" or "<" in qual:
        return "pickle", None, f"{ep.function} cannot be imported by name"
    if mod == "runrec_cluster" or mod.startswith("runrec_cluster."):
        return "pickle", None, f"{mod} is part of runrec-cluster itself"
    dirs = list(dict.fromkeys([mat.cwd, mat.root, os.path.join(mat.root, "src")]))
    found = _module_file(mod, dirs)
    if found is None:
        return "pickle", None, f"module {mod} is not in the materialized code"
    if not _defines(found[1], qual.split(".")[0]):
        return "pickle", None, f"{found[1]} defines no {qual.split('.')[0]}"
    return "name", found[0], ""
