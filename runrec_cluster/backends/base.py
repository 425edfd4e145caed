"""What every backend implements, and the logic they share (written once, here).

The common work of a submission (capture, launch record, handles) is done once in
``api.Executor``; a backend launches jobs (``launch``), cancels one (``cancel``) and, for runs
that ended without finishing their record, gives its verdict (``ask``). The base class owns
what every backend would otherwise repeat: which runs are worth asking about, the per-run rate
limit of scheduler questions, the "unknown state" patch, and the record of a cancel.

A backend declares its differences as class attributes (dask-jobqueue style) rather than
coding them in the shared path: ``name``, ``option_prefix``, ``known_options``,
``enforces_timeout``, ``check_interval_s``, ``asks_after_kill``.
"""

from __future__ import annotations

import abc
import logging
import time
from dataclasses import dataclass, field
from typing import Any, ClassVar

from runrec_cluster.capture.proc import current_user
from runrec_cluster.record import (
    Failure,
    FailureCause,
    Resources,
    RunRecord,
    RunState,
    end_patch,
    needs_verdict,
    to_patch,
)
from runrec_cluster.store import Store

log = logging.getLogger(__name__)

# (backend name, run id) -> when this process last asked the backend's scheduler about the run
_last_check: dict[tuple[str, str], float] = {}


def forget_checks() -> None:
    """Make the next check ask the schedulers now (``runrec reconcile``), not rate-limited."""
    _last_check.clear()


def unknown_state_patch(rec: RunRecord, source: str, warning: str) -> dict[str, Any] | None:
    """The patch for a backend word runrec does not know: state UNKNOWN with a warning (in the
    record, and logged) saying what the backend said, never a guess. None when the run is
    UNKNOWN already."""
    if rec.state == RunState.UNKNOWN:
        return None
    log.warning("run %s: %s", rec.run_id, warning)
    patch = to_patch(state=RunState.UNKNOWN, state_source=source)
    patch["warnings"] = [warning]
    return patch


@dataclass
class JobSpec:
    """One run to launch (a sweep passes several at once)."""

    run_id: str
    kind: str  # "function" | "command"
    cwd: str
    log_dir: str
    sweep_index: int | None = None
    env: dict[str, str] = field(default_factory=dict)


class Backend(abc.ABC):
    """A place runs execute. Subclasses implement ``launch`` and ``cancel``; those with a
    scheduler to ask about runs that died without finishing their record implement ``ask``."""

    name: ClassVar[str] = "base"
    # backend-only options start with this ("slurm_", "ray_", "local_")
    option_prefix: ClassVar[str] = ""
    known_options: ClassVar[frozenset[str]] = frozenset()
    # True when the scheduler kills a run at its time limit itself; False when the job's own
    # watchdog must (``job.execute(enforce_timeout=not enforces_timeout)``)
    enforces_timeout: ClassVar[bool] = False
    # at most one scheduler question per run per this many seconds in one process (0: no limit)
    check_interval_s: ClassVar[float] = 0.0
    # also ask about runs that ended KILLED without a cause (the scheduler may know why:
    # out of memory, time limit...); False: only about runs not ended yet
    asks_after_kill: ClassVar[bool] = False

    def __init__(
        self, store: Store, resources: Resources, options: dict[str, Any], hardware: Any = None
    ) -> None:
        self.store = store
        self.resources = resources
        self.options = options
        self.hardware = hardware

    # -- what each backend implements ------------------------------------------------------

    @abc.abstractmethod
    def launch(self, jobs: list[JobSpec]) -> list[dict[str, Any]]:
        """Start the jobs; return, per job, what the record keeps under execution.scheduler."""

    @abc.abstractmethod
    def cancel(self, rec: RunRecord) -> None:
        """Stop the run's job, then ``record_cancel`` it."""

    def ask(self, recs: list[RunRecord]) -> dict[str, dict[str, Any]]:
        """The backend's verdicts for runs worth asking about (already filtered and
        rate-limited): {run_id: patch} for those whose job is gone without finishing its record
        (killed, out of memory, node failure...). A backend with nothing to ask returns {}."""
        return {}

    def wants_verdict(self, rec: RunRecord) -> bool:
        """Whether ``rec`` is worth asking the backend about (see ``asks_after_kill``)."""
        if rec.execution is None:
            return False
        return needs_verdict(rec) if self.asks_after_kill else not rec.state.is_terminal()

    def held(self, rec: RunRecord) -> bool:
        """Whether this process itself holds the run's job (Ray: the ObjectRef it owns): such
        runs are checked by ``check_held``, cheaply and without the rate limit."""
        return False

    def check_held(self, recs: list[RunRecord]) -> dict[str, dict[str, Any]]:
        """Verdicts for runs this process holds (see ``held``)."""
        return {}

    def describe_pending(self, rec: RunRecord) -> str:
        """Why a submitted run has not started, for wait(timeout=...) messages."""
        return "it has not started yet"

    # -- written once ----------------------------------------------------------------------

    def check(self, rec: RunRecord) -> dict[str, Any] | None:
        """For a record that may need it: a patch with the backend's verdict when the job is
        gone without finishing its record, else None."""
        return self.check_many([rec]).get(rec.run_id)

    def check_many(self, recs: list[RunRecord]) -> dict[str, dict[str, Any]]:
        """``check`` for many records at once, {run_id: patch}: the runs this process holds
        first, then one question to the scheduler about the others that are due."""
        todo = [r for r in recs if self.wants_verdict(r)]
        held = [r for r in todo if self.held(r)]
        due = self._due([r for r in todo if not self.held(r)])
        out: dict[str, dict[str, Any]] = {}
        if held:
            out.update(self.check_held(held))
        if due:
            out.update(self.ask(due))
        return out

    def _due(self, recs: list[RunRecord]) -> list[RunRecord]:
        """The runs not asked about in the last ``check_interval_s`` seconds (stamped now)."""
        if self.check_interval_s <= 0:
            return recs
        now = time.monotonic()
        due = []
        for r in recs:
            key = (self.name, r.run_id)
            last = _last_check.get(key)
            if last is not None and now - last < self.check_interval_s:
                continue
            _last_check[key] = now
            due.append(r)
        return due

    def record_cancel(self, rec: RunRecord, how: str = "", by: str | None = None) -> None:
        """Record the run as cancelled by this user (or ``by``, who asked), now (a "cancel"
        version written by the backend). The same fields on every backend; a later verdict
        refines it only where the fold rules allow (the job's own end wins; see
        ``record.fold_patches``)."""
        failure = Failure(
            cause=FailureCause.CANCELLED,
            type="Cancelled",
            message="cancelled by request" + (f" ({how})" if how else ""),
            by=by or current_user(),
            source="backend",
        )
        self.store.write_version(
            rec.run_id,
            "cancel",
            end_patch(failure, source="backend", state=RunState.CANCELLED),
            role="backend",
        )
