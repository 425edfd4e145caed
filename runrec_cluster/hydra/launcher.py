"""The Hydra launcher: a ``--multirun`` becomes one runrec sweep.

Hydra finds the plugin classes in ``hydra_plugins.runrec_launcher`` (Hydra instantiates only
classes defined under the ``hydra_plugins`` namespace package); they are thin subclasses of
``RunrecLauncher`` here, one per backend (``backend`` is the declared difference).

``launch(job_overrides)``, on the submitting host: composes every job's config as Hydra will on
the node (``load_sweep_config``), records it with Hydra's provenance per key and its config
files hashed as inputs (``provenance.job_config``), writes the launch records of all jobs as
one sweep (``Executor.prepare_calls``), launches them on the backend (one Slurm array, one
local supervisor, one Ray driver), waits for all, and returns Hydra's ``JobReturn`` per job:
the task's return value, or the recorded failure (``JobFailed``, with the job's traceback),
which Hydra's sweeper raises after the batch, as it does for hydra-submitit-launcher.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import cloudpickle
import msgspec.structs
from hydra.core.utils import JobReturn, JobStatus, configure_log, filter_overrides, setup_globals
from hydra.errors import CompactHydraException
from hydra.plugins.launcher import Launcher
from hydra.types import HydraContext, TaskFunction
from omegaconf import DictConfig, OmegaConf, open_dict

from runrec_cluster.api import Executor, RunHandle
from runrec_cluster.capture.data import Dataset
from runrec_cluster.capture.inputs import hash_input
from runrec_cluster.capture.redact import active_rules, redact_text
from runrec_cluster.errors import JobFailed, RunrecError
from runrec_cluster.hydra import config as launcher_config
from runrec_cluster.hydra import provenance, secrets
from runrec_cluster.hydra.job import HydraJob, run_hydra_job
from runrec_cluster.record import InputRef

log = logging.getLogger(__name__)


class LauncherError(CompactHydraException):
    """A runrec error before the jobs ran (a launcher parameter, the store, the backend's
    launch): Hydra prints its message, without a traceback, and exits 1."""


class RunrecLauncher(Launcher):
    """Runs a Hydra multirun as one runrec sweep on ``backend`` (set by each subclass)."""

    backend = "local"

    def __init__(self, **params: Any) -> None:
        self.params = params
        self.config: DictConfig | None = None
        self.hydra_context: HydraContext | None = None
        self.task_function: TaskFunction | None = None

    def setup(
        self,
        *,
        hydra_context: HydraContext,
        task_function: TaskFunction,
        config: DictConfig,
    ) -> None:
        self.config = config
        self.hydra_context = hydra_context
        self.task_function = task_function

    def _params(self) -> dict[str, Any]:
        out = {}
        for k, v in self.params.items():
            out[k] = OmegaConf.to_container(v, resolve=True) if OmegaConf.is_config(v) else v
        return out

    def launch(
        self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int
    ) -> Sequence[JobReturn]:
        setup_globals()
        assert self.config is not None
        configure_log(self.config.hydra.hydra_logging, self.config.hydra.verbose)
        try:
            handles, sweep_configs = self._submit(job_overrides, initial_job_idx)
        except RunrecError as exc:  # a user's mistake or a launch failure: Hydra prints one line
            raise LauncherError(f"runrec {self.backend} launcher: {exc}") from exc
        return [
            self._job_return(h, sc, list(ov))
            for h, sc, ov in zip(handles, sweep_configs, job_overrides, strict=True)
        ]

    def _submit(
        self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int
    ) -> tuple[list[RunHandle], list[DictConfig]]:
        """Compose, record and launch every job of the batch as one sweep."""
        assert self.config is not None and self.hydra_context is not None
        assert self.task_function is not None
        params = self._params()
        ex = Executor(**launcher_config.executor_kwargs(self.backend, params))
        sweep_dir = Path(str(self.config.hydra.sweep.dir))
        sweep_dir.mkdir(parents=True, exist_ok=True)
        if "mode" in self.config.hydra.sweep:
            os.chmod(sweep_dir, mode=int(str(self.config.hydra.sweep.mode), 8))
        log.info(
            f"runrec {self.backend} sweep of {len(job_overrides)} jobs, output dir {sweep_dir} "
            f"(store {ex.store.root})"
        )
        loader = self.hydra_context.config_loader
        hydra_overrides = [str(o) for o in self.config.hydra.overrides.hydra]
        # what the pickled jobs share; never the multirun's config, which holds every override's
        # value (hydra/secrets.py)
        singletons = secrets.node_singletons()
        cache = OmegaConf.get_cache(self.config)
        rules = active_rules()
        calls, recorded, sweep_configs = [], [], []
        hashed: dict[str, InputRef] = {}
        for idx, overrides in enumerate(job_overrides):
            num = initial_job_idx + idx
            sweep_config = loader.load_sweep_config(self.config, list(overrides))
            with open_dict(sweep_config.hydra.job):
                sweep_config.hydra.job.num = num
            entries, files = provenance.job_config(
                loader, sweep_config, hydra_overrides + list(overrides)
            )
            safe, withheld, values = secrets.split(
                hydra_overrides + list(overrides), sweep_config.hydra.runtime.choices, rules
            )
            job = HydraJob(
                hydra_context=self.hydra_context,
                task_function=self.task_function,
                config_name=self.config.hydra.job.config_name,
                overrides=safe,
                num=num,
                cwd=ex.cwd,
                withheld=withheld,
                resolver_cache=cache,
                singletons=singletons,
            )
            blob = cloudpickle.dumps(job)
            secrets.check_kept_out(f"the pickled Hydra job #{num}", blob, values)
            calls.append((run_hydra_job, (blob,), values))
            recorded.append((entries, [self._hash_config_file(ex, f, hashed) for f in files]))
            sweep_configs.append(sweep_config)
        specs = ex.prepare_calls(
            calls,
            inputs=params.get("inputs") or None,
            tags=params.get("tags") or None,
            name=str(params.get("name") or "") or None,
            sweep=True,
            call_configs=recorded,
        )
        handles = ex.launch(specs)
        for idx, (overrides, h) in enumerate(zip(job_overrides, handles, strict=True)):
            line = redact_text(" ".join(filter_overrides(overrides)), rules)
            log.info(f"\t#{initial_job_idx + idx} : {line}  -> run {h.run_id}")
        sweep_id = ex.store.load(handles[0].run_id).sweep_id
        log.info(f"runrec sweep {sweep_id}: runrec ls --where 'sweep_id == \"{sweep_id}\"'")
        return handles, sweep_configs

    @staticmethod
    def _hash_config_file(ex: Executor, path: str, hashed: dict[str, InputRef]) -> InputRef:
        """A config file as an input of role ``config`` (hashed once per multirun)."""
        if path not in hashed:
            ref = hash_input(ex.store, Dataset(path), progress=ex.hash_progress)
            hashed[path] = msgspec.structs.replace(ref, role="config")
        return hashed[path]

    @staticmethod
    def _job_return(h: Any, sweep_config: DictConfig, overrides: list[str]) -> JobReturn:
        """Hydra's JobReturn of a finished run: its value, or its recorded failure."""
        with open_dict(sweep_config.hydra.job):
            sweep_config.hydra.job.id = h.run_id
        ret = JobReturn(
            overrides=overrides,
            cfg=provenance.task_config(sweep_config),
            hydra_cfg=OmegaConf.create({"hydra": sweep_config.hydra}),
            working_dir=os.getcwd(),
            task_name=str(sweep_config.hydra.job.name),
        )
        try:
            ret.return_value = h.result()
            ret.status = JobStatus.COMPLETED
        except JobFailed as exc:
            ret.return_value = exc
            ret.status = JobStatus.FAILED
        except RunrecError as exc:  # the result could not be read back: the run still is recorded
            ret.return_value = exc
            ret.status = JobStatus.FAILED
        return ret
