"""submitit's parameter names -> ``rr.Executor`` arguments, and the refusals (pure: no I/O).

Parameters are kept in one canonical form, the ``AutoExecutor`` one: generic names
(``timeout_min``, ``mem_gb``, ...), cluster-prefixed names (``slurm_partition``,
``local_timeout_min``) and runrec's own extras (``runrec_hardware``, ``runrec_tags``,
``runrec_inputs``). ``SlurmExecutor`` and ``LocalExecutor`` take their own unprefixed names;
``canonical`` prefixes them. ``translate`` maps the canonical parameters for one cluster to the
keyword arguments of ``rr.Executor``; a parameter runrec cannot honour raises
``UnsupportedParameter`` naming it, never silently dropped. As in submitit, a parameter of
another cluster (``slurm_partition`` on the local cluster) is ignored.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from runrec_cluster.backends.slurm import SLURM_OPTIONS
from runrec_cluster.errors import ConfigError

CLUSTERS = ("slurm", "local", "debug")
# submitit's generic parameter -> rr.Executor's keyword (None: handled in translate)
GENERIC = {
    "timeout_min": "timeout_min",
    "mem_gb": "mem_gb",
    "nodes": "nodes",
    "cpus_per_task": "cpus",
    "gpus_per_node": "gpus",
    "tasks_per_node": None,
    "name": "name",
    "stderr_to_stdout": None,
}
# submitit's Slurm names that are a generic one under another name (cluster-specific wins)
SLURM_GENERIC = {
    "time": "timeout_min",
    "mem": "mem_gb",
    "nodes": "nodes",
    "cpus_per_task": "cpus_per_task",
    "gpus_per_node": "gpus_per_node",
    "num_gpus": "gpus_per_node",  # submitit's legacy name
    "ntasks_per_node": "tasks_per_node",
    "job_name": "name",
    "stderr_to_stdout": "stderr_to_stdout",
}
# submitit's Slurm names runrec's Slurm backend takes as they are (slurm_<name>)
SLURM_DIRECT = frozenset(
    k[len("slurm_") :]
    for k, v in SLURM_OPTIONS.items()
    if v is not None and k not in ("slurm_ntasks_per_node",)
)
# plain sbatch flags submitit knows: passed through runrec's slurm_extra as --flag=value
SLURM_FLAGS = frozenset(
    {
        "comment",
        "mail_type",
        "mail_user",
        "dependency",
        "wckey",
        "cpus_per_gpu",
        "gpus_per_task",
        "mem_per_gpu",
        "mem_per_cpu",
    }
)
# what runrec cannot do, and why (a value other than submitit's default is refused)
REFUSED: dict[str, tuple[Any, str]] = {
    "tasks_per_node": (
        1,
        "runrec runs one task per node (nodes=N runs the function once per node)",
    ),
    "stderr_to_stdout": (False, "runrec keeps a job's stdout and stderr apart"),
    "slurm_teardown": (
        None,
        "runrec's batch script records the job's end after srun; no teardown lines",
    ),
    "slurm_use_srun": (True, "runrec's Slurm jobs always run through srun"),
    "max_num_timeout": (
        3,
        "runrec's Slurm backend requeues a timed-out checkpointable job at most 3 times",
    ),
    "max_pickle_size_gb": (1.0, "runrec stores the pickled call in its store, with its own limits"),
    "local_visible_gpus": (
        (),
        "runrec's local backend does not pick GPUs; set CUDA_VISIBLE_DEVICES",
    ),
    "local_signal_delay_s": (None, "runrec's local backend sends no signal before the time limit"),
    "local_setup": (None, "runrec's local backend runs no setup lines before the job"),
}
# runrec's own parameters: runrec_<name> -> what it is
RUNREC = {
    "runrec_hardware": "hardware",
    "runrec_tags": "tags",
    "runrec_inputs": "inputs",
}
DEFAULT_TIMEOUT_MIN = {"slurm": 5, "local": 2.0}  # submitit's own defaults
CHECKPOINT_SIGNAL_DELAY_S = 90  # submitit's default --signal=USR2@90


class UnsupportedParameter(ConfigError, ValueError):
    """A submitit parameter runrec cannot honour (also a ValueError, as submitit raises)."""


def canonical(kind: str, params: Mapping[str, Any]) -> dict[str, Any]:
    """Parameters of an executor of ``kind`` ("auto", "slurm", "local", "debug") in the
    canonical (AutoExecutor) form. ``None`` means "not set", as in submitit."""
    out: dict[str, Any] = {}
    for k, v in params.items():
        if v is None:
            continue
        if kind == "slurm" and not k.startswith("runrec_"):
            k = f"slurm_{k}"
        elif kind in ("local", "debug") and k not in GENERIC and not k.startswith("runrec_"):
            k = f"local_{k}"
        out[k] = v
    return out


def check_names(params: Mapping[str, Any]) -> None:
    """Refuse names no cluster knows (submitit raises for those too), naming each."""
    bad = []
    for k in params:
        if k in GENERIC or k in RUNREC or k in REFUSED:
            continue
        prefix, _, arg = k.partition("_")
        if prefix == "slurm" and (
            arg in SLURM_GENERIC or arg in SLURM_DIRECT or arg in SLURM_FLAGS or k in REFUSED
        ):
            continue
        if prefix in ("local", "debug") and (arg in GENERIC or k in REFUSED):
            continue
        bad.append(k)
    if bad:
        raise UnsupportedParameter(
            f"unknown or unsupported submitit parameter(s): {', '.join(sorted(bad))}. runrec takes "
            f"the generic ones ({', '.join(GENERIC)}), slurm_<sbatch option> "
            f"({', '.join(sorted(SLURM_DIRECT | SLURM_FLAGS | set(SLURM_GENERIC)))}), and "
            f"{', '.join(RUNREC)} (docs/adopting.md, From submitit)."
        )


def check_value(key: str, value: Any) -> None:
    """Refuse a value of a parameter in ``REFUSED`` other than submitit's default."""
    default, why = REFUSED[key]
    same = value == default or (default is None and not value) or (default == () and not value)
    if not same:
        raise UnsupportedParameter(
            f"submitit parameter {key}={value!r} is not supported by runrec: {why}. "
            f"Leave it at submitit's default ({default!r})."
        )


