"""The launcher's configs (``hydra/launcher=runrec_local|runrec_slurm|runrec_ray``) and their
translation into ``rr.Executor`` arguments.

The parameters are those of ``hydra-submitit-launcher`` (``timeout_min``, ``cpus_per_task``,
``gpus_per_node``, ``mem_gb``, ``nodes``, ``tasks_per_node``, ``name``, and on Slurm
``partition``, ``constraint``, ``array_parallelism``, ``additional_parameters``, ``setup``...),
so a user's ``hydra.launcher.*`` overrides keep working, plus runrec's own: ``hardware`` (a
hardware class), ``store``, ``tags`` and ``inputs`` (datasets hashed as inputs of every job).

``executor_kwargs`` is pure (no Hydra needed): it maps a launcher config, as a plain dict, to
``rr.Executor(**kwargs)``; a parameter runrec cannot honour is refused naming it
(``ConfigError``), never dropped.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from hydra.core.config_store import ConfigStore

from runrec_cluster.errors import ConfigError

PLUGIN_MODULE = "hydra_plugins.runrec_launcher.runrec_launcher"


@dataclass
class BaseRunrecConf:
    """What every runrec launcher takes (hydra-submitit-launcher's ``BaseQueueConf``)."""

    timeout_min: float | None = 60  # the job's time limit, in minutes
    cpus_per_task: int | None = None
    gpus_per_node: int | None = None
    tasks_per_node: int = 1
    mem_gb: float | None = None
    nodes: int = 1
    name: str = "${hydra.job.name}"  # the runs' name
    stderr_to_stdout: bool = False  # accepted at its default only (runrec keeps both logs)
    hardware: str | None = None  # a hardware class (docs/hardware-classes.md)
    store: str | None = None  # default: the store runrec's settings name
    tags: dict[str, str] = field(default_factory=dict)  # tags of every run
    inputs: list[str] = field(default_factory=list)  # datasets hashed as inputs of every run


@dataclass
class RunrecLocalConf(BaseRunrecConf):
    _target_: str = f"{PLUGIN_MODULE}.RunrecLocalLauncher"
    max_parallel: int | None = None  # jobs at a time (default: the CPU count)


@dataclass
class RunrecSlurmConf(BaseRunrecConf):
    _target_: str = f"{PLUGIN_MODULE}.RunrecSlurmLauncher"
    partition: str | None = None
    qos: str | None = None
    comment: str | None = None
    constraint: str | None = None
    exclude: str | None = None
    gres: str | None = None
    cpus_per_gpu: int | None = None
    gpus_per_task: int | None = None
    mem_per_gpu: str | None = None
    mem_per_cpu: str | None = None
    account: str | None = None
    # submitit's warning signal before the time limit; None: runrec's default (0, so that
    # Slurm's own TIMEOUT is the verdict; docs/backends.md)
    signal_delay_s: int | None = None
    max_num_timeout: int = 0  # accepted at 0 only: runrec does not resubmit on timeout
    additional_parameters: dict[str, Any] = field(default_factory=dict)
    array_parallelism: int = 256
    setup: list[str] | None = None
    srun_args: list[str] | None = None


@dataclass
class RunrecRayConf(BaseRunrecConf):
    _target_: str = f"{PLUGIN_MODULE}.RunrecRayLauncher"
    address: str | None = None  # default: $RAY_ADDRESS, else "auto"
    namespace: str | None = None
    # typed Any, so that a whole dict can be given on the command line
    # (hydra.launcher.resources={gpu_type_a:1}); a typed Optional[Dict] left at None cannot
    runtime_env: Any = None
    resources: Any = None
    accelerator_type: str | None = None
    scheduling_strategy: Any = None
    max_retries: int | None = None
    detached: bool | None = None  # default true: runs outlive the multirun process


CONFIGS = {
    "runrec_local": RunrecLocalConf,
    "runrec_slurm": RunrecSlurmConf,
    "runrec_ray": RunrecRayConf,
}
BACKEND_OF = {"runrec_local": "local", "runrec_slurm": "slurm", "runrec_ray": "ray"}

# hydra-submitit-launcher's Slurm parameters and runrec's option for each
_SLURM = {
    "partition": "slurm_partition",
    "qos": "slurm_qos",
    "constraint": "slurm_constraint",
    "exclude": "slurm_exclude",
    "gres": "slurm_gres",
    "account": "slurm_account",
    "signal_delay_s": "slurm_signal_delay_s",
    "array_parallelism": "slurm_array_parallelism",
    "setup": "slurm_setup",
    "srun_args": "slurm_srun_args",
}
# Slurm parameters runrec has no option for: passed to sbatch as submitit does
_SLURM_SBATCH = ("comment", "cpus_per_gpu", "gpus_per_task", "mem_per_gpu", "mem_per_cpu")
_RAY = {
    "address": "ray_address",
    "namespace": "ray_namespace",
    "runtime_env": "ray_runtime_env",
    "resources": "ray_resources",
    "accelerator_type": "ray_accelerator_type",
    "scheduling_strategy": "ray_scheduling_strategy",
    "max_retries": "ray_max_retries",
    "detached": "ray_detached",
}
_LOCAL = {"max_parallel": "local_max_parallel"}
_GENERIC = {
    "timeout_min": "timeout_min",
    "cpus_per_task": "cpus",
    "gpus_per_node": "gpus",
    "mem_gb": "mem_gb",
    "nodes": "nodes",
    "hardware": "hardware",
    "store": "store",
}
# taken by the launcher itself, not the Executor
LAUNCHER_KEYS = ("name", "tags", "inputs")


def register_configs() -> None:
    """Register ``runrec_local``, ``runrec_slurm`` and ``runrec_ray`` in Hydra's ConfigStore
    (group ``hydra/launcher``)."""
    cs = ConfigStore.instance()
    for name, node in CONFIGS.items():
        cs.store(group="hydra/launcher", name=name, node=node, provider="runrec_launcher")


def executor_kwargs(backend: str, params: Mapping[str, Any]) -> dict[str, Any]:
    """``rr.Executor(**kwargs)`` for a launcher config (a plain dict, ``_target_`` and the
    launcher's own keys ignored). ConfigError naming what runrec cannot honour."""
    table = {"local": _LOCAL, "slurm": _SLURM, "ray": _RAY}[backend]
    out: dict[str, Any] = {"backend": backend}
    sbatch: dict[str, Any] = {}
    unknown = []
    for key, val in params.items():
        if key == "_target_" or key in LAUNCHER_KEYS:
            continue
        if key in _GENERIC:
            if val is not None:
                out[_GENERIC[key]] = val
        elif key in table:
            if val is not None:
                out[table[key]] = val
        elif backend == "slurm" and key in _SLURM_SBATCH:
            if val is not None:
                sbatch[key] = val
        elif key == "additional_parameters" and backend == "slurm":
            sbatch.update(val or {})
        elif key == "tasks_per_node":
            if val not in (None, 1) and backend != "slurm":
                raise ConfigError(
                    _refusal(key, val, f"the {backend} backend runs one task per job")
                )
            if val not in (None, 1):
                out["slurm_ntasks_per_node"] = val
        elif key == "stderr_to_stdout":
            if val:
                raise ConfigError(
                    _refusal(key, val, "runrec keeps stdout and stderr apart (runrec logs RUN)")
                )
        elif key == "max_num_timeout" and backend == "slurm":
            if val:
                raise ConfigError(
                    _refusal(
                        key,
                        val,
                        "runrec does not resubmit a timed-out job; it records the timeout "
                        "(rerun it with `runrec rerun RUN`)",
                    )
                )
        else:
            unknown.append(key)
    if unknown:
        raise ConfigError(
            f"hydra.launcher: unknown parameter(s) {', '.join(sorted(unknown))} for the runrec "
            f"{backend} launcher. Remove them (docs/adopting.md lists the parameters)."
        )
    if sbatch:
        out["slurm_additional_parameters"] = sbatch
    return out


def _refusal(key: str, val: Any, why: str) -> str:
    return (
        f"hydra.launcher.{key}={val!r} is not supported: {why}. Remove the override "
        f"(or set hydra.launcher.{key} to its default)."
    )
