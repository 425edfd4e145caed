"""Reruns from the record: ``rerun(store, run_id, ...)`` and ``rerun_sweep(store, sweep_id, ...)``.

A rerun is a new run, a sibling of the original (which is never touched), made from what the
original recorded. See docs/reruns.md.

- **code**: the recorded commit with the recorded uncommitted change re-applied. When the
  checkout at the recorded root is exactly that (same HEAD, same patch), the rerun starts there.
  Otherwise the code is *materialized*: ``git worktree add --detach`` of the commit under
  ``STORE/worktrees/<id>`` (or in ``workdir``), then ``git apply --binary`` of the recorded patch,
  and the rerun starts in the matching directory of that tree. A commit that is not reachable
  or a patch that does not apply refuses the rerun (``RerunError``); nothing is submitted.
- **function**: loaded from the materialized code by its recorded ``module:qualname`` when the
  module is there and defines the name (checked without importing it here); otherwise the
  function of the recorded pickled call is used, and the caller is told so first.
- **config**: the recorded effective config. ``overrides`` (``--set key=value``) are coerced to
  the recorded value's type; unknown keys are refused. Given and default keys change the call's
  arguments (a command's ``--key value``); ``generated`` keys are *pinned*: the job's
  ``run.log_config`` returns the recorded (or overridden) value instead of a new draw.
- **inputs**: every recorded dataset is hashed again and every artifact re-resolved; a changed
  one refuses the rerun unless ``allow_changed_inputs``, and then it is declared a difference.
- **record**: ``rerun_of`` (the original), ``rerun_root`` (the first run of a chain of reruns)
  and ``rerun`` (``RerunInfo``: the reason, the *intended* differences, the pinned values, where
  the code came from). ``runrec diff`` labels every other difference *incidental*.
"""

from __future__ import annotations

import ast
import importlib
import inspect
import json
import os
import re
import subprocess
import sys
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from runrec_cluster.errors import ConfigError, CorruptRecord, LineageError, RerunError, RunrecError
from runrec_cluster.record import (
    ConfigEntry,
    Difference,
    Entrypoint,
    InputRef,
    RerunInfo,
    RunRecord,
    to_patch,
)
from runrec_cluster.store import Store, layout

Echo = Callable[[str], None]


def _stderr(msg: str) -> None:
    print(msg, file=sys.stderr)


# ---------------------------------------------------------------------------------------------
# Code
# ---------------------------------------------------------------------------------------------


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
    import hashlib

    return "sha256:" + hashlib.sha256(data).hexdigest()


def _checkout_matches(root: str, commit: str, patch_blob: str | None) -> bool:
    """Whether the working tree at ``root`` is exactly the recorded code (HEAD and patch)."""
    from runrec_cluster.capture.git import capture_code

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
    echo: Echo = _stderr,
) -> Materialized:
    """The recorded code of ``rec``, ready to run: the checkout itself when it is exactly that,
    else a worktree (or ``workdir``) with the recorded patch applied. Refuses with RerunError."""
    code, ep = rec.code, rec.entrypoint
    orig_cwd = (ep.cwd if ep else "") or (code.root if code else None) or os.getcwd()
    if code is None or not code.is_repo or not code.commit:
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
    commit = code.commit
    if workdir is None and code.root and _toplevel(code.root) == code.root:
        if _checkout_matches(code.root, commit, code.patch_blob):
            cwd = orig_cwd if os.path.isdir(orig_cwd) else code.root
            echo(f"code: the checkout {code.root} is exactly the recorded code ({commit[:12]})")
            return Materialized(cwd=cwd, root=code.root, code_from="checkout")
    # a repository that has the commit: the recorded one, else the one we are in
    tried: list[str] = []
    repo = None
    for cand in (code.root, _toplevel(os.getcwd())):
        if not cand or cand in tried:
            continue
        tried.append(cand)
        top = _toplevel(cand)
        if top and _git(top, "cat-file", "-e", f"{commit}^{{commit}}").returncode == 0:
            repo = top
            break
    if repo is None:
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


# ---------------------------------------------------------------------------------------------
# Functions
# ---------------------------------------------------------------------------------------------


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


