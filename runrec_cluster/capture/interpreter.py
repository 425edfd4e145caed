"""The interpreter that runs the user's code, resolved the way the command will find it.

For a command, ``resolve`` follows what ``execve`` and the shell conventions do: a first word
with a slash is a path (relative to the run's directory), else it is searched on ``PATH`` (the
``PATH`` the command will see); ``env [-S] [-i] [NAME=value...] prog`` is looked through; a
script that starts with ``#!`` is run by the interpreter its shebang names (``#!/usr/bin/env
python3`` searched on that ``PATH``); ``python -m mod`` is its ``python``. When the program is a
Python interpreter (its name is ``python``/``pypy``, optionally with a version), ``probe`` runs
it once (``PROBE_TIMEOUT_S``) to ask its ``sys.executable``, version and installed
distributions (as importlib.metadata finds them over its ``sys.path``; ``PROBE_CODE``).

Probes are cached on the host in ``$XDG_CACHE_HOME/runrec/interpreters.json`` (default
``~/.cache/runrec``; ``RUNREC_CACHE_DIR`` overrides the directory), keyed by host, interpreter
path and ``PYTHONPATH``, and valid while the interpreter file and every directory of its
``sys.path`` keep their modification time (installing or removing a distribution changes its
directory's): a sweep of a thousand runs on one node probes once. Any other program is recorded
as what it is ("not a Python interpreter: /bin/sh"), never run.
"""

from __future__ import annotations

import json
import os
import platform
import re
import shutil
import socket
import subprocess
import sys
import tempfile
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from runrec_cluster.record import Interpreter

PROBE_TIMEOUT_S = 20.0
CACHE_FILE = "interpreters.json"
CACHE_ENTRIES = 64  # entries kept in the cache file (the most recent)
_PY_NAME = re.compile(r"^(python|pypy)(\d+(\.\d+)*)?[a-z]?(\.exe)?$")
_SHEBANG_MAX = 256
_PROBE_ENV_DROP = ("PYTHONINSPECT", "PYTHONSTARTUP")  # never an interactive prompt
_MARK = "--runrec-probe--"
# run by the probed interpreter: a JSON line after the marker (sitecustomize may print). The
# distributions are read as importlib.metadata finds them (``*.dist-info/METADATA``,
# ``*.egg-info[/PKG-INFO]`` in each ``sys.path`` directory, the first of a name wins), from the
# headers alone: importing importlib.metadata and parsing whole files costs a cold probe more
# than the interpreter's own start. A zip on sys.path falls back to importlib.metadata.
PROBE_CODE = f"""
import json, os, platform, sys
path = [p for p in sys.path if p]
def head(f):
    name = version = None
    try:
        with open(f, encoding="utf-8", errors="replace") as fh:
            for line in fh:
                if not line.strip():
                    break
                if line.startswith("Name:") and name is None:
                    name = line[5:].strip()
                elif line.startswith("Version:") and version is None:
                    version = line[8:].strip()
    except OSError:
        pass
    return name, version
pk = {{}}
def add(n, v):
    if n:
        pk.setdefault(n.lower().replace("_", "-").replace(".", "-"), v or "")
if any(os.path.isfile(p) for p in path):
    from importlib import metadata
    for d in metadata.distributions(path=path):
        try:
            md = d.metadata
            add(md["Name"], md["Version"])
        except Exception:
            pass
else:
    for p in path:
        try:
            names = sorted(os.listdir(p))
        except OSError:
            continue
        for e in names:
            full = os.path.join(p, e)
            if e.endswith(".dist-info"):
                add(*head(os.path.join(full, "METADATA")))
            elif e.endswith(".egg-info"):
                add(*head(os.path.join(full, "PKG-INFO") if os.path.isdir(full) else full))
print({_MARK!r})
print(json.dumps({{"executable": sys.executable, "version": platform.python_version(),
                  "path": path, "packages": dict(sorted(pk.items()))}}))
"""


def is_python_name(path: str) -> bool:
    """Whether ``path``'s file name is a Python interpreter's (``python3``, ``python3.12``,
    ``pypy3``), or a link to one."""
    if _PY_NAME.match(os.path.basename(path)):
        return True
    try:
        return bool(_PY_NAME.match(os.path.basename(os.path.realpath(path))))
    except OSError:
        return False


