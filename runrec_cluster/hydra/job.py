"""What runs on the node for one job of a Hydra multirun: Hydra's own ``run_job``, as
hydra-submitit-launcher calls it, inside a runrec run.

``run_hydra_job(hydra_job, **values)`` (the ``HydraJob``, pickled: an opaque bytes argument, so
that runrec's secret walk over a call's arguments leaves Hydra's objects alone) restores Hydra's
singletons (ConfigStore, JobRuntime...), composes the job's config again as Hydra's
``load_sweep_config`` does (the multirun's config name, its ``hydra.overrides.hydra`` and the
job's overrides, with the multirun's resolver cache, which keeps ``${now:...}``), sets
``hydra.job.num`` and ``hydra.job.id`` (the runrec run id), works in the run's recorded working
directory, and calls ``hydra.core.utils.run_job``: the output directory with its ``.hydra/``
files, the job's logging, ``hydra.job.chdir``, ``hydra.job.env_set`` and the callbacks are
Hydra's. Before the task runs, the config files it composed from are checked against the hashes
recorded at submit (``drift.check``). It records the ``.hydra/`` directory as the run's artifact
``hydra`` (its path names the output directory; no copy is kept when the job had overrides
withheld from the store or a file there holds what the redaction rules flag) and re-raises the
task's exception, so runrec records the failure with its traceback; it returns the task's
return value.

``values``: the overrides kept out of the store (``secrets``: keyword = the override's key,
value = its text), which runrec's withholding hands back in the job, and a rerun's ``--set``
values.

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
import yaml
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.singleton import Singleton
from hydra.core.utils import JobStatus, run_job, setup_globals
from hydra.types import HydraContext, RunMode, TaskFunction
from omegaconf import DictConfig, OmegaConf, open_dict

from runrec_cluster.capture.data import hash_path
from runrec_cluster.capture.redact import active_rules, redact_value
from runrec_cluster.hydra import drift, secrets
from runrec_cluster.job.artifacts import artifact_ref
from runrec_cluster.job.run import Run, current_run
from runrec_cluster.record import to_patch

ARTIFACT = "hydra"  # the artifact holding the job's .hydra/ directory
NOT_KEPT = (
    "not kept: Hydra's files hold values kept out of the store (secrets); recorded by digest only"
)


@dataclass
class HydraJob:
    """One job of a multirun, as the launcher hands it to the node (pickled with the call). It
    holds no composed config: the multirun's config would hold every override's value
    (``secrets``)."""

    hydra_context: HydraContext
    task_function: TaskFunction
    config_name: str | None  # the multirun's primary config
    overrides: list[str]  # hydra.overrides.hydra + this job's, withheld ones as placeholders
    num: int  # hydra.job.num
    cwd: str  # the multirun's working directory
    # index in ``overrides`` -> (its head, e.g. "+db.password=", the keyword of its value)
    withheld: dict[int, tuple[str, str]] = field(default_factory=dict)
    resolver_cache: dict[str, Any] = field(default_factory=dict)  # the multirun's (${now:...})
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


def compose(job: HydraJob, values: dict[str, Any]) -> tuple[DictConfig, list[str]]:
    """The job's config, composed as ``load_sweep_config`` composes it, and the overrides it
    was composed with. ``values``: the withheld overrides' values (by keyword; a rerun's
    ``--set`` of such a key gives its text) and the other ``--set`` values."""
    names = {name for _, name in job.withheld.values()}
    given = {k: v for k, v in values.items() if k in names}
    extra = {k: v for k, v in values.items() if k not in names}
    overrides = with_overrides(secrets.fill(job.overrides, job.withheld, given), extra)
    loader = job.hydra_context.config_loader
    config = loader.load_configuration(
        config_name=job.config_name, overrides=overrides, run_mode=RunMode.RUN
    )
    OmegaConf.set_cache(config, job.resolver_cache)
    return config, overrides


def run_hydra_job(hydra_job: bytes, **values: Any) -> Any:
    """Run one Hydra job (see the module docstring)."""
    job = cloudpickle.loads(hydra_job)
    assert isinstance(job, HydraJob)
    Singleton.set_state(job.singletons)
    setup_globals()
    run = current_run()
    sweep_config, overrides = compose(job, values)
    rec = run.record if run is not None else None
    with open_dict(sweep_config.hydra.job):
        sweep_config.hydra.job.num = job.num
        sweep_config.hydra.job.id = run.run_id if run is not None else f"job_id_for_{job.num}"
    if rec is not None and rec.rerun_of and run is not None:
        rerun_output(run, rec.rerun_root or rec.rerun_of, sweep_config)
    if run is not None and run.rank == 0:
        drift.check(run, job.hydra_context.config_loader, sweep_config, overrides)
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
            log_hydra_dir(run, os.path.join(out, str(sub)), withheld=bool(job.withheld))
    finally:
        os.chdir(saved)
    if ret.status == JobStatus.FAILED:
        # the task's own exception, with its traceback (JobReturn.return_value would raise it
        # too, after writing Hydra's "Error executing job" line to stderr)
        raise ret._return_value
    return ret.return_value


def rerun_output(run: Run, original: str, sweep_config: DictConfig) -> None:
    """A rerun writes next to the original's output directory: ``<subdir>-rerun-<run id>``,
    and a relative ``hydra.sweep.dir`` is the original's (under the working directory of the
    first run of the chain), even when the rerun runs in materialized code (under the store's
    ``worktrees/``, where Hydra's files, overrides included, do not belong)."""
    subdir = str(OmegaConf.select(sweep_config, "hydra.sweep.subdir"))
    sweep_dir = str(OmegaConf.select(sweep_config, "hydra.sweep.dir"))
    ep = run.store.load(original).entrypoint
    with open_dict(sweep_config.hydra.sweep):
        sweep_config.hydra.sweep.subdir = f"{subdir}-rerun-{run.run_id}"
        if not os.path.isabs(sweep_dir) and ep is not None and ep.cwd:
            sweep_config.hydra.sweep.dir = os.path.join(ep.cwd, sweep_dir)


def log_hydra_dir(run: Run, path: str, *, withheld: bool) -> None:
    """Record Hydra's ``.hydra/`` directory as artifact ``hydra``: with a kept copy
    (``run.log_artifact``), unless the job had overrides withheld from the store or one of the
    files holds what the redaction rules flag (``hydra.job.env_set``, a secret in a config
    file): then by digest only, saying why."""
    if not withheld and not _flagged(path):
        run.log_artifact(path, name=ARTIFACT)
        return
    res, _ = hash_path(path)
    ref = artifact_ref(run.store, ARTIFACT, res, not_kept=NOT_KEPT)
    run.store.write_version(run.run_id, "artifact", to_patch(artifacts=[ref]), role="job")


def _flagged(path: str) -> bool:
    """Whether a file of ``path`` holds what the config view would redact (read as YAML, so
    that each value is judged under its own key, as in a record's config)."""
    rules = active_rules()
    for name in sorted(os.listdir(path)):
        try:
            with open(os.path.join(path, name), encoding="utf-8") as f:
                data = yaml.safe_load(f)
        except (OSError, UnicodeDecodeError, yaml.YAMLError):
            return True  # unknown content: not copied
        if redact_value("", data, rules) != data:
            return True
    return False
