"""Backends: local (here), slurm (through submitit), ray. A backend's module is imported only
when that backend is used (``get_backend``), so its heavy dependency is too.

To add a backend: subclass ``base.Backend`` in a module of this package (``launch`` and
``cancel``; ``ask`` when it has a scheduler to ask), declare its differences as class
attributes, and name the module here in ``BACKENDS``.
"""

from __future__ import annotations

import importlib

from runrec_cluster.backends.base import Backend, JobSpec, forget_checks
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
    """The backend class registered as ``name`` (its module imported now)."""
    if name not in BACKENDS:
        raise ConfigError(f"unknown backend {name!r}; choose one of {', '.join(sorted(BACKENDS))}.")
    module, cls, hint = BACKENDS[name]
    try:
        mod = importlib.import_module(module)
    except ImportError as exc:
        fix = f" Install it with: {hint}" if hint else ""
        raise ConfigError(f"backend {name!r} is not available ({exc}).{fix}") from exc
    return getattr(mod, cls)


__all__ = ["BACKENDS", "Backend", "JobSpec", "forget_checks", "get_backend"]
