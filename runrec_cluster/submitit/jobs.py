"""submitit's ``Job`` over a runrec run: ids, state words, results, errors, logs.

``Job`` wraps a ``RunHandle``: ``run_id`` is the run's id, ``job_id`` the scheduler's (Slurm:
``123`` or ``123_4``; local and debug: the run id). ``state`` answers in submitit's words
(Slurm's), from the record. ``result()`` re-raises a failure as ``FailedJobError`` (the
function raised; the recorded traceback) or ``UncompletedJobError`` (no result: time limit,
cancel, out of memory...). ``DebugJob`` runs its call in this process on first use, as
submitit's ``DebugJob`` does.
"""

from __future__ import annotations

import os
import pdb
import socket
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from runrec_cluster.api import RunHandle, backend_for, forget_check_times
from runrec_cluster.backends.slurm_end import run_slurm
from runrec_cluster.errors import BackendError
from runrec_cluster.job.execute import execute
from runrec_cluster.record import FailureCause, RunRecord, RunState
from runrec_cluster.submitit.errors import FailedJobError, UncompletedJobError

# runrec state (and cause) -> submitit's (Slurm's) state word
STATE_WORDS = {
    RunState.SUBMITTED: "PENDING",
    RunState.RUNNING: "RUNNING",
    RunState.SUCCEEDED: "COMPLETED",
    RunState.CANCELLED: "CANCELLED",
    RunState.UNKNOWN: "UNKNOWN",
}
CAUSE_WORDS = {
    FailureCause.TIMEOUT: "TIMEOUT",
    FailureCause.OUT_OF_MEMORY: "OUT_OF_MEMORY",
    FailureCause.NODE_FAILURE: "NODE_FAIL",
    FailureCause.PREEMPTED: "PREEMPTED",
    FailureCause.CANCELLED: "CANCELLED",
}
# squeue's words for a job still in the queue after its run's attempt ended: it may be
# requeued (a preempted job is COMPLETING, then PENDING again); asked until it has left
QUEUED = frozenset(
    {
        "PENDING",
        "CONFIGURING",
        "RUNNING",
        "COMPLETING",
        "REQUEUED",
        "REQUEUE_HOLD",
        "REQUEUE_FED",
        "SUSPENDED",
    }
)
REQUEUE_POLL_S = 2.0
# a failure with one of these causes is the code's own: FailedJobError (else Uncompleted)
CODE_CAUSES = (FailureCause.CODE_ERROR, FailureCause.EXIT_CODE)


def state_word(rec: RunRecord) -> str:
    """submitit's state word for a record (FAILED with a cause: Slurm's word for it)."""
    if rec.state == RunState.FAILED:
        cause = rec.failure.cause if rec.failure else None
        return CAUSE_WORDS.get(cause, "FAILED") if cause else "FAILED"
    return STATE_WORDS.get(rec.state, "UNKNOWN")


@dataclass(frozen=True)
class JobPaths:
    """Where a job's files are: its log directory in the store (local) or submitit's folder
    (Slurm), the stdout and stderr logs, the sbatch script (Slurm)."""

    folder: Path
    stdout: Path
    stderr: Path
    submission_file: Path | None = None


