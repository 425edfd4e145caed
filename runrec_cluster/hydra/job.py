"""What runs on the node for one job of a Hydra multirun: Hydra's own ``run_job``, as
hydra-submitit-launcher calls it, inside a runrec run.

``run_hydra_job(hydra_job)`` (the ``HydraJob``, pickled: an opaque bytes argument, so that
runrec's secret walk over a call's arguments leaves Hydra's objects alone) restores Hydra's singletons (ConfigStore, JobRuntime...), composes the
job's config again from the multirun's config and the job's overrides
(``load_sweep_config``, which keeps the multirun's cached ``${now:...}``), sets ``hydra.job.num``
and ``hydra.job.id`` (the runrec run id), works in the run's recorded working directory, and
calls ``hydra.core.utils.run_job``: the output directory with its ``.hydra/`` files, the job's
logging, ``hydra.job.chdir``, ``hydra.job.env_set`` and the callbacks are Hydra's. It records the
``.hydra/`` directory as the run's artifact ``hydra`` (its path names the output directory) and
re-raises the task's exception, so runrec records the failure with its traceback; it returns the
task's return value.

A rerun (``runrec rerun RUN``) calls it again with ``--set`` values as keyword arguments: each
becomes a Hydra override ``++key=value`` (replacing the job's own override of that key), and the
rerun writes into a new output directory, ``<subdir>-rerun-<run id>``, next to the original's.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from typing import Any

import cloudpickle
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.singleton import Singleton
from hydra.core.utils import JobStatus, run_job, setup_globals
from hydra.types import HydraContext, TaskFunction
from omegaconf import DictConfig, OmegaConf, open_dict

from runrec_cluster.job.run import current_run

ARTIFACT = "hydra"  # the artifact holding the job's .hydra/ directory


@dataclass
class HydraJob:
    """One job of a multirun, as the launcher hands it to the node (pickled with the call)."""

    hydra_context: HydraContext
    task_function: TaskFunction
    config: DictConfig  # the multirun's config (its cache keeps ${now:...} as resolved)
    overrides: list[str]  # this job's sweep overrides
    num: int  # hydra.job.num
    cwd: str  # the multirun's working directory
    singletons: dict[Any, Any] = field(default_factory=dict)

    def __repr__(self) -> str:  # what a log line or the record's function view shows
        return f"HydraJob(#{self.num}: {' '.join(self.overrides)})"


def hydra_value(value: Any) -> str:
    """A value in Hydra's override grammar: quoted strings, true/false/null, numbers as JSON
    writes them, ``[a, b]`` lists and ``{key: value}`` dicts."""
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k}: {hydra_value(v)}" for k, v in value.items()) + "}"
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(hydra_value(v) for v in value) + "]"
    return json.dumps(value)


def with_overrides(overrides: list[str], extra: dict[str, Any]) -> list[str]:
    """``overrides`` with ``++key=value`` for each of ``extra`` (a rerun's ``--set``), the job's
    own value overrides of those keys dropped."""
    if not extra:
        return list(overrides)
    parsed = OverridesParser.create().parse_overrides(list(overrides))
    keep = [o.input_line or "" for o in parsed if o.key_or_group not in extra]
    return keep + [f"++{k}={hydra_value(v)}" for k, v in extra.items()]


def run_hydra_job(hydra_job: bytes, **overrides: Any) -> Any:
    """Run one Hydra job (see the module docstring). ``overrides``: a rerun's ``--set`` values."""
    job = cloudpickle.loads(hydra_job)
    assert isinstance(job, HydraJob)
    Singleton.set_state(job.singletons)
    setup_globals()
    run = current_run()
    loader = job.hydra_context.config_loader
    sweep_config = loader.load_sweep_config(job.config, with_overrides(job.overrides, overrides))
    rec = run.record if run is not None else None
    with open_dict(sweep_config.hydra.job):
        sweep_config.hydra.job.num = job.num
        sweep_config.hydra.job.id = run.run_id if run is not None else f"job_id_for_{job.num}"
    if rec is not None and rec.rerun_of and run is not None:
        subdir = str(OmegaConf.select(sweep_config, "hydra.sweep.subdir"))
        with open_dict(sweep_config.hydra.sweep):
            sweep_config.hydra.sweep.subdir = f"{subdir}-rerun-{run.run_id}"
    cwd = rec.entrypoint.cwd if rec is not None and rec.entrypoint is not None else None
    saved = os.getcwd()
    os.chdir(cwd or job.cwd)
    try:
        ret = run_job(
            hydra_context=job.hydra_context,
            task_function=job.task_function,
            config=sweep_config,
            job_dir_key="hydra.sweep.dir",
            job_subdir_key="hydra.sweep.subdir",
        )
        out = str(sweep_config.hydra.runtime.output_dir)
        sub = sweep_config.hydra.output_subdir
        if run is not None and sub is not None and os.path.isdir(os.path.join(out, str(sub))):
            run.log_artifact(os.path.join(out, str(sub)), name=ARTIFACT)
    finally:
        os.chdir(saved)
    if ret.status == JobStatus.FAILED:
        # the task's own exception, with its traceback (JobReturn.return_value would raise it
        # too, after writing Hydra's "Error executing job" line to stderr)
        raise ret._return_value
    return ret.return_value