class RerunCall:
    """What the job of a rerun of a function run calls (it travels pickled by reference to
    this module): the function imported by name from the materialized code (or the one in the
    original's pickled call), called with the recorded arguments and the config overrides."""

    def __init__(
        self,
        call: bytes,
        function: str,
        load: str,
        path: str | None,
        cwd: str | None,
        overrides: Mapping[str, Any],
    ) -> None:
        self.call = call  # the original's pickled (fn, args, kwargs), unopened until the job
        self.function = function
        self.load = load
        self.path = path
        self.cwd = cwd
        self.overrides = dict(overrides)

    def __repr__(self) -> str:
        return f"RerunCall({self.function!r}, load={self.load!r})"

    def __call__(self) -> Any:
        import cloudpickle

        saved_cwd, saved_path = os.getcwd(), list(sys.path)
        top = self.function.partition(":")[0].split(".")[0]
        swapped: dict[str, Any] = {}
        try:
            if self.cwd and os.path.isdir(self.cwd):
                os.chdir(self.cwd)
            if self.load == "name" and self.path:
                # a reused worker (Ray) may hold another version of the module: set it aside
                swapped = {
                    k: sys.modules.pop(k)
                    for k in list(sys.modules)
                    if k == top or k.startswith(top + ".")
                }
                sys.path.insert(0, self.path)
                mod_name, _, qual = self.function.partition(":")
                fn: Any = importlib.import_module(mod_name)
                for part in qual.split("."):
                    fn = getattr(fn, part)
                _, args, kwargs = cloudpickle.loads(self.call)
            else:
                fn, args, kwargs = cloudpickle.loads(self.call)
            args, kwargs = apply_overrides(fn, tuple(args), dict(kwargs), self.overrides)
            return fn(*args, **kwargs)
        finally:
            try:
                os.chdir(saved_cwd)
            except OSError:
                pass
            sys.path[:] = saved_path
            if self.load == "name":
                for k in [k for k in sys.modules if k == top or k.startswith(top + ".")]:
                    del sys.modules[k]
                sys.modules.update(swapped)


_ARGN = re.compile(r"^arg(\d+)$")


def apply_overrides(
    fn: Callable[..., Any],
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
    overrides: Mapping[str, Any],
) -> tuple[tuple[Any, ...], dict[str, Any]]:
    """The call's arguments with ``overrides`` (config key -> value) applied."""
    if not overrides:
        return args, kwargs
    try:
        sig = inspect.signature(fn)
    except (TypeError, ValueError):
        sig = None
    if sig is None:  # the config keys were arg0, arg1, ... and the keyword names
        pos = list(args)
        for k, v in overrides.items():
            m = _ARGN.match(k)
            if m and int(m.group(1)) < len(pos):
                pos[int(m.group(1))] = v
            else:
                kwargs[k] = v
        return tuple(pos), kwargs
    bound = sig.bind(*args, **kwargs)
    varkw = next(
        (p.name for p in sig.parameters.values() if p.kind is inspect.Parameter.VAR_KEYWORD), None
    )
    for k, v in overrides.items():
        p = sig.parameters.get(k)
        if p is not None and p.kind is not inspect.Parameter.VAR_KEYWORD:
            bound.arguments[k] = tuple(v) if p.kind is inspect.Parameter.VAR_POSITIONAL else v
        elif varkw is not None:
            extra = dict(bound.arguments.get(varkw, {}))
            extra[k] = v
            bound.arguments[varkw] = extra
        else:
            raise TypeError(f"rerun override {k!r} is not a parameter of {fn!r}{sig}")
    return tuple(bound.args), dict(bound.kwargs)


# ---------------------------------------------------------------------------------------------
# Config
# ---------------------------------------------------------------------------------------------

_TRUE = {"true", "1", "yes", "on"}
_FALSE = {"false", "0", "no", "off"}


def coerce(key: str, raw: Any, recorded: Any) -> Any:
    """``raw`` (a ``--set`` string) as the type of the recorded value."""
    if not isinstance(raw, str):
        return raw
    kind = type(recorded).__name__
    try:
        if isinstance(recorded, bool):
            if raw.lower() in _TRUE | _FALSE:
                return raw.lower() in _TRUE
            raise ValueError(raw)
        if isinstance(recorded, int):
            return int(raw)
        if isinstance(recorded, float):
            return float(raw)
    except ValueError:
        raise RerunError(
            f"--set {key}={raw!r}: the recorded value {recorded!r} is a {kind}, and {raw!r} is "
            f"not one. Give a {kind} (e.g. --set {key}={recorded!r})."
        ) from None
    if isinstance(recorded, str):
        return raw
    try:  # None, lists, dicts: JSON; a bare word stays a string
        return json.loads(raw)
    except ValueError:
        return raw