class Job:
    """A submitted job (one runrec run). See the module docstring."""

    def __init__(self, handle: RunHandle, cluster: str) -> None:
        self.handle = handle
        self.run_id = handle.run_id
        self.cluster = cluster
        self._sched: dict[str, Any] | None = None
        self._log_dir = handle.store.log_dir(handle.run_id)

    def __repr__(self) -> str:
        return f'{type(self).__name__}<job_id={self.job_id}, run_id={self.run_id}, cluster="{self.cluster}">'

    # -- ids and files -----------------------------------------------------------------------

    def _scheduler(self) -> dict[str, Any]:
        if self._sched is None or ("job_id" not in self._sched and self.cluster == "slurm"):
            rec = self.handle.store.load(self.run_id)
            self._sched = dict(rec.execution.scheduler) if rec.execution else {}
        return self._sched

    @property
    def job_id(self) -> str:
        """The scheduler's job id (Slurm: ``123``, ``123_4`` in an array); else the run id."""
        jid = self._scheduler().get("job_id") if self.cluster == "slurm" else None
        return str(jid) if jid else self.run_id

    @property
    def num_tasks(self) -> int:
        return 1

    def task(self, task_id: int) -> Job:
        if task_id != 0:
            raise ValueError(f"job {self.job_id} has one task (0), not task {task_id}.")
        return self

    @property
    def paths(self) -> JobPaths:
        s = self._scheduler()
        if self.cluster == "slurm" and s.get("stdout"):
            folder = Path(s["submitit_folder"])
            scripts = sorted(folder.glob("*_submission.sh"))
            return JobPaths(
                folder, Path(s["stdout"]), Path(s["stderr"]), scripts[0] if scripts else None
            )
        d = Path(self._log_dir)
        return JobPaths(d, d / "stdout.txt", d / "stderr.txt")

    def _read(self, path: Path) -> str | None:
        try:
            return path.read_text(errors="replace")
        except OSError:
            pass
        if path.parent == Path(self._log_dir):  # the store's logs of a finished run may be packed
            data = self.handle.store.read_log(self.run_id, path.name)
            if data is not None:
                return data.decode(errors="replace")
        return None

    def stdout(self) -> str | None:
        """The job's stdout log (None while it does not exist)."""
        return self._read(self.paths.stdout)

    def stderr(self) -> str | None:
        """The job's stderr log (None while it does not exist)."""
        return self._read(self.paths.stderr)

    # -- state -------------------------------------------------------------------------------

    def record(self) -> RunRecord:
        """The run's runrec record, as it is now."""
        return self.handle.record()

    @property
    def state(self) -> str:
        return state_word(self.record())

    def get_info(self, mode: str = "force") -> dict[str, str]:
        return {"State": self.state, "JobID": self.job_id, "RunID": self.run_id}

    def requeued(self, rec: RunRecord) -> bool:
        """A Slurm run whose attempt ended without success while Slurm keeps its job in the
        queue (a preemption or a checkpoint requeue): the next attempt of the same run comes,
        and submitit's job would wait for it too."""
        if self.cluster != "slurm" or rec.state == RunState.SUCCEEDED:
            return False
        try:
            out = run_slurm(["squeue", "-h", "-j", self.job_id, "-o", "%T"], timeout=30)
        except BackendError:
            return False  # gone from the queue (squeue refuses an unknown id) or not answering
        return any(w in QUEUED for w in out.split())

    def done(self, force_check: bool = False) -> bool:
        if force_check:
            forget_check_times()
        rec = self.handle.record()
        return rec.state.is_terminal() and not self.requeued(rec)

    def final_record(self) -> RunRecord:
        """Wait until the run has ended for good (past any requeue); its record."""
        while True:
            rec = self.handle.wait()
            if not self.requeued(rec):
                return rec
            time.sleep(REQUEUE_POLL_S)

    def wait(self) -> None:
        self.final_record()

    def cancel(self, check: bool = True) -> None:
        self.handle.cancel()

    # -- outcome -----------------------------------------------------------------------------

    def _error(self, rec: RunRecord) -> FailedJobError | UncompletedJobError | None:
        if rec.state == RunState.SUCCEEDED:
            return None
        f = rec.failure
        paths = self.paths
        where = (
            f"You can check full logs with 'job.stderr()' and 'job.stdout()' or at paths:\n"
            f"  - {paths.stderr}\n  - {paths.stdout}\n"
            f"The run's record: runrec show {self.run_id}"
        )
        if f is not None and f.cause in CODE_CAUSES:
            trace = f.traceback or f"{f.type}: {f.message}"
            return FailedJobError(
                f"Job (task=0) failed during processing with trace:\n"
                f"----------------------\n{trace}\n----------------------\n{where}",
                run_id=self.run_id,
                failure=f,
            )
        why = f"{f.cause.value}: {f.message}" if f is not None else rec.state.value
        return UncompletedJobError(
            f"Job {self.job_id} (run {self.run_id}) has not produced any output "
            f"(state: {state_word(rec)}; {why}).\n{where}",
            run_id=self.run_id,
            failure=f,
        )

    def results(self) -> list[Any]:
        """``[result]``: waits, then the function's return value; raises its failure. (A
        multi-node job: rank 0's result, the one runrec records.)"""
        err = self._error(self.final_record())
        if err is not None:
            raise err
        return [self.handle.result()]

    def result(self) -> Any:
        return self.results()[0]

    def exception(self) -> FailedJobError | UncompletedJobError | None:
        """Waits; the job's error (not raised), or None when it succeeded."""
        return self._error(self.final_record())


class DebugJob(Job):
    """A job of the debug cluster: its call runs in this process, once, when its result, state
    or outcome is first asked for (breakpoints work; post-mortem pdb on a terminal)."""

    def __init__(self, handle: RunHandle, cluster: str = "debug") -> None:
        super().__init__(handle, cluster)
        self._ran = False
        self._environ = dict(os.environ)

    def run_here(self) -> None:
        if self._ran:
            return
        self._ran = True
        saved = dict(os.environ)
        os.environ.clear()
        os.environ.update(self._environ)  # as submitit: the environment of the submit
        try:
            execute(
                self.handle.store.root,
                self.run_id,
                scheduler={"in_process": {"pid": os.getpid(), "host": socket.gethostname()}},
                enforce_timeout=False,
            )
        except Exception as exc:  # recorded by the job; result() raises it
            print(f"{type(exc).__name__}: {exc}", file=sys.stderr)
            if sys.stdin is not None and sys.stdin.isatty():
                pdb.post_mortem(exc.__traceback__)
        finally:
            os.environ.clear()
            os.environ.update(saved)

    def done(self, force_check: bool = False) -> bool:
        self.run_here()
        return super().done(force_check)

    def wait(self) -> None:
        self.run_here()

    def results(self) -> list[Any]:
        self.run_here()
        return super().results()

    def exception(self) -> FailedJobError | UncompletedJobError | None:
        self.run_here()
        return super().exception()

    def cancel(self, check: bool = True) -> None:
        """Before it ran: it never will, and the record says cancelled (as submitit's)."""
        if self._ran:
            return
        self._ran = True
        rec = self.handle.store.load(self.run_id)
        backend = backend_for(self.handle.store, rec)
        if backend is not None:
            backend.record_cancel(rec, "a debug job cancelled before it ran")
