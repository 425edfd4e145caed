"""What Ray says about a task, translated: the one table from Ray's words (task states and
error types) to runrec states and causes, and the verdicts built on it.

Pure: no ``ray`` import, so the table and the rules are unit-tested without Ray installed.
``error_word`` reads an exception by its class names only.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime
from typing import Any

from runrec_cluster.backends.base import unknown_state_patch
from runrec_cluster.record import Failure, FailureCause, RunRecord, RunState, end_patch

# Everything Ray can say about a task, mapped to (our state, cause); None: not over yet.
# Task states come from the state API (TaskStatus); a failed task's word is its error_type
# (ErrorType), and an exception held by the submitter is first named by its error_type
# (EXCEPTION_WORDS). Unknown words map to UNKNOWN: never guess.
RAY_OUTCOMES: dict[str, tuple[RunState, FailureCause] | None] = {
    "NIL": None,
    "PENDING_ARGS_AVAIL": None,
    "PENDING_NODE_ASSIGNMENT": None,
    "PENDING_OBJ_STORE_MEM_AVAIL": None,
    "PENDING_ARGS_FETCH": None,
    "SUBMITTED_TO_WORKER": None,
    "GETTING_AND_PINNING_ARGS": None,
    "RUNNING": None,
    "RUNNING_IN_RAY_GET": None,
    "RUNNING_IN_RAY_WAIT": None,
    # the task returned, yet the job did not finish its record
    "FINISHED": (RunState.FAILED, FailureCause.INFRASTRUCTURE),
    "WORKER_DIED": (RunState.FAILED, FailureCause.WORKER_CRASHED),
    "OUT_OF_MEMORY": (RunState.FAILED, FailureCause.OUT_OF_MEMORY),
    "TASK_CANCELLED": (RunState.CANCELLED, FailureCause.CANCELLED),
    "NODE_DIED": (RunState.FAILED, FailureCause.NODE_FAILURE),
    "LOCAL_RAYLET_DIED": (RunState.FAILED, FailureCause.NODE_FAILURE),
    "ACTOR_DIED": (RunState.FAILED, FailureCause.NODE_FAILURE),
    # the task raised before the job recorded an end (store not reachable from the node...)
    "TASK_EXECUTION_EXCEPTION": (RunState.FAILED, FailureCause.INFRASTRUCTURE),
    "RUNTIME_ENV_SETUP_FAILED": (RunState.FAILED, FailureCause.INFRASTRUCTURE),
    "WORKER_STARTUP_FAILED": (RunState.FAILED, FailureCause.INFRASTRUCTURE),
    "TASK_UNSCHEDULABLE_ERROR": (RunState.FAILED, FailureCause.INFRASTRUCTURE),
    "TASK_PLACEMENT_GROUP_REMOVED": (RunState.FAILED, FailureCause.INFRASTRUCTURE),
    "DEPENDENCY_RESOLUTION_FAILED": (RunState.FAILED, FailureCause.INFRASTRUCTURE),
    "OUT_OF_DISK_ERROR": (RunState.FAILED, FailureCause.INFRASTRUCTURE),
    "OWNER_DIED": (RunState.FAILED, FailureCause.KILLED),
}

# ray.exceptions class name -> the error_type the state API gives for the same failure
EXCEPTION_WORDS = {
    "WorkerCrashedError": "WORKER_DIED",
    "OutOfMemoryError": "OUT_OF_MEMORY",
    "TaskCancelledError": "TASK_CANCELLED",
    "NodeDiedError": "NODE_DIED",
    "LocalRayletDiedError": "LOCAL_RAYLET_DIED",
    "ActorDiedError": "ACTOR_DIED",
    "RayTaskError": "TASK_EXECUTION_EXCEPTION",
    "RuntimeEnvSetupError": "RUNTIME_ENV_SETUP_FAILED",
    "TaskUnschedulableError": "TASK_UNSCHEDULABLE_ERROR",
    "TaskPlacementGroupRemoved": "TASK_PLACEMENT_GROUP_REMOVED",
    "OutOfDiskError": "OUT_OF_DISK_ERROR",
    "OwnerDiedError": "OWNER_DIED",
}
# failures Ray retries while ray_max_retries allows (a worker or node lost, an OOM kill)
RETRIED_BY_RAY = frozenset({"WORKER_DIED", "OUT_OF_MEMORY", "NODE_DIED", "LOCAL_RAYLET_DIED"})

# why a task in a pending state has not started, for wait(timeout=...) messages
PENDING_WHY = {
    "PENDING_ARGS_AVAIL": "waiting for its arguments",
    "PENDING_ARGS_FETCH": "fetching its arguments",
    "PENDING_OBJ_STORE_MEM_AVAIL": "waiting for object store memory",
    "SUBMITTED_TO_WORKER": "starting on a worker (worker start or runtime_env setup)",
    "GETTING_AND_PINNING_ARGS": "getting its arguments",
    "NIL": "not yet known to the scheduler",
}

DRIVER_GRACE_S = 5.0  # task events of a finished driver may lag behind its end
DRIVER_SLACK_S = 2.0  # Ray stamps the tasks it fails with a driver a little before the job's end


def error_word(exc: BaseException) -> str:
    """The state API's error_type for an exception ``ray.get`` raised (the class name when
    Ray has no error_type for it, which then maps to UNKNOWN)."""
    for cls in type(exc).__mro__:
        word = EXCEPTION_WORDS.get(cls.__name__)
        if word:
            return word
    return type(exc).__name__


def verdict(
    rec: RunRecord,
    word: str,
    message: str,
    *,
    source: str,
    attempt: int | None = None,
    ended_at: datetime | None = None,
    traceback: str = "",
) -> dict[str, Any] | None:
    """A patch for a run whose Ray task ended (``word``: a task state or an error_type) without
    the job finishing its record; None when Ray says it is not over."""
    if word not in RAY_OUTCOMES:
        return unknown_state_patch(
            rec,
            source,
            f"Ray reports {word!r} for this run's task, which runrec does not know; left as "
            f"unknown ({clip(message, 300)})",
        )
    mapped = RAY_OUTCOMES[word]
    if mapped is None:
        return None
    state, cause = mapped
    if word == "FINISHED":
        message = (
            "Ray says the task finished, but the job did not finish its record (a lost store "
            f"write?). {message}"
        )
    failure = Failure(cause=cause, type=word, message=message, traceback=traceback, source=source)
    patch = end_patch(failure, source=source, state=state, ended_at=ended_at)
    patch["execution"] = {"scheduler": {"ray_outcome": word}}
    if attempt is not None:
        patch["attempt"] = attempt
    return patch


def task_verdict(rec: RunRecord, t: Any, driver: Any) -> dict[str, Any] | None:
    """A patch from the state API's view of the task (its newest attempt: a TaskState) and of
    its driver job (a JobDetails, or None); None while Ray is not done with the run."""
    state = str(t.state)
    word = state if state != "FAILED" else str(t.error_type or "FAILED")
    attempt = int(t.attempt_number or 0)
    ended = ms_time(getattr(t, "end_time_ms", None))
    driver_end = ms_time(getattr(driver, "end_time", None)) if driver is not None else None
    note = ""
    if driver_end is not None:
        note = (
            f" (its driver, Ray job {driver.job_id}, ended at "
            f"{driver_end.isoformat(timespec='seconds')})"
        )
        # The owner died: Ray ends a driver's tasks with it, and 15 s later marks those
        # still pending WORKER_DIED. Say so, with Ray's word for it.
        if word in RAY_OUTCOMES and RAY_OUTCOMES[word] is None:
            if (datetime.now(UTC) - driver_end).total_seconds() < DRIVER_GRACE_S:
                return None  # its last events may still be on their way
            word, ended = "OWNER_DIED", driver_end
        elif word == "WORKER_DIED" and (
            rec.process is None  # it never ran: no worker of its own could die
            or (ended is not None and (driver_end - ended).total_seconds() < DRIVER_SLACK_S)
        ):
            word = "OWNER_DIED"
    elif word in RAY_OUTCOMES and RAY_OUTCOMES[word] is None:
        return None  # still pending or running
    if word in RETRIED_BY_RAY:
        opts = rec.execution.options if rec.execution else {}
        retries = int(opts.get("ray_max_retries", 0) or 0)
        if retries < 0 or attempt < retries:
            return None  # Ray starts another attempt of the same run
    where = f" on node {t.node_id}" if getattr(t, "node_id", None) else ""
    said = f"{state}/{t.error_type}" if state == "FAILED" else state
    message = f"Ray task {t.task_id} attempt {attempt}: {said}{where}{note}"
    if word == "OWNER_DIED":
        message += "; Ray ends a driver's tasks when the driver exits"
    detail = plain(getattr(t, "error_message", None) or "").strip()
    if detail:
        message += f": {clip(detail)}"
    return verdict(rec, word, message, source="scheduler", attempt=attempt + 1, ended_at=ended)


def lost_session_verdict(
    rec: RunRecord, sch: dict[str, Any], session_now: str
) -> dict[str, Any] | None:
    """The task is unknown to the cluster. Only when the cluster was restarted since (another
    session) is that an answer: the task cannot be running there."""
    then = sch.get("session_name")
    if not then or not session_now or then == session_now:
        return None  # not reported yet, or evicted from the state API: no verdict
    failure = Failure(
        cause=FailureCause.INFRASTRUCTURE,
        type="ClusterRestarted",
        message=(
            f"the Ray cluster this run was submitted to (session {then}) is gone; the cluster at "
            f"that address now runs session {session_now}, which does not know task "
            f"{sch.get('task_id')}"
        ),
        source="inferred",
    )
    return end_patch(failure, source="inferred")


def ms_time(ms: Any) -> datetime | None:
    """Ray's milliseconds since the epoch as a UTC time; None when absent or not a number."""
    try:
        return datetime.fromtimestamp(int(ms) / 1000, UTC) if ms else None
    except (TypeError, ValueError, OverflowError):
        return None