def check_overrides(rec: RunRecord, overrides: Mapping[str, Any]) -> dict[str, Any]:
    """Typed overrides for ``rec``; RerunError naming the known keys for an unknown one."""
    bad = [k for k in overrides if k not in rec.config]
    if bad:
        known = ", ".join(sorted(rec.config)) or "none: it recorded no config"
        raise RerunError(
            f"cannot rerun {rec.run_id} with {', '.join(f'--set {k}=...' for k in sorted(bad))}: "
            f"not a config key of the run (its keys: {known})."
        )
    return {k: coerce(k, v, rec.config[k].value) for k, v in overrides.items()}


def _argv_text(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (list, dict)) or v is None:
        return json.dumps(v)
    return str(v)


def rewrite_argv(argv: list[str], overrides: Mapping[str, Any]) -> list[str]:
    """A command line with ``--key value`` / ``--key=value`` / ``--flag`` set to the overrides
    (as ``capture.config.command_config`` reads them)."""
    out = list(argv)
    for key, val in overrides.items():
        i = 0
        while i < len(out):
            a = out[i]
            if a == f"--{key}":
                has_value = i + 1 < len(out) and not out[i + 1].startswith("--")
                if has_value:
                    out[i + 1] = _argv_text(val)
                elif val is False:
                    del out[i]
                elif val is not True:
                    out.insert(i + 1, _argv_text(val))
                break
            if a.startswith(f"--{key}="):
                out[i] = f"--{key}={_argv_text(val)}"
                break
            i += 1
    return out


# ---------------------------------------------------------------------------------------------
# Inputs
# ---------------------------------------------------------------------------------------------


def recheck_inputs(
    store: Store, rec: RunRecord, allow_changed: bool
) -> tuple[list[InputRef], list[Difference]]:
    """The inputs the rerun is submitted with (those added at submit), hashed again, and the
    changes (refused unless ``allow_changed``)."""
    from runrec_cluster.capture.data import Dataset
    from runrec_cluster.capture.inputs import Artifact, hash_input

    refs: list[InputRef] = []
    changed: list[Difference] = []
    for i in rec.inputs:
        try:
            if i.kind == "artifact" and (i.promoted or (i.run_id and i.artifact)):
                new = hash_input(
                    store, Artifact(i.promoted or f"{i.run_id}:{i.artifact}"), added_by=i.added_by
                )
            else:
                new = hash_input(
                    store, Dataset(i.path, i.version), added_by=i.added_by, algo=_algo(i.digest)
                )
            problem = None if new.digest == i.digest else f"now {new.digest}"
        except (LineageError, ConfigError) as exc:  # DatasetError is a ConfigError
            new, problem = None, str(exc)
        if problem is not None:
            if not allow_changed:
                raise RerunError(
                    f"cannot rerun {rec.run_id}: its {i.kind} {i.path} changed since the run "
                    f"(recorded {i.digest}; {problem}). Restore it, or pass "
                    "--allow-changed-inputs to rerun on the data as it is now (the change is "
                    "recorded as an intended difference)."
                )
            if new is None and i.kind == "artifact" and os.path.exists(i.path):
                new = hash_input(store, Dataset(i.path, i.version), added_by=i.added_by)
            if new is None:
                raise RerunError(
                    f"cannot rerun {rec.run_id}: its {i.kind} {i.path} is gone ({problem}); "
                    "there is nothing to rerun on."
                )
            changed.append(
                Difference(
                    what=f"inputs.{i.path}",
                    before=i.digest,
                    after=new.digest,
                    note="input changed since the original (--allow-changed-inputs)",
                )
            )
        if i.added_by == "submit" and new is not None:
            refs.append(new)
    return refs, changed


# ---------------------------------------------------------------------------------------------
# The rerun
# ---------------------------------------------------------------------------------------------


