"""Backends: local (here), slurm (through submitit), ray. Imported lazily: a backend's heavy
dependency is imported only when that backend is used."""

from __future__ import annotations

import importlib

from runrec_cluster.backends.base import Backend, JobSpec
from runrec_cluster.errors import ConfigError

BACKENDS = {
    "local": ("runrec_cluster.backends.local", "LocalBackend", None),
    "slurm": ("runrec_cluster.backends.slurm", "SlurmBackend", None),
    "ray": (
        "runrec_cluster.backends.ray.backend",
        "RayBackend",
        "pip install 'runrec-cluster[ray]'",
    ),
}


def get_backend(name: str) -> type[Backend]:
    if name not in BACKENDS:
        raise ConfigError(f"unknown backend {name!r}; choose one of {', '.join(sorted(BACKENDS))}.")
    module, cls, hint = BACKENDS[name]
    try:
        mod = importlib.import_module(module)
    except ImportError as exc:
        fix = f" Install it with: {hint}" if hint else ""
        raise ConfigError(f"backend {name!r} is not available ({exc}).{fix}") from exc
    return getattr(mod, cls)


__all__ = ["BACKENDS", "Backend", "JobSpec", "get_backend"]
