"""submitit's executors over ``rr.Executor``: ``AutoExecutor``, ``SlurmExecutor``,
``LocalExecutor``, ``DebugExecutor``.

``submit``, ``map_array``, ``submit_array`` and ``batch()`` are written once in ``Executor``
(as in submitit's ``core.Executor``); every call becomes a runrec run whose launch record is
written before anything runs (``rr.Executor.prepare_calls``), then launched on runrec's local
or Slurm backend (one Slurm array job for a ``map_array`` or a ``batch()``), or, on the debug
cluster, run in this process when its result is first asked for (``jobs.DebugJob``).

``folder`` is kept (``executor.folder``) and created, as submitit does, but the logs and
results live in the runrec store (``job.paths``): ``runrec_store=`` here, else the default
store rules (``RUNREC_STORE``, ``[tool.runrec] store``; ``settings.py``).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import warnings
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

from runrec_cluster.api import Executor as RunrecExecutor
from runrec_cluster.api import RunHandle
from runrec_cluster.store import Store
from runrec_cluster.submitit import params as P
from runrec_cluster.submitit.jobs import DebugJob, Job
from runrec_cluster.submitit.resume import Resumable, checkpoint_method

CLUSTER_ENV = "RUNREC_SUBMITIT_CLUSTER"  # AutoExecutor(cluster=None): force a cluster
Call = tuple[Callable[..., Any], tuple[Any, ...], dict[str, Any]]


class DelayedJob:
    """A job submitted inside ``batch()``: an empty shell until the batch is submitted, then
    the real ``Job`` (its class and state are taken over)."""

    def __init__(self, executor: Executor) -> None:
        self.__dict__["_executor"] = executor

    def __getattr__(self, name: str) -> Any:
        ex = self.__dict__["_executor"]
        if not ex.allow_implicit_submissions:
            raise AttributeError(
                "a job submitted inside `with executor.batch():` exists only once the context "
                f"is left; {name!r} is not available yet (or use "
                "executor.batch(allow_implicit_submissions=True))."
            )
        ex.submit_delayed_batch()
        return getattr(self, name)

    def promote(self, job: Job) -> None:
        self.__dict__.clear()
        self.__dict__.update(job.__dict__)
        self.__class__ = job.__class__  # type: ignore[assignment]

    def __repr__(self) -> str:
        return "DelayedJob<not submitted yet>"


class Executor:
    """What every drop-in executor shares. ``cluster``: "slurm", "local" or "debug"."""

    kind = "auto"  # how update_parameters names parameters (params.canonical)

    def __init__(
        self,
        folder: str | os.PathLike[str],
        cluster: str,
        *,
        python: str | None = None,
        runrec_store: Store | str | os.PathLike[str] | None = None,
    ) -> None:
        if cluster not in P.CLUSTERS:
            raise P.UnsupportedParameter(
                f"cluster={cluster!r}: runrec's drop-in knows {', '.join(P.CLUSTERS)}."
            )
        self.folder = Path(folder).expanduser().absolute()
        self.cluster = cluster
        self.parameters: dict[str, Any] = {}
        self.python = python
        self.store = runrec_store
        self.allow_implicit_submissions = False
        self._batch: list[tuple[DelayedJob, Call]] | None = None
        self._executors: dict[str, RunrecExecutor] = {}

    def __repr__(self) -> str:
        return f"{type(self).__name__}(folder={str(self.folder)!r}, cluster={self.cluster!r})"

    @classmethod
    def name(cls) -> str:
        return cls.__name__.removesuffix("Executor").lower()

    # -- parameters --------------------------------------------------------------------------

    def update_parameters(self, **kwargs: Any) -> None:
        """submitit's parameter names (docs/adopting.md, From submitit); one runrec cannot
        honour raises ``UnsupportedParameter`` naming it, and nothing is changed."""
        if self._batch is not None:
            raise RuntimeError(
                'Changing parameters within batch context "with executor.batch():" is not allowed'
            )
        merged = {**self.parameters, **P.canonical(self.kind, kwargs)}
        P.translate(self.cluster, merged, python=self.python)  # refuse now, not at submit
        self.parameters = merged

    def runrec_executor(self, checkpointable: bool = False) -> RunrecExecutor:
        """The ``rr.Executor`` for the current parameters (one per distinct translation)."""
        kw, _ = P.translate(
            self.cluster, self.parameters, checkpointable=checkpointable, python=self.python
        )
        key = repr(sorted(kw.items()))
        if key not in self._executors:
            self._executors[key] = RunrecExecutor(store=self.store, **kw)
        return self._executors[key]

    # -- submission --------------------------------------------------------------------------

    def submit(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Job:
        call: Call = (fn, args, kwargs)
        if self._batch is not None:
            job = DelayedJob(self)
            self._batch.append((job, call))
            return job  # type: ignore[return-value]
        return self.process([call])[0]

    def map_array(self, fn: Callable[..., Any], *iterable: Iterable[Any]) -> list[Job]:
        """One job per element of ``zip(*iterable)``: ``fn(a[i], b[i], ...)``, submitted as one
        runrec sweep (one Slurm array job)."""
        calls: list[Call] = [(fn, tuple(args), {}) for args in zip(*iterable, strict=False)]
        if not calls:
            warnings.warn("Received an empty job array", stacklevel=2)
            return []
        return self.process(calls)

    def submit_array(self, fns: Iterable[Callable[[], Any]]) -> list[Job]:
        calls: list[Call] = [(f, (), {}) for f in fns]
        if not calls:
            warnings.warn("Received an empty job array", stacklevel=2)
            return []
        return self.process(calls)

    @contextlib.contextmanager
    def batch(self, allow_implicit_submissions: bool = False) -> Iterator[None]:
        """Every ``submit`` inside the context is submitted when it is left, as one array."""
        if self._batch is not None:
            raise RuntimeError('Nesting "with executor.batch()" contexts is not allowed.')
        self.allow_implicit_submissions = allow_implicit_submissions
        self._batch = []
        try:
            yield None
            self.submit_delayed_batch()
        finally:
            self._batch = None

    def submit_delayed_batch(self) -> None:
        """Submit what ``batch()`` collected so far (on leaving it, or implicitly)."""
        pending, self._batch = self._batch or [], []
        if not pending:
            if not self.allow_implicit_submissions:
                warnings.warn(
                    'No submission happened during "with executor.batch()" context.',
                    category=RuntimeWarning,
                    stacklevel=3,
                )
            return
        jobs = self.process([call for _, call in pending])
        for (delayed, _), job in zip(pending, jobs, strict=True):
            delayed.promote(job)

    def process(self, calls: list[Call]) -> list[Job]:
        """Record and launch the calls: one run each, one sweep when there are several."""
        ckpt = [checkpoint_method(fn) is not None for fn, _, _ in calls]
        calls = [
            (Resumable(fn) if c else fn, a, k) for (fn, a, k), c in zip(calls, ckpt, strict=True)
        ]
        ex = self.runrec_executor(checkpointable=any(ckpt))
        _, extras = P.translate(self.cluster, self.parameters, python=self.python)
        if "%" not in str(self.folder):
            self.folder.mkdir(parents=True, exist_ok=True)
        specs = ex.prepare_calls(
            calls, extras.get("inputs"), extras.get("tags"), sweep=len(calls) > 1
        )
        if self.cluster == "debug":
            return [DebugJob(RunHandle(ex.store, s.run_id, ex.backend)) for s in specs]
        return [Job(h, self.cluster) for h in ex.launch(specs)]


class AutoExecutor(Executor):
    """submitit's ``AutoExecutor``: ``cluster=None`` picks Slurm where ``srun`` is on PATH,
    else local (as submitit), unless ``RUNREC_SUBMITIT_CLUSTER`` names one. Constructor
    keywords: ``slurm_python``/``local_python``, ``slurm_max_num_timeout`` and the like (only
    their defaults), ``runrec_store``."""

    def __init__(
        self,
        folder: str | os.PathLike[str],
        cluster: str | None = None,
        *,
        runrec_store: Store | str | os.PathLike[str] | None = None,
        **kwargs: Any,
    ) -> None:
        chosen = cluster or self.which()
        python = None
        for key, val in kwargs.items():
            prefix, _, arg = key.partition("_")
            if key in P.REFUSED:
                P.check_value(key, val)
            elif prefix in ("slurm", "local") and arg in ("max_num_timeout", "max_pickle_size_gb"):
                P.check_value(arg, val)
            elif prefix in ("slurm", "local") and arg == "python":
                python = val if prefix == chosen else python
            else:
                raise P.UnsupportedParameter(
                    f"AutoExecutor does not take {key}={val!r}: give executor parameters to "
                    "update_parameters(), constructor ones prefixed by the cluster "
                    "(slurm_python, local_python, slurm_max_num_timeout) or runrec_store."
                )
        super().__init__(folder, chosen, python=python, runrec_store=runrec_store)

    @staticmethod
    def which() -> str:
        """The cluster ``cluster=None`` means here."""
        forced = os.environ.get(CLUSTER_ENV, "").strip()
        if forced:
            return forced
        return "slurm" if shutil.which("srun") else "local"


class _PicklingExecutor(Executor):
    """SlurmExecutor and LocalExecutor: submitit's constructor (folder, max_num_timeout,
    max_pickle_size_gb, python) and their own unprefixed parameter names."""

    def __init__(
        self,
        folder: str | os.PathLike[str],
        max_num_timeout: int = 3,
        max_pickle_size_gb: float = 1.0,
        python: str | None = None,
        *,
        runrec_store: Store | str | os.PathLike[str] | None = None,
    ) -> None:
        P.check_value("max_num_timeout", max_num_timeout)
        P.check_value("max_pickle_size_gb", max_pickle_size_gb)
        super().__init__(folder, self.kind, python=python, runrec_store=runrec_store)


class SlurmExecutor(_PicklingExecutor):
    """submitit's ``SlurmExecutor``: sbatch names (``time``, ``mem``, ``partition``,
    ``job_name``, ``array_parallelism``, ``additional_parameters``, ``setup``...)."""

    kind = "slurm"


class LocalExecutor(_PicklingExecutor):
    """submitit's ``LocalExecutor``: ``timeout_min``, ``gpus_per_node``, ``nodes`` (1) ..."""

    kind = "local"


class DebugExecutor(Executor):
    """submitit's ``DebugExecutor``: each job runs in this process when its result (or state)
    is first asked for; recorded like any other run (backend ``local``, scheduler
    ``in_process``)."""

    kind = "debug"

    def __init__(
        self,
        folder: str | os.PathLike[str],
        *,
        runrec_store: Store | str | os.PathLike[str] | None = None,
    ) -> None:
        super().__init__(folder, "debug", runrec_store=runrec_store)