def _which(name: str, env_path: str, cwd: str) -> str | None:
    if os.sep in name:
        p = name if os.path.isabs(name) else os.path.join(cwd, name)
        return os.path.normpath(p) if os.path.exists(p) else None
    found = shutil.which(name, path=env_path)
    if found is None:
        return None
    return found if os.path.isabs(found) else os.path.normpath(os.path.join(cwd, found))


def shebang(path: str) -> list[str] | None:
    """The interpreter and arguments a script's ``#!`` line names, or None (not a script)."""
    try:
        with open(path, "rb") as f:
            head = f.read(_SHEBANG_MAX)
    except OSError:
        return None
    if not head.startswith(b"#!"):
        return None
    line = head[2:].split(b"\n", 1)[0].decode("utf-8", errors="replace").strip()
    words = line.split()
    return words or None


def _skip_env(words: Sequence[str]) -> list[str]:
    """The program and arguments ``env`` runs: options (-i, -S, -u NAME...) and NAME=value
    assignments dropped; ``-S`` splits its argument."""
    out = list(words)
    i = 0
    while i < len(out):
        w = out[i]
        if w == "-S" or w.startswith("-S"):
            rest = w[2:].split() if len(w) > 2 else []
            out[i : i + 1] = rest
            continue
        if w in ("-u", "--unset", "-C", "--chdir"):
            i += 2
            continue
        if w.startswith("-") or ("=" in w and not w.startswith("/")):
            i += 1
            continue
        break
    return out[i:]


def resolve(argv: Sequence[str], env_path: str, cwd: str) -> Interpreter:
    """Which program runs ``argv`` on this host: ``path`` (None when not found), ``via`` (how
    it was found). Facts about it (a Python's version...) are ``probe``'s."""
    if not argv:
        return Interpreter(unknown="empty command")
    argv0 = argv[0]
    words = list(argv)
    via = "path" if os.sep in argv0 else "PATH"
    for _ in range(4):  # env -> script -> env -> interpreter at most
        path = _which(words[0], env_path, cwd)
        if path is None:
            where = (
                "the path does not exist"
                if os.sep in words[0]
                else (f"not on PATH on {socket.gethostname()} (PATH={env_path})")
            )
            return Interpreter(argv0=argv0, via=via, unknown=f"cannot find {words[0]!r}: {where}")
        if os.path.basename(path) == "env" and len(words) > 1:
            words = _skip_env(words[1:])
            if not words:
                break
            continue
        if is_python_name(path):
            if len(words) > 2 and words[1] == "-m":
                via = "python -m"
            return Interpreter(argv0=argv0, path=path, via=via)
        bang = shebang(path)
        if bang is None:
            break
        via = "shebang"
        words = bang + [path] + words[1:]
    else:
        return Interpreter(argv0=argv0, via=via, unknown="too many levels of env and #! scripts")
    return Interpreter(argv0=argv0, path=path, via=via)


def capture(
    argv: Sequence[str],
    *,
    environ: Mapping[str, str] | None = None,
    cwd: str | None = None,
    put_obj: Callable[[object], str] | None = None,
    use_cache: bool = True,
) -> tuple[Interpreter, dict[str, str] | None]:
    """``resolve`` + ``probe``: the command's interpreter on this host with its version and
    package set (a blob through ``put_obj``), and the packages (None when not Python)."""
    env = dict(os.environ if environ is None else environ)
    found = resolve(argv, env.get("PATH", os.defpath), cwd or os.getcwd())
    if found.path is None:
        return found, None
    if not is_python_name(found.path):
        return Interpreter(
            argv0=found.argv0,
            path=found.path,
            via=found.via,
            unknown=f"not a Python interpreter: {found.path}",
        ), None
    facts, why = probe(found.path, env, use_cache=use_cache)
    if facts is None:
        return Interpreter(argv0=found.argv0, path=found.path, via=found.via, unknown=why), None
    pkgs: dict[str, str] = facts["packages"]
    return Interpreter(
        argv0=found.argv0,
        path=found.path,
        via=found.via,
        python_executable=facts["executable"],
        python_version=facts["version"],
        packages_blob=put_obj(pkgs) if put_obj is not None else None,
        package_count=len(pkgs),
    ), pkgs


