"""The recorded environment of a rerun (``runrec rerun --env recorded``), built with uv.

What is recreated: the distributions (name == version) and the Python version of the
interpreter the original's code ran in: the rank-0 node's, else the one the submitting host
resolved (``recorded_set``). Three kinds are not installed from the index:

- ``runrec-cluster``: the running runrec is installed instead (editable from its source when
  that is how it is installed here, else the same version from the index), so that the job
  side speaks the record format of the runrec that submits it;
- the project's own distribution (its name in the materialized code's ``pyproject.toml``):
  the materialized code provides it;
- distributions the index does not have (local paths, editable installs of other projects, a
  private build): ``missing``; the rerun refuses unless ``allow_missing``.

``--with NAME==VERSION`` replaces (or adds) a distribution. The cache key is the sha256 of the
Python version and the sorted ``name==version`` lines that are installed (and the runrec
install line): ``ENVS/<key[:24]>/`` (``settings.envs_dir``, default ``STORE/envs``).

Building is atomic: under an exclusive lock (``ENVS/.locks/<key>.lock``; concurrent builders
of the same set wait for the first and reuse its environment), uv builds a *relocatable*
virtual environment in ``ENVS/.tmp-<key>-<token>/``, installs with ``--no-deps`` (the recorded
set is the complete set), checks what the environment's own Python lists, writes
``runrec-env.json`` last, and renames the directory into place. A directory without that file
is never used; one that exists is used as it is (no install: ``built`` False).
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import re
import secrets
import shutil
import subprocess
import sys
import time
import tomllib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from importlib import metadata

from runrec_cluster import settings
from runrec_cluster.errors import RerunError
from runrec_cluster.record import Difference, RerunEnv, RunRecord
from runrec_cluster.rerun.materialize import Echo
from runrec_cluster.store import Store, fs

MARK = "runrec-env.json"  # written last, before the rename: its presence means complete
RUNREC_DIST = "runrec-cluster"
_REQ_RE = re.compile(r"^\s*([A-Za-z0-9][A-Za-z0-9._-]*)\s*==\s*([^=\s;]+)\s*$")
LIST_PY = (
    "import importlib.metadata as m, json, platform, sys\n"
    "d = {}\n"
    "for x in m.distributions():\n"
    "    n = x.metadata['Name']\n"
    "    if n: d.setdefault(n.lower().replace('_', '-').replace('.', '-'), x.version)\n"
    "print(json.dumps({'python': platform.python_version(), 'executable': sys.executable,"
    " 'packages': d}))\n"
)


def norm(name: str) -> str:
    """A distribution name as the record keeps it (``capture.env``)."""
    return name.lower().replace("_", "-").replace(".", "-")


def parse_with(items: Iterable[str] | Mapping[str, str] | None) -> dict[str, str]:
    """``--with NAME==VERSION`` items as {normalized name: version}; RerunError for another form."""
    if not items:
        return {}
    if isinstance(items, Mapping):
        return {norm(k): str(v) for k, v in items.items()}
    out: dict[str, str] = {}
    for it in items:
        m = _REQ_RE.match(it)
        if not m:
            raise RerunError(
                f"--with {it!r}: give an exact pin NAME==VERSION (e.g. --with numpy==1.26.4); "
                "ranges and extras are not an environment."
            )
        out[norm(m.group(1))] = m.group(2)
    return out


def recorded_set(store: Store, rec: RunRecord) -> tuple[str, dict[str, str], str]:
    """(Python version, {name: version}, which list) the original's code ran with: the rank-0
    node's interpreter, else the interpreter the submitting host resolved, else the launch
    environment. RerunError when the record keeps none."""
    node, le = rec.node, rec.launch_env
    cands = []
    if node is not None:
        cands.append((node.python_version, node.packages_blob, "node rank 0"))
    if le is not None and le.interpreter is not None:
        i = le.interpreter
        cands.append((i.python_version or "", i.packages_blob, "launch interpreter"))
    if le is not None:
        cands.append((le.python_version, le.packages_blob, "launch"))
    for version, blob, where in cands:
        if version and blob:
            try:
                pkgs = dict(store.get_obj(blob, dict[str, str]))
            except Exception:
                continue
            return version, pkgs, where
    raise RerunError(
        f"cannot recreate the environment of {rec.run_id}: its record keeps no package list "
        "with a Python version (an old or incomplete record). Rerun it with --env current."
    )


def runrec_install() -> tuple[list[str], str]:
    """The uv arguments that install the running runrec, and how to say it."""
    try:
        dist = metadata.distribution(RUNREC_DIST)
    except metadata.PackageNotFoundError:
        return [], "not installed as a distribution here"
    version = dist.version
    try:
        direct = json.loads(dist.read_text("direct_url.json") or "{}")
    except (json.JSONDecodeError, OSError):
        direct = {}
    url = str(direct.get("url", ""))
    if url.startswith("file://") and "dir_info" in direct:
        path = url.removeprefix("file://")
        if direct["dir_info"].get("editable"):
            return ["-e", path], f"this runrec {version} (editable, {path})"
        return [path], f"this runrec {version} (from {path})"
    return [f"{RUNREC_DIST}=={version}"], f"this runrec {version}"


def own_project(code_root: str | None) -> str | None:
    """The project's own distribution name, from the materialized code's pyproject.toml."""
    if not code_root:
        return None
    try:
        with open(os.path.join(code_root, "pyproject.toml"), "rb") as f:
            name = tomllib.load(f).get("project", {}).get("name")
    except (OSError, tomllib.TOMLDecodeError):
        return None
    return norm(name) if isinstance(name, str) and name else None


def uv_bin() -> str:
    """The uv executable: next to this Python, on PATH, or the ``uv`` package's."""
    here = os.path.join(os.path.dirname(sys.executable), "uv")
    if os.access(here, os.X_OK):
        return here
    found = shutil.which("uv")
    if found:
        return found
    raise RerunError(
        "--env recorded needs uv, which is not installed here. Install it: "
        "pip install 'runrec-cluster[env]' (or pip install uv), or rerun with --env current."
    )