def _hardware(name: str, places: Iterable[str]) -> Any:
    from runrec_cluster.capture.hardware import hardware_classes

    looked = []
    known: set[str] = set()
    for d in dict.fromkeys(p for p in places if p and os.path.isdir(p)):
        looked.append(d)
        classes = hardware_classes(d)
        if name in classes:
            return classes[name]
        known |= set(classes)
    raise RerunError(
        f"unknown hardware class {name!r} (looked from: {', '.join(looked)}; known: "
        f"{', '.join(sorted(known)) or 'none defined'}). Define it under "
        f"[tool.runrec.hardware.{name}] or in runrec.toml, or pass --hardware with a known one."
    )


def _find_sweep(store: Store, sweep: str) -> list[RunRecord]:
    p = sweep.strip().lower()
    recs = []
    for rid in store.run_ids():
        try:
            r = store.load(rid, problems=[])
        except RunrecError:
            continue
        if r.sweep_id and r.sweep_id.startswith(p):
            recs.append(r)
    ids = sorted({r.sweep_id for r in recs if r.sweep_id})
    if not ids:
        raise RerunError(f"no sweep id starts with {sweep!r} in {store.root}. See `runrec ls`.")
    if len(ids) > 1:
        raise RerunError(
            f"sweep prefix {sweep!r} matches {len(ids)} sweeps ({', '.join(ids[:5])}); give more characters."
        )
    return sorted(recs, key=lambda r: (r.sweep_index if r.sweep_index is not None else 0, r.run_id))


def rerun(
    store: Store | str | os.PathLike[str] | None,
    run_id: str,
    *,
    hardware: str | None = None,
    overrides: Mapping[str, Any] | None = None,
    backend: str | None = None,
    reason: str = "",
    allow_changed_inputs: bool = False,
    workdir: str | os.PathLike[str] | None = None,
    echo: Echo | None = None,
) -> Any:
    """Rerun one recorded run (any unique id prefix) and return its ``RunHandle``.

    ``hardware``: another hardware class; ``overrides``: config key -> value (strings are
    coerced to the recorded type); ``backend``: another backend (options of the old one are
    dropped); ``reason``: why, kept in the record; ``workdir``: materialize the code there
    instead of under ``STORE/worktrees/``. ``echo`` gets the notes (default: stderr).
    """
    from runrec_cluster.store import as_store

    st = as_store(store)
    rec = st.load(run_id)
    return _rerun(
        st, [rec], hardware, overrides, backend, reason, allow_changed_inputs, workdir, echo, False
    )[0]


def rerun_sweep(
    store: Store | str | os.PathLike[str] | None,
    sweep_id: str,
    *,
    hardware: str | None = None,
    overrides: Mapping[str, Any] | None = None,
    backend: str | None = None,
    reason: str = "",
    allow_changed_inputs: bool = False,
    workdir: str | os.PathLike[str] | None = None,
    echo: Echo | None = None,
) -> list[Any]:
    """Rerun every run of a sweep (id or prefix) as one new sweep; returns the handles."""
    from runrec_cluster.store import as_store

    st = as_store(store)
    recs = _find_sweep(st, sweep_id)
    return _rerun(
        st, recs, hardware, overrides, backend, reason, allow_changed_inputs, workdir, echo, True
    )