def this_python(packages_blob: str | None, package_count: int) -> Interpreter:
    """A function run's interpreter: the process's own Python (the packages listed already)."""
    return Interpreter(
        path=sys.executable,
        via="function",
        python_executable=sys.executable,
        python_version=platform.python_version(),
        packages_blob=packages_blob,
        package_count=package_count,
    )


# -- the probe and its cache ------------------------------------------------------------------


def cache_path() -> str:
    base = os.environ.get("RUNREC_CACHE_DIR") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache"),
        "runrec",
    )
    return os.path.join(base, CACHE_FILE)


def _mtime(p: str) -> int | None:
    try:
        return os.stat(p).st_mtime_ns
    except OSError:
        return None


def _key(path: str, env: Mapping[str, str]) -> str:
    extra = "|".join(env.get(k, "") for k in ("PYTHONPATH", "PYTHONHOME", "PYTHONNOUSERSITE"))
    return f"{socket.gethostname()}|{path}|{extra}"


def _read_cache() -> dict[str, Any]:
    try:
        with open(cache_path(), encoding="utf-8") as f:
            data = json.load(f)
        return data if isinstance(data, dict) else {}
    except (OSError, ValueError):
        return {}


def _write_cache(key: str, entry: dict[str, Any]) -> None:
    """Best effort: an unwritable home or a concurrent writer loses an entry, never a run."""
    data = _read_cache()
    data.pop(key, None)
    data[key] = entry
    keep = dict(list(data.items())[-CACHE_ENTRIES:])
    path = cache_path()
    try:
        os.makedirs(os.path.dirname(path), exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=os.path.dirname(path), prefix=".interpreters.")
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump(keep, f)
        os.replace(tmp, path)
    except OSError:
        pass


def _cached(key: str, path: str) -> dict[str, Any] | None:
    e = _read_cache().get(key)
    if not isinstance(e, dict) or e.get("mtime") != _mtime(path):
        return None
    dirs = e.get("dirs")
    if not isinstance(dirs, dict) or any(_mtime(d) != m for d, m in dirs.items()):
        return None
    facts = e.get("facts")
    return facts if isinstance(facts, dict) else None


def probe(
    path: str, environ: Mapping[str, str], *, use_cache: bool = True
) -> tuple[dict[str, Any] | None, str]:
    """({executable, version, packages}, "") of the Python interpreter ``path`` run with
    ``environ`` (from the cache when still valid), or (None, why it could not be asked)."""
    key = _key(path, environ)
    if use_cache and (hit := _cached(key, path)) is not None:
        return hit, ""
    env = {k: v for k, v in environ.items() if k not in _PROBE_ENV_DROP}
    try:
        r = subprocess.run(
            [path, "-c", PROBE_CODE],
            env=env,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            timeout=PROBE_TIMEOUT_S,
            cwd="/",
        )
    except subprocess.TimeoutExpired:
        return None, f"{path} did not answer the probe within {PROBE_TIMEOUT_S:g} s"
    except OSError as exc:
        return None, f"cannot run {path}: {exc.strerror or exc}"
    out = r.stdout.decode("utf-8", errors="replace")
    if r.returncode != 0 or _MARK not in out:
        err = r.stderr.decode("utf-8", errors="replace").strip().splitlines()[-1:] or [""]
        return None, f"{path} failed the probe (exit {r.returncode}): {err[0][:200]}"
    try:
        raw = json.loads(out.split(_MARK, 1)[1].strip().splitlines()[0])
        facts = {
            "executable": str(raw["executable"]),
            "version": str(raw["version"]),
            "packages": {str(k): str(v) for k, v in raw["packages"].items()},
        }
        dirs = {str(d): _mtime(str(d)) for d in raw["path"]}
    except (ValueError, KeyError, IndexError, TypeError, AttributeError) as exc:
        return None, f"{path} gave an unreadable probe answer ({exc})"
    _write_cache(key, {"mtime": _mtime(path), "dirs": dirs, "facts": facts})
    return facts, ""