def parse_time_min(value: Any) -> float:
    """sbatch's --time (minutes as a number, or "MM", "MM:SS", "HH:MM:SS", "D-HH[:MM[:SS]]")."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    m = re.fullmatch(r"(?:(\d+)-)?(\d+)(?::(\d+))?(?::(\d+))?", str(value).strip())
    if not m:
        raise UnsupportedParameter(
            f"slurm_time={value!r}: give minutes (e.g. 90) or sbatch's D-HH:MM:SS form."
        )
    d, a, b, c = (int(x) if x else None for x in m.groups())
    if d is not None:  # D-HH[:MM[:SS]]
        return d * 1440 + (a or 0) * 60 + (b or 0) + (c or 0) / 60
    if c is not None:  # HH:MM:SS
        return (a or 0) * 60 + (b or 0) + c / 60
    if b is not None:  # MM:SS
        return (a or 0) + b / 60
    return float(a or 0)


def parse_mem_gb(value: Any) -> float:
    """sbatch's --mem ("16GB", "500M", "2G", a number of megabytes) in GB."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value) / 1024
    m = re.fullmatch(r"(\d+(?:\.\d+)?)\s*([KMGT]?)B?", str(value).strip(), re.IGNORECASE)
    if not m:
        raise UnsupportedParameter(f"slurm_mem={value!r}: give e.g. '16GB', '500M' or megabytes.")
    scale = {"K": 1 / 1024**2, "M": 1 / 1024, "": 1 / 1024, "G": 1.0, "T": 1024.0}
    return float(m.group(1)) * scale[m.group(2).upper()]