def _rerun(  # type: ignore[no-untyped-def]
    store: Store,
    recs: list[RunRecord],
    hardware,
    overrides,
    backend,
    reason,
    allow_changed_inputs,
    workdir,
    echo,
    sweep: bool,
) -> list[Any]:
    import socket

    import cloudpickle

    from runrec_cluster.api import Executor
    from runrec_cluster.backends import JobSpec, get_backend
    from runrec_cluster.capture.env import capture_env
    from runrec_cluster.capture.git import capture_code
    from runrec_cluster.capture.proc import current_user
    from runrec_cluster.capture.redact import redact_argv

    echo = echo or _stderr
    store.ensure_writable()
    # everything that can refuse is checked before anything is created
    typed: dict[str, dict[str, Any]] = {}
    inputs: dict[str, tuple[list[InputRef], list[Difference]]] = {}
    for r in recs:
        if r.entrypoint is None or r.execution is None:
            raise RerunError(
                f"cannot rerun {r.run_id}: its launch record has no entrypoint or execution "
                "(an incomplete or very old record)."
            )
        if r.entrypoint.kind == "function" and not r.entrypoint.call_blob:
            raise RerunError(f"cannot rerun {r.run_id}: it recorded no call to repeat.")
        typed[r.run_id] = check_overrides(r, overrides or {})
        inputs[r.run_id] = recheck_inputs(store, r, allow_changed_inputs)
    first = recs[0]
    old_backend = first.execution.backend  # type: ignore[union-attr]
    new_backend = backend or old_backend
    cls = get_backend(new_backend)
    options = dict(first.execution.options)  # type: ignore[union-attr]
    dropped = {k: v for k, v in options.items() if not k.startswith(cls.option_prefix)}
    for k in dropped:
        del options[k]
    if dropped:
        echo(
            f"note: dropped the {old_backend} options {', '.join(sorted(dropped))} (backend {new_backend})"
        )
    old_hw = first.execution.hardware  # type: ignore[union-attr]
    hw_name = hardware or old_hw

    # the code, once per distinct (commit, patch)
    label = layout.new_id()
    mats: dict[Any, Materialized] = {}
    for r in recs:
        key = (r.code.commit, r.code.patch_blob, r.code.root) if r.code else None
        if key not in mats:
            mats[key] = materialize(
                store, r, workdir=workdir, label=label if not mats else layout.new_id(), echo=echo
            )
    hw = None
    if hw_name:
        orig_cwd = first.entrypoint.cwd if first.entrypoint else ""
        hw = _hardware(hw_name, [os.getcwd(), orig_cwd, *(m.cwd for m in mats.values())])
        if not hardware and old_hw and dict(hw.expect) != dict(first.execution.hardware_expect):  # type: ignore[union-attr]
            echo(
                f"note: hardware class {hw_name!r} now expects {hw.expect} (the original: {first.execution.hardware_expect})"
            )  # type: ignore[union-attr]
    res = first.execution.resources  # type: ignore[union-attr]
    env, _ = capture_env(store.put_obj)
    user, host = current_user(), socket.gethostname()
    sweep_id = layout.new_id() if sweep else None
    handles: list[Any] = []
    for mat_key, mat in mats.items():
        group = [
            r
            for r in recs
            if ((r.code.commit, r.code.patch_blob, r.code.root) if r.code else None) == mat_key
        ]
        ex = Executor(
            backend=new_backend,
            store=store,
            timeout_min=res.timeout_min,
            cpus=res.cpus,
            mem_gb=res.mem_gb,
            gpus=res.gpus,
            nodes=res.nodes,
            hardware=hw,
            cwd=mat.cwd,
            **options,
        )
        code = capture_code(mat.cwd, store.put_blob)
        specs = []
        for r in group:
            ep = r.entrypoint
            assert ep is not None
            ov = typed[r.run_id]
            refs, changed = inputs[r.run_id]
            intended: list[Difference] = []
            if new_backend != old_backend:
                intended.append(Difference(what="backend", before=old_backend, after=new_backend))
                intended += [
                    Difference(what=f"options.{k}", before=v, after=None)
                    for k, v in dropped.items()
                ]
            if hw_name != old_hw:
                intended.append(Difference(what="hardware", before=old_hw, after=hw_name))
            config: dict[str, ConfigEntry] = {}
            pinned: dict[str, Any] = {}
            call_ov: dict[str, Any] = {}
            for k, e in r.config.items():
                if k in ov:
                    from runrec_cluster.capture.config import plain

                    v = plain(k, ov[k])
                    src = "given" if e.source == "default" else e.source
                    config[k] = ConfigEntry(value=v, source=src)  # type: ignore[arg-type]
                    intended.append(Difference(what=f"config.{k}", before=e.value, after=v))
                    if e.source != "generated":
                        call_ov[k] = ov[k]
                else:
                    config[k] = e
                if e.source == "generated":
                    pinned[k] = config[k].value
            intended += changed
            if mat.code_dir is not None and ep.cwd != mat.cwd:
                intended.append(
                    Difference(
                        what="entrypoint.cwd",
                        before=ep.cwd,
                        after=mat.cwd,
                        note=f"recorded code materialized ({mat.code_from})",
                    )
                )
            new_id = layout.new_id()
            function_from = None
            if ep.kind == "function":
                load, path, why = function_source(ep, mat)
                function_from = load
                if load == "pickle":
                    echo(
                        f"note: {ep.function} is not importable from the rerun's code ({why}); "
                        f"calling the function recorded in the pickled call of {r.run_id} instead"
                    )
                call = store.get_blob(ep.call_blob)  # type: ignore[arg-type]
                if r.rerun is not None:  # a rerun's call wraps the first call: unwrap it
                    inner = cloudpickle.loads(call)[0]
                    if isinstance(inner, RerunCall):
                        call, call_ov = inner.call, {**inner.overrides, **call_ov}
                blob = store.put_blob(
                    cloudpickle.dumps(
                        (RerunCall(call, ep.function or "", load, path, mat.cwd, call_ov), (), {})
                    )
                )
                new_ep = Entrypoint(
                    kind="function", function=ep.function, cwd=mat.cwd, call_blob=blob
                )
            else:
                argv = list(ep.argv)
                if ep.call_blob:  # the unredacted command line
                    argv = list(cloudpickle.loads(store.get_blob(ep.call_blob)))
                new_argv = rewrite_argv(argv, call_ov)
                if mat.code_dir is not None and r.code and r.code.root:
                    root = r.code.root.rstrip(os.sep) + os.sep
                    new_argv = [
                        os.path.join(mat.root, a[len(root) :])
                        if a.startswith(root) and mat.root
                        else a  # type: ignore[arg-type]
                        for a in new_argv
                    ]
                if new_argv != argv:
                    intended.append(
                        Difference(
                            what="entrypoint.argv",
                            before=redact_argv(argv),
                            after=redact_argv(new_argv),
                        )
                    )
                shown = redact_argv(new_argv)
                cblob = store.put_blob(cloudpickle.dumps(new_argv)) if shown != new_argv else None
                new_ep = Entrypoint(kind="command", argv=shown, cwd=mat.cwd, call_blob=cblob)
            info = RerunInfo(
                reason=reason,
                intended=intended,
                pinned=pinned,
                code_from=mat.code_from,  # type: ignore[arg-type]
                code_dir=mat.code_dir,
                function_from=function_from,  # type: ignore[arg-type]
                by=user,
            )
            extra = to_patch(rerun_of=r.run_id, rerun_root=r.rerun_root or r.run_id, rerun=info)
            if mat.notes:
                extra["warnings"] = list(mat.notes)
            ctx = {"code": code, "env": env, "inputs": refs, "user": user, "host": host}
            index = r.sweep_index if sweep else None
            ex._write_launch(
                new_id, ctx, new_ep, config, r.tags, r.name, sweep_id, index, extra=extra
            )
            specs.append(
                JobSpec(new_id, new_ep.kind, mat.cwd, store.log_dir(new_id), sweep_index=index)
            )
        handles += ex._launch(specs)
    return handles


