"""What sacct says, translated: every Slurm job state mapped to a runrec state and cause, and
the verdict for a run whose Slurm job ended without the job finishing its record.

Pure (no submitit, no subprocess): ``verdict`` takes sacct rows as ``SlurmBackend.sacct``
returns them, so the table and the rules are unit-tested without a cluster.
"""

from __future__ import annotations

import pwd
from datetime import UTC, datetime
from typing import Any

from runrec_cluster.backends.base import unknown_state_patch
from runrec_cluster.record import Failure, FailureCause, RunRecord, RunState, to_patch

# Every job state of sacct (Slurm 22.05, `man sacct`, JOB STATE CODES) mapped to (our state,
# cause); None: not over yet, leave the run alone. A state not in the table maps to UNKNOWN
# with a warning: never guess.
SACCT_STATES: dict[str, tuple[RunState, FailureCause] | None] = {
    "PENDING": None,  # waiting for resources
    "CONFIGURING": None,  # allocated, nodes booting
    "RUNNING": None,
    "COMPLETING": None,  # ending; some processes may still be active
    "SIGNALING": None,  # being signalled
    "STAGE_OUT": None,  # staging out data (burst buffer)
    "SUSPENDED": None,  # resources released, may resume
    "STOPPED": None,  # SIGSTOP: resources kept, may resume
    "RESIZING": None,  # changing size
    "REQUEUED": None,  # requeued: a new attempt follows (submitit or --requeue)
    "REQUEUE_FED": None,  # requeued by a federation
    "REQUEUE_HOLD": None,  # requeued and held
    "RESV_DEL_HOLD": None,  # held: its reservation was deleted
    # the job ended well, yet it never wrote its end: say so rather than invent success
    "COMPLETED": (RunState.FAILED, FailureCause.INFRASTRUCTURE),
    "FAILED": (RunState.FAILED, FailureCause.EXIT_CODE),  # non-zero exit code
    "OUT_OF_MEMORY": (RunState.FAILED, FailureCause.OUT_OF_MEMORY),
    "TIMEOUT": (RunState.FAILED, FailureCause.TIMEOUT),  # reached its time limit
    "DEADLINE": (RunState.FAILED, FailureCause.TIMEOUT),  # reached its --deadline
    "CANCELLED": (RunState.CANCELLED, FailureCause.CANCELLED),  # "CANCELLED by UID"
    "NODE_FAIL": (RunState.FAILED, FailureCause.NODE_FAILURE),
    "PREEMPTED": (RunState.FAILED, FailureCause.PREEMPTED),
    "BOOT_FAIL": (RunState.FAILED, FailureCause.INFRASTRUCTURE),  # a node failed to boot
    "REVOKED": (RunState.CANCELLED, FailureCause.CANCELLED),  # removed by a federation sibling
    "SPECIAL_EXIT": (RunState.FAILED, FailureCause.EXIT_CODE),  # requeued in a special state
}

# What a state word alone would misstate, said in full instead.
STATE_NOTES = {
    "COMPLETED": (
        "Slurm says COMPLETED, but the job did not finish its record (lost write or killed wrapper)"
    ),
}

# The causes that refine a bare KILLED the job or backend recorded (the fold lets a
# scheduler's verdict replace such an end only with one of these; record.fold_patches). For a
# run already ended, any other verdict would change nothing: it is not written.
REFINES_KILLED = frozenset(
    {
        FailureCause.OUT_OF_MEMORY,
        FailureCause.TIMEOUT,
        FailureCause.NODE_FAILURE,
        FailureCause.PREEMPTED,
        FailureCause.CANCELLED,
    }
)


# The sacct fields runrec reads (``sacct -n -P --delimiter=US --format=...``): ``parse_sacct``.
SACCT_FIELDS = (
    "JobID",
    "JobIDRaw",
    "State",
    "ExitCode",
    "DerivedExitCode",
    "Reason",
    "NodeList",
    "Start",
    "End",
    "Partition",
)
SACCT_DELIMITER = "\x1f"  # constraints such as "a|b" break --parsable2's "|"