def _generics(cluster: str, params: Mapping[str, Any]) -> dict[str, Any]:
    """The generic parameters for ``cluster``, its own prefixed overrides winning."""
    out = {k: v for k, v in params.items() if k in GENERIC}
    prefix = "slurm" if cluster == "slurm" else "local"
    for k, v in params.items():
        head, _, arg = k.partition("_")
        if head != prefix:
            continue
        if prefix == "slurm" and arg in SLURM_GENERIC:
            gen = SLURM_GENERIC[arg]
            if arg == "time":
                v = parse_time_min(v)
            elif arg == "mem":
                v = parse_mem_gb(v)
            out[gen] = v
        elif prefix == "local" and arg in GENERIC:
            out[arg] = v
    return out


def translate(
    cluster: str,
    params: Mapping[str, Any],
    *,
    checkpointable: bool = False,
    python: str | None = None,
) -> tuple[dict[str, Any], dict[str, Any]]:
    """``(executor_kwargs, call_extras)`` for ``rr.Executor(backend=..., **executor_kwargs)``
    and its ``prepare_calls`` (``tags``, ``inputs``). ``checkpointable``: a submitted callable
    has a ``checkpoint`` method (Slurm then gets submitit's USR2 90 s before the time limit,
    unless ``slurm_signal_delay_s`` is given); ``python``: the executor's ``python=``."""
    if cluster not in CLUSTERS:
        raise UnsupportedParameter(
            f"cluster={cluster!r} is not one runrec knows; use one of {', '.join(CLUSTERS)}."
        )
    check_names(params)
    for key, value in params.items():
        head = key.partition("_")[0]
        if key in REFUSED and (
            head not in ("slurm", "local") or (head == "slurm") == (cluster == "slurm")
        ):
            check_value(key, value)
    gen = _generics(cluster, params)
    for key in ("tasks_per_node", "stderr_to_stdout"):
        if key in gen:
            check_value(key, gen[key])
    if cluster != "slurm" and int(gen.get("nodes", 1)) != 1:
        raise UnsupportedParameter(
            f"nodes={gen['nodes']!r} on the {cluster} cluster: it runs on this machine only; "
            "use nodes=1 (submitit refuses it too)."
        )
    kw: dict[str, Any] = {"backend": "local" if cluster == "debug" else cluster}
    for k, v in gen.items():
        target = GENERIC[k]
        if target is not None:
            kw[target] = v
    if "timeout_min" not in kw and cluster in DEFAULT_TIMEOUT_MIN:
        kw["timeout_min"] = DEFAULT_TIMEOUT_MIN[cluster]
    extras: dict[str, Any] = {}
    for k, v in params.items():
        if k in RUNREC:
            if RUNREC[k] == "hardware":
                kw["hardware"] = v
            else:
                extras[RUNREC[k]] = v
    if cluster == "slurm":
        kw.update(_slurm_options(params))
        if checkpointable:
            kw.setdefault("slurm_signal_delay_s", CHECKPOINT_SIGNAL_DELAY_S)
    if python and cluster != "debug":
        kw[f"{cluster}_python"] = python
    return kw, extras


def _slurm_options(params: Mapping[str, Any]) -> dict[str, Any]:
    """runrec's slurm_* options from submitit's Slurm parameters."""
    out: dict[str, Any] = {}
    extra: dict[str, Any] = {}
    for k, v in params.items():
        head, _, arg = k.partition("_")
        if head != "slurm" or arg in SLURM_GENERIC or k in REFUSED:
            continue
        if arg in SLURM_DIRECT:
            out[k] = v
        elif arg in SLURM_FLAGS:
            extra[arg.replace("_", "-")] = v
    if extra:
        out["slurm_extra"] = extra
    return out
