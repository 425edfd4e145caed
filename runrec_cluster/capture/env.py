"""Environment capture: Python, platform, installed distributions, selected variables."""

from __future__ import annotations

import os
import platform
import site
import socket
import sys
from collections.abc import Callable, Mapping, Sequence
from importlib import metadata
from typing import Any

import msgspec.structs

from runrec_cluster.capture import interpreter
from runrec_cluster.capture.redact import redact_value
from runrec_cluster.record import EnvInfo

ENV_PREFIXES = (
    "CUDA_",
    "NCCL_",
    "OMP_",
    "MKL_",
    "OPENBLAS_",
    "SLURM_",
    "RAY_",
    "TORCH_",
    "XLA_",
    "JAX_",
    "NVIDIA_",
    "HF_",
    "TF_",
    "PYTORCH_",
    "RUNREC_",
)
ENV_NAMES = frozenset(
    {
        "PYTHONHASHSEED",
        "PYTHONPATH",
        "VIRTUAL_ENV",
        "CONDA_DEFAULT_ENV",
        "CONDA_PREFIX",
        "LD_LIBRARY_PATH",
        "CUBLAS_WORKSPACE_CONFIG",
        "WORLD_SIZE",
        "RANK",
        "LOCAL_RANK",
        "MASTER_ADDR",
        "MASTER_PORT",
    }
)


_packages_cache: tuple[Any, dict[str, str]] | None = None


def packages() -> dict[str, str]:
    """Every installed distribution visible to this interpreter: {name: version}.

    Remembered for the life of the process while the search path and the modification times
    of its directories stay the same (installing or removing a distribution adds or removes a
    ``*.dist-info`` directory there, which changes its time): a notebook that submits many
    runs lists the environment once, one that ``pip install``s between two submits again."""
    global _packages_cache
    path = _search_path()
    sig = []
    for p in path:
        try:
            sig.append((p, os.stat(p).st_mtime_ns))
        except OSError:
            sig.append((p, None))
    if _packages_cache is not None and _packages_cache[0] == sig:
        return dict(_packages_cache[1])
    out = _list_packages(path)
    _packages_cache = (sig, out)
    return dict(out)


def _list_packages(path: list[str]) -> dict[str, str]:
    out: dict[str, str] = {}
    for dist in metadata.distributions(path=path):
        try:
            md = dist.metadata  # parsed once: .version would read the file again
            name, version = md["Name"], md["Version"]
        except Exception:
            continue
        if name:
            out.setdefault(_norm(name), version or "")
    return dict(sorted(out.items()))


def _search_path() -> list[str]:
    """``sys.path`` without directories vendored inside an installed package (Ray puts its
    ``site-packages/ray/thirdparty_files`` on ``sys.path`` when imported): their contents are
    part of that package, not installed distributions, and would show up as drift between a
    process that imported ray and one that did not."""
    roots = [os.path.abspath(p) for p in site.getsitepackages()]
    try:
        roots.append(os.path.abspath(site.getusersitepackages()))
    except Exception:
        pass
    out = []
    for p in sys.path:
        ap = os.path.abspath(p or ".")
        if any(ap.startswith(r + os.sep) for r in roots):
            continue
        out.append(p)
    return out


def _norm(name: str) -> str:
    return name.lower().replace("_", "-").replace(".", "-")


def selected_env(environ: Mapping[str, str] | None = None) -> dict[str, str]:
    env = os.environ if environ is None else environ
    out = {}
    for k in sorted(env):
        if k.startswith(ENV_PREFIXES) or k in ENV_NAMES:
            out[k] = redact_value(k, env[k])
    return out


def capture_env(
    put_obj: Callable[[object], str] | None = None,
    *,
    command: Sequence[str] | None = None,
    cwd: str | None = None,
) -> tuple[EnvInfo, dict[str, str]]:
    """The launch environment: this Python and its packages, and ``interpreter``, the user
    code's: for a ``command`` its program resolved here as the node will (``capture.
    interpreter``, from ``cwd``), for a function run this Python."""
    pkgs = packages()
    blob = put_obj(pkgs) if put_obj is not None else None
    if command is None:
        interp = interpreter.this_python(blob, len(pkgs))
    else:
        interp, _ = interpreter.capture(command, cwd=cwd, put_obj=put_obj)
    info = EnvInfo(
        python_version=platform.python_version(),
        python_executable=sys.executable,
        platform=platform.platform(),
        hostname=socket.gethostname(),
        packages_blob=blob,
        package_count=len(pkgs),
        env_vars=selected_env(),
        interpreter=interp,
    )
    return info, pkgs


def package_drift(
    launch: Mapping[str, str], node: Mapping[str, str]
) -> dict[str, list[str | None]]:
    """{name: [launch version, node version]} for every package that differs."""
    out: dict[str, list[str | None]] = {}
    for name in sorted(set(launch) | set(node)):
        a, b = launch.get(name), node.get(name)
        if a != b:
            out[name] = [a, b]
    return out


def with_command_interpreter(
    info: EnvInfo,
    command: Sequence[str],
    cwd: str | None,
    put_obj: Callable[[object], str] | None = None,
    environ: Mapping[str, str] | None = None,
) -> EnvInfo:
    """``info`` (captured once for many runs) with ``interpreter`` the ``command``'s, resolved
    here from ``cwd`` (a rerun of a command run; ``environ``: with the PATH its job will have)."""
    interp, _ = interpreter.capture(command, environ=environ, cwd=cwd, put_obj=put_obj)
    return msgspec.structs.replace(info, interpreter=interp)