@dataclass
class EnvSpec:
    """What a recreated environment will hold, before it is built or found."""

    python_version: str
    source: str
    install: dict[str, str]  # from the index: name -> version
    provided: dict[str, str]  # name -> what provides it instead
    changed: dict[str, str]  # --with
    before: dict[str, str | None]  # --with: the recorded version (None: not recorded)
    runrec_args: list[str]
    index: str | None
    index_from: str
    missing: dict[str, str] = field(default_factory=dict)

    def key(self) -> str:
        lines = [f"python=={self.python_version}", f"runrec: {' '.join(self.runrec_args)}"]
        lines += [f"{n}=={v}" for n, v in sorted(self.install.items())]
        return hashlib.sha256("\n".join(lines).encode()).hexdigest()


def plan_env(
    store: Store,
    rec: RunRecord,
    code_root: str | None,
    with_: Mapping[str, str],
    cwd: str | None = None,
) -> EnvSpec:
    """The environment to recreate for ``rec`` (nothing built yet)."""
    version, pkgs, where = recorded_set(store, rec)
    args, runrec_said = runrec_install()
    provided: dict[str, str] = {}
    install = dict(pkgs)
    if RUNREC_DIST in install:
        provided[RUNREC_DIST] = f"{runrec_said} (recorded {install.pop(RUNREC_DIST)})"
    own = own_project(code_root)
    if own and own in install and own not in with_:
        provided[own] = f"the materialized code (recorded {install.pop(own)})"
    before = {n: pkgs.get(n) for n in with_}
    install.update(with_)
    index, index_from = settings.package_index(cwd)
    return EnvSpec(version, where, install, provided, dict(with_), before, args, index, index_from)


def env_differences(spec: EnvSpec, env: RerunEnv) -> list[Difference]:
    """The intended differences of ``--env recorded``: the environment, each ``--with``."""
    out = [
        Difference(
            what="env",
            before=None,
            after="recorded",
            note=f"recreated from the {spec.source} package list",
        )
    ]
    out += [
        Difference(what=f"packages.{n}", before=spec.before.get(n), after=v, note="--with")
        for n, v in sorted(spec.changed.items())
    ]
    out += [
        Difference(what=f"packages.{n}", before=v, after=None, note="--allow-missing")
        for n, v in sorted(spec.missing.items())
    ]
    return out


def ensure_env(
    store: Store, spec: EnvSpec, *, allow_missing: bool, echo: Echo, cwd: str | None = None
) -> RerunEnv:
    """The recreated environment of ``spec``: found in the cache, else built (atomically).
    RerunError naming the distributions the index lacks unless ``allow_missing``."""
    t0 = time.monotonic()
    root = settings.envs_dir(store.root, cwd)
    fs.makedirs(os.path.join(root, ".locks"))
    key = spec.key()
    known = _known_missing(root, key)
    if known:
        _missing(spec, known, allow_missing, echo)
        key = spec.key()
    final = os.path.join(root, key[:24])
    built = False
    with _lock(os.path.join(root, ".locks", key[:24] + ".lock")):
        if not _complete(final):
            echo(
                f"env: building the recorded environment ({len(spec.install)} distributions, "
                f"Python {spec.python_version}) in {final}"
            )
            missing = _build(spec, root, final)
            if missing:
                _remember_missing(root, key, missing)
                _missing(spec, missing, allow_missing, echo)
                return ensure_env(store, spec, allow_missing=allow_missing, echo=echo, cwd=cwd)
            built = True
        else:
            echo(f"env: reusing the recorded environment {final}")
    info = _read_mark(final)
    return RerunEnv(
        mode="recorded",
        key=key,
        dir=final,
        python=os.path.join(final, "bin", "python"),
        python_version=info.get("python"),
        packages_blob=store.put_obj(info.get("packages", {})),
        source=spec.source,
        missing=dict(spec.missing),
        provided=dict(spec.provided),
        changed=dict(spec.changed),
        index=spec.index,
        built=built,
        build_s=round(time.monotonic() - t0, 3),
    )