def sacct_command(job_ids: list[str]) -> list[str]:
    """The sacct call for these jobs and their steps (``parse_sacct`` reads its output)."""
    return [
        "sacct",
        "-n",
        "-P",
        f"--delimiter={SACCT_DELIMITER}",
        "-D",
        "-j",
        ",".join(sorted(set(job_ids))),
        f"--format={','.join(SACCT_FIELDS)}",
    ]


def parse_sacct(out: str) -> dict[str, list[dict[str, str]]]:
    """sacct rows (job and steps) grouped by job id ("123", "123_4")."""
    rows: dict[str, list[dict[str, str]]] = {}
    for line in out.splitlines():
        vals = line.split(SACCT_DELIMITER)
        if len(vals) != len(SACCT_FIELDS):
            continue
        row = dict(zip(SACCT_FIELDS, vals, strict=True))
        rows.setdefault(row["JobID"].split(".")[0], []).append(row)
    return rows


def parse_scontrol(out: str) -> dict[str, str]:
    """``scontrol -o show job`` (one line of KEY=VALUE) as a dict; values with spaces (the
    command, the working directory) come out cut, which the keys runrec reads never are."""
    fields: dict[str, str] = {}
    for tok in out.split():
        key, eq, val = tok.partition("=")
        if eq and key not in fields:
            fields[key] = val
    return fields


def state_word(state: str) -> str:
    """The state of a sacct State field: "CANCELLED by 0" -> CANCELLED, "RUNNING+" -> RUNNING."""
    words = state.split()
    return words[0].rstrip("+") if words else ""


def verdict(
    rec: RunRecord, rows: list[dict[str, str]], *, final: bool = False
) -> dict[str, Any] | None:
    """A patch for a run whose Slurm job ended without the job finishing its record.

    ``rows``: the job line and its steps (JobID, State, ExitCode, NodeList, End). One rule: the
    run gets what ``SACCT_STATES`` says of the job line, except that an out-of-memory step
    makes it OUT_OF_MEMORY (under submitit the function runs in step .0, and an out-of-memory
    kill shows only there: the job line says FAILED). None while Slurm is not done (or still
    settling), and for a run already ended when Slurm knows no more specific cause.
    ``final``: the caller knows the job is ending (the batch script's own end, ``slurm_end``):
    steps still running and a missing end time do not make it wait.
    """
    main = next((r for r in rows if "." not in r["JobID"]), None)
    if main is None:
        return None
    state = state_word(main["State"])
    if state not in SACCT_STATES:
        return unknown_state(rec, main["State"])
    steps = [r for r in rows if "." in r["JobID"]]
    mapped = SACCT_STATES[state]
    if mapped is None or (not final and _settling(main, steps)):
        return None
    oom_step = next((s for s in steps if s["State"].startswith("OUT_OF_MEMORY")), None)
    our_state, cause = (SACCT_STATES["OUT_OF_MEMORY"] if oom_step is not None else None) or mapped
    if rec.state.is_terminal() and cause not in REFINES_KILLED:
        return None  # the job's own KILLED stands: the scheduler knows no more
    exit_code, sig = exit_status(main["ExitCode"])
    failure = Failure(
        cause=cause,
        type=state,
        message=_message(main, state, oom_step, exit_code, sig),
        exit_code=exit_code,
        signal=sig or None,
        by=cancelled_by(main["State"]),
        source="scheduler",
    )
    patch = to_patch(
        state=our_state,
        state_source="scheduler",
        failure=failure,
        ended_at=parse_time(main["End"]) or datetime.now(UTC),
    )
    patch["execution"] = {"scheduler": {"sacct_state": main["State"], "nodelist": main["NodeList"]}}
    return patch