def order_with_reruns(recs: list[RunRecord]) -> list[tuple[RunRecord, int]]:
    """``recs`` (already sorted) with each rerun moved right after its original, and its depth
    in the chain of reruns (0 for a run that reran nothing listed here)."""
    present = {r.run_id for r in recs}
    children: dict[str, list[RunRecord]] = {}
    for r in recs:
        if r.rerun_of and r.rerun_of in present and r.rerun_of != r.run_id:
            children.setdefault(r.rerun_of, []).append(r)
    out: list[tuple[RunRecord, int]] = []
    seen: set[str] = set()

    def emit(r: RunRecord, depth: int) -> None:
        if r.run_id in seen:
            return
        seen.add(r.run_id)
        out.append((r, depth))
        for c in children.get(r.run_id, []):
            emit(c, depth + 1)

    for r in recs:
        if not (r.rerun_of and r.rerun_of in present):
            emit(r, 0)
    for r in recs:  # a cycle cannot happen, but never lose a run
        emit(r, 0)
    return out


def _algo(digest: str) -> str | None:
    """The hash algorithm of a recorded input digest (None for an unknown one: the default)."""
    from runrec_cluster.capture.data import algo_of
    from runrec_cluster.errors import DatasetError

    try:
        return algo_of(digest)
    except DatasetError:
        return None