def _missing(spec: EnvSpec, missing: Mapping[str, str], allow: bool, echo: Echo) -> None:
    listed = ", ".join(f"{n}=={v}" for n, v in sorted(missing.items()))
    where = f"{spec.index}, from {spec.index_from}" if spec.index else spec.index_from
    if not allow:
        raise RerunError(
            f"cannot recreate the recorded environment: {len(missing)} distribution(s) are not "
            f"on the package index ({where}): {listed}. "
            "They were installed from a local path, a VCS or a private index. Make them "
            "available on the index (or set [tool.runrec] package_index / UV_INDEX_URL), or "
            "pass --allow-missing to rerun without them (they are recorded), or rerun with "
            "--env current."
        )
    echo(f"env: left out (--allow-missing): {listed}")
    for n in missing:
        if n in spec.install:
            spec.missing[n] = spec.install.pop(n)


def _complete(path: str) -> bool:
    return os.path.isfile(os.path.join(path, MARK))


def _read_mark(path: str) -> dict[str, object]:
    with open(os.path.join(path, MARK), encoding="utf-8") as f:
        return dict(json.load(f))


class _lock:
    """An exclusive ``flock`` on ``path`` (created) for the ``with`` block."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.fd = -1

    def __enter__(self) -> None:
        self.fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o666)
        fcntl.flock(self.fd, fcntl.LOCK_EX)

    def __exit__(self, *exc: object) -> None:
        fcntl.flock(self.fd, fcntl.LOCK_UN)
        os.close(self.fd)


def _missing_file(root: str, key: str) -> str:
    return os.path.join(root, ".locks", key[:24] + ".missing.json")


def _known_missing(root: str, key: str) -> dict[str, str]:
    try:
        with open(_missing_file(root, key), encoding="utf-8") as f:
            return dict(json.load(f))
    except (OSError, ValueError):
        return {}


def _remember_missing(root: str, key: str, missing: Mapping[str, str]) -> None:
    fs.write_atomic(_missing_file(root, key), json.dumps(dict(missing)).encode(), mode=0o644)


def _uv(args: list[str], what: str, timeout: float = 3600) -> subprocess.CompletedProcess[str]:
    cmd = [uv_bin(), *args]
    try:
        return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired as exc:
        raise RerunError(f"uv did not finish {what} in {timeout:g} s: {' '.join(cmd)}") from exc


def _index_args(spec: EnvSpec) -> list[str]:
    return ["--index-url", spec.index] if spec.index else []


def _build(spec: EnvSpec, root: str, final: str) -> dict[str, str]:
    """Build ``spec`` into ``final`` through a temporary directory; returns the distributions
    the index does not have ({} when built)."""
    tmp = os.path.join(root, f".tmp-{os.path.basename(final)}-{secrets.token_hex(4)}")
    try:
        p = _uv(["venv", "-q", "--relocatable", "--python", spec.python_version, tmp], "venv")
        if p.returncode != 0:
            raise RerunError(
                f"uv cannot make a Python {spec.python_version} environment (the recorded "
                f"version): {_tail(p.stderr)}. Install that Python (uv python install "
                f"{spec.python_version}), or rerun with --env current."
            )
        py = os.path.join(tmp, "bin", "python")
        reqs = os.path.join(tmp, "runrec-requirements.txt")
        with open(reqs, "w", encoding="utf-8") as f:
            f.write("".join(f"{n}=={v}\n" for n, v in sorted(spec.install.items())))
        base = ["pip", "install", "-q", "--no-deps", "--python", py, *_index_args(spec)]
        p = _uv([*base, "-r", reqs], "the install")
        if p.returncode != 0:
            missing = _find_missing(spec, py)
            if missing:
                return missing
            raise RerunError(
                f"uv could not install the recorded distributions: {_tail(p.stderr)}. "
                "Rerun with --env current, or fix the package index."
            )
        if spec.runrec_args:
            p = _uv([*base, *spec.runrec_args], "runrec's install")
            if p.returncode != 0:
                raise RerunError(
                    f"uv could not install runrec into the environment: {_tail(p.stderr)}"
                )
        listed = _listing(py)
        _check_installed(spec, listed["packages"])  # type: ignore[arg-type]
        mark = {**listed, "key": spec.key(), "built_at": time.time(), "source": spec.source}
        fs.write_atomic(os.path.join(tmp, MARK), json.dumps(mark, indent=1).encode(), mode=0o644)
        try:
            os.rename(tmp, final)
        except OSError:
            if not _complete(final):  # another builder without the lock (no flock there)
                raise
        return {}
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _find_missing(spec: EnvSpec, py: str) -> dict[str, str]:
    """The pins the index cannot satisfy, asked one by one (only after a failed install)."""
    out = {}
    for n, v in sorted(spec.install.items()):
        p = _uv(
            ["pip", "install", "-q", "--dry-run", "--no-deps", "--python", py,
             *_index_args(spec), f"{n}=={v}"],
            f"the check of {n}=={v}",
        )  # fmt: skip
        if p.returncode != 0:
            out[n] = v
    return out


def _listing(py: str) -> dict[str, object]:
    p = subprocess.run([py, "-I", "-c", LIST_PY], capture_output=True, text=True, timeout=120)
    if p.returncode != 0:
        raise RerunError(f"the recreated environment's Python does not start: {_tail(p.stderr)}")
    return dict(json.loads(p.stdout))


def _check_installed(spec: EnvSpec, have: Mapping[str, str]) -> None:
    wrong = [
        f"{n}=={v} (has {have.get(n) or 'none'})"
        for n, v in spec.install.items()
        if have.get(n) != v
    ]
    if wrong:
        raise RerunError(
            "the recreated environment does not hold the recorded distributions: "
            + ", ".join(sorted(wrong)[:10])
        )


def _tail(text: str, n: int = 6) -> str:
    lines = [ln for ln in (text or "").strip().splitlines() if ln.strip()]
    return " / ".join(lines[-n:]) or "(no output)"


# how each backend is told the job's interpreter: the option and its new value
_RAY_CONFLICTS = ("pip", "uv", "conda", "container", "image_uri", "py_executable")


def interpreter_options(
    backend: str, options: Mapping[str, object], python: str
) -> tuple[dict[str, object], list[Difference]]:
    """``options`` with the backend's job interpreter set to ``python`` (local:
    ``local_python``; Slurm: ``slurm_python``, the Python submitit starts on the node; Ray:
    ``runtime_env.py_executable``, the Python of the worker that runs the task), and that
    change as an intended difference."""
    new = dict(options)
    if backend == "local":
        key, value = "local_python", python
    elif backend == "slurm":
        key, value = "slurm_python", python
    elif backend == "ray":
        key = "ray_runtime_env"
        renv = dict(options.get(key) or {})  # type: ignore[call-overload]
        clash = sorted(k for k in _RAY_CONFLICTS if k in renv)
        if clash:
            raise RerunError(
                f"the original's ray_runtime_env sets {', '.join(clash)}, which would replace "
                "the recreated environment. Rerun with --env current (the runtime_env builds "
                "its own environment), or submit again without it."
            )
        value = {**renv, "py_executable": python}
    else:
        raise RerunError(f"--env recorded does not know how to start backend {backend!r}'s job")
    new[key] = value
    diff = Difference(
        what=f"options.{key}",
        before=options.get(key),
        after=value,
        note="the recreated environment's Python runs the job",
    )
    return new, [diff]


def same_set(store: Store, recs: list[RunRecord]) -> None:
    """RerunError when the runs of a sweep ran in different environments."""
    first = recorded_set(store, recs[0])[:2]
    for r in recs[1:]:
        if recorded_set(store, r)[:2] != first:
            raise RerunError(
                f"--env recorded: the runs of this sweep ran in different environments "
                f"({recs[0].run_id} and {r.run_id}); rerun them one by one."
            )


def job_environ(env: RerunEnv | None, environ: Mapping[str, str]) -> dict[str, str]:
    """``environ`` as the job of a rerun in ``env`` has it: the recreated environment's
    ``bin`` first on PATH (what ``job.execute`` does on the node), else unchanged."""
    out = dict(environ)
    if env is not None and env.mode == "recorded" and env.dir:
        out["PATH"] = os.path.join(env.dir, "bin") + os.pathsep + out.get("PATH", os.defpath)
        out["VIRTUAL_ENV"] = env.dir
    return out