def end_verdict(
    rec: RunRecord,
    rows: list[dict[str, str]],
    *,
    job_id: str,
    reason: str = "",
    srun_status: int | None = None,
    nodelist: str = "",
    now: datetime | None = None,
) -> dict[str, Any] | None:
    """The verdict seen from inside the job, at its end (``backends.slurm_end``): None while
    nothing is known yet (poll again), else the patch ``verdict`` gives.

    What the scheduler says there (measured on Slurm 22.05, docs/slurm.md): during the kill
    grace period of a cancel or a preemption sacct's job line is CANCELLED / PREEMPTED already;
    at a time limit sacct may still say RUNNING for a moment while ``scontrol`` gives
    ``Reason=TimeLimit`` (``reason``); after an out-of-memory kill of the srun step the job is
    still RUNNING (its batch script is ending) and only the step says OUT_OF_MEMORY.
    ``srun_status``: the exit status of the job's srun when it ended by itself (not signalled):
    the job line is then what sacct will say once the script exits (FAILED for a non-zero
    status, COMPLETED for 0), written now, with the steps as they are.
    """
    at = (now or datetime.now(UTC)).astimezone().replace(tzinfo=None).isoformat()
    main = next((r for r in rows if "." not in r["JobID"]), None)
    steps = [r for r in rows if "." in r["JobID"]]
    if main is not None and SACCT_STATES.get(state_word(main["State"]), None) is not None:
        return verdict(rec, rows, final=True)
    synthetic: dict[str, str] | None = None
    if reason in ("TimeLimit", "DeadLine"):
        state = "TIMEOUT" if reason == "TimeLimit" else "DEADLINE"
        synthetic = {"State": state, "ExitCode": "0:0"}
    elif srun_status is not None:
        synthetic = {
            "State": "FAILED" if srun_status else "COMPLETED",
            "ExitCode": f"{srun_status}:0",
        }
    if synthetic is None:
        return None
    row = {"JobID": job_id, "NodeList": nodelist, "End": at, "Reason": reason, **synthetic}
    patch = verdict(rec, [row, *steps], final=True)
    if patch is not None:  # not sacct's word: what the job's end script concluded
        patch["execution"]["scheduler"].pop("sacct_state", None)
    return patch


def unknown_state(rec: RunRecord, sacct_state: str) -> dict[str, Any] | None:
    """A state not in ``SACCT_STATES``: UNKNOWN, with a warning in the record and the log."""
    message = f"Slurm reports state {sacct_state!r}, which runrec does not know; left as unknown"
    return unknown_state_patch(rec, "scheduler", message)


def _settling(main: dict[str, str], steps: list[dict[str, str]]) -> bool:
    """Right after a job leaves the queue a few sacct fields still change: no end time yet, or
    a step not ended yet. Poll again."""
    if not main["End"] or main["End"] == "Unknown":
        return True
    return any(SACCT_STATES.get(state_word(s["State"]), ()) is None for s in steps)


def _message(
    main: dict[str, str],
    state: str,
    oom_step: dict[str, str] | None,
    exit_code: int | None,
    sig: int | None,
) -> str:
    if state in STATE_NOTES and oom_step is None:
        return STATE_NOTES[state]
    node = main["NodeList"]
    where = f" on {node}" if node and node != "None assigned" else ""
    msg = f"Slurm job {main['JobID']} ended {main['State']}{where}"
    if oom_step is not None:
        msg += f"; step {oom_step['JobID']} {oom_step['State']}"
    if exit_code or sig:
        msg += f" (exit code {exit_code}, signal {sig})"
    return msg


def exit_status(exit_code: str) -> tuple[int | None, int | None]:
    """sacct's ExitCode "CODE:SIGNAL" as (code, signal); (None, None) when absent."""
    if ":" not in exit_code:
        return None, None
    a, b = exit_code.split(":", 1)
    return int(a or 0), int(b or 0)


def cancelled_by(sacct_state: str) -> str | None:
    """Who cancelled: "CANCELLED by 1000" -> that uid's user name (the uid when unknown)."""
    words = sacct_state.split()
    if state_word(sacct_state) != "CANCELLED" or len(words) < 3 or words[1] != "by":
        return None
    try:
        return pwd.getpwuid(int(words[2])).pw_name
    except (KeyError, ValueError):
        return words[2]


def parse_time(s: str) -> datetime | None:
    """A sacct time (local, ISO) in UTC; None for "Unknown" or empty."""
    try:
        return datetime.fromisoformat(s).astimezone(UTC)
    except ValueError:
        return None