def plain(text: str) -> str:
    """Without the terminal colour codes Ray puts in its error texts."""
    return re.sub(r"\x1b\[[0-9;]*m", "", text)


def clip(text: str, n: int = 2000) -> str:
    """At most ``n`` characters, "..." marking a cut."""
    return text if len(text) <= n else text[: n - 3] + "..."


# Ray Jobs statuses (JobStatus) of a runrec driver job: alive, or over
JOB_ALIVE = frozenset({"PENDING", "RUNNING"})
JOB_OVER = frozenset({"STOPPED", "SUCCEEDED", "FAILED"})


def job_status(job: Any) -> str:
    """A Ray Jobs status (a JobStatus enum or its text) as its plain word, e.g. "RUNNING"."""
    status = getattr(job, "status", job)
    return str(getattr(status, "value", status) or "").rsplit(".", 1)[-1]


def driver_job_verdict(rec: RunRecord, job: Any) -> dict[str, Any] | None:
    """A patch for a detached run whose runrec driver job (Ray Jobs: ``job``, a JobDetails)
    ended before it launched the run's task; None while the driver is alive (it will launch
    the task and give the verdict itself)."""
    status = job_status(job)
    if status in JOB_ALIVE:
        return None
    if status not in JOB_OVER:
        return unknown_state_patch(
            rec,
            "scheduler",
            f"the runrec driver (Ray job {getattr(job, 'submission_id', '?')}) has status "
            f"{status!r}, which runrec does not know; left as unknown",
        )
    sid = getattr(job, "submission_id", "") or "?"
    said = plain(str(getattr(job, "message", "") or "")).strip()
    cause = FailureCause.KILLED if status == "STOPPED" else FailureCause.INFRASTRUCTURE
    message = (
        f"the runrec driver (Ray job {sid}) ended {status} before it launched this run's Ray "
        f"task" + (f": {clip(said, 500)}" if said else "") + f". Its log: `ray job logs {sid}`"
    )
    failure = Failure(
        cause=cause, type=f"Driver{status.title()}", message=message, source="scheduler"
    )
    ended = ms_time(getattr(job, "end_time", None))
    patch = end_patch(failure, source="scheduler", ended_at=ended)
    patch["execution"] = {"scheduler": {"ray_outcome": f"JOB_{status}"}}
    return patch
