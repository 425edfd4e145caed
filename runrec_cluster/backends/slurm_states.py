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
    "AllocTRES",
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


def attempt_rows(
    rows: list[dict[str, str]], attempt: int
) -> tuple[list[dict[str, str]], int] | None:
    """The rows of one attempt of a job, and its number. ``rows``: job lines, each followed by
    its steps, one job line per attempt known (``sacct -D``: every requeue leaves one, attempt
    1 first; pyslurm: the latest only, its ``Restarts`` saying which attempt it is).

    The record's attempt is judged, not blindly the last line. Only when a later attempt
    exists (the record's was requeued) and the record's own is gone or requeued (REQUEUED,
    REQUEUE_HOLD...) is the record behind (the later attempt never wrote its start): the
    latest attempt is judged, and the patch says which. None when accounting has not seen the
    record's attempt yet."""
    groups = _attempts(rows)
    if not groups:
        return None
    latest = max(groups)
    own = groups.get(attempt)
    if latest > attempt and (own is None or state_word(own[0]["State"]).startswith("REQUEUE")):
        return groups[latest], latest
    return (own, attempt) if own is not None else None


def job_lines(rows: list[dict[str, str]]) -> int:
    """How many attempts the rows say the job has had (requeues + 1; 0: no job line)."""
    return max(_attempts(rows), default=0)


def _attempts(rows: list[dict[str, str]]) -> dict[int, list[dict[str, str]]]:
    """Attempt number -> its job line and steps."""
    groups: dict[int, list[dict[str, str]]] = {}
    current: list[dict[str, str]] | None = None
    for r in rows:
        if "." not in r["JobID"]:
            restarts = r.get("Restarts", "")
            n = int(restarts) + 1 if restarts.isdigit() else len(groups) + 1
            current = groups[n] = [r]
        elif current is not None:
            current.append(r)
    return groups


def verdict(
    rec: RunRecord,
    rows: list[dict[str, str]],
    *,
    final: bool = False,
    via: str = "sacct",
    attempt: int | None = None,
) -> dict[str, Any] | None:
    """A patch for a run whose Slurm job ended without the job finishing its record.

    ``rows``: the job line and its steps (JobID, State, ExitCode, NodeList, End, AllocTRES),
    one such group per attempt (``attempt_rows``: the record's attempt is judged, ``attempt``
    when the caller knows better). One rule: the run gets what ``SACCT_STATES`` says of the job
    line, except that an out-of-memory step makes it OUT_OF_MEMORY (under submitit the function
    runs in step .0, and an out-of-memory kill shows only there: the job line says FAILED).
    None while Slurm is not done (or still settling), and for a run already ended when Slurm
    knows no more specific cause. ``final``: the caller knows the job is ending (the batch
    script's own end, ``slurm_end``): steps still running and a missing end time do not make it
    wait. ``via``: what the rows were read through ("sacct", "pyslurm"), said in the failure.
    """
    picked = attempt_rows(rows, attempt or rec.attempt)
    if picked is None:
        return None
    requeues = job_lines(rows) - 1
    rows, judged = picked
    main = rows[0]
    state = state_word(main["State"])
    if state not in SACCT_STATES:
        return unknown_state(rec, main["State"])
    steps = rows[1:]
    mapped = SACCT_STATES[state]
    if mapped is None or (not final and _settling(main, steps)):
        return None
    oom_step = next((s for s in steps if s["State"].startswith("OUT_OF_MEMORY")), None)
    our_state, cause = (SACCT_STATES["OUT_OF_MEMORY"] if oom_step is not None else None) or mapped
    if rec.state.is_terminal() and judged == rec.attempt and cause not in REFINES_KILLED:
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
        via=via,
    )
    patch = to_patch(
        state=our_state,
        state_source="scheduler",
        failure=failure,
        ended_at=parse_time(main["End"]) or datetime.now(UTC),
        attempt=judged,
    )
    patch["execution"] = {
        "scheduler": {
            "sacct_state": main["State"],
            "nodelist": main["NodeList"],
            "requeues": requeues,
        }
    }
    alloc = allocation(main.get("AllocTRES", ""), main["NodeList"], via)
    if alloc:
        patch["execution"]["allocated"] = alloc
    return patch


def parse_tres(tres: str) -> dict[str, int]:
    """Slurm's TRES words ("cpu=2,mem=512M,node=1,billing=2,gres/gpu=1") as the numbers runrec
    records: cpus, mem_mb (MiB), gpus, nodes; a TRES not said is left out (never guessed)."""
    out: dict[str, int] = {}
    for item in tres.split(","):
        key, eq, val = item.strip().partition("=")
        if not eq or not val:
            continue
        try:
            if key == "cpu":
                out["cpus"] = int(val)
            elif key == "node":
                out["nodes"] = int(val)
            elif key == "gres/gpu":
                out["gpus"] = int(val)
            elif key == "mem":
                out["mem_mb"] = mem_mb(val)
        except ValueError:
            continue
    return out


_MEM_UNITS = {"K": 1 / 1024, "M": 1, "G": 1024, "T": 1024 * 1024, "P": 1024**3}


def mem_mb(val: str) -> int:
    """A Slurm memory amount ("512M", "2G", "1.50G", "4096": MiB) in MiB; ValueError if not."""
    unit = val[-1:].upper()
    if unit in _MEM_UNITS:
        return round(float(val[:-1]) * _MEM_UNITS[unit])
    return round(float(val))


def allocation(tres: str, nodelist: str, source: str) -> dict[str, Any] | None:
    """The ``Execution.allocated`` patch from a job's allocated TRES and nodes; None when the
    scheduler allocated nothing yet (a job that never started) or said nothing."""
    numbers = parse_tres(tres)
    if not numbers:
        return None
    nodes = nodelist if nodelist and nodelist not in ("None assigned", "(null)") else ""
    return {**numbers, "nodelist": nodes, "tres": tres, "source": source}


def end_verdict(
    rec: RunRecord,
    rows: list[dict[str, str]],
    *,
    job_id: str,
    reason: str = "",
    srun_status: int | None = None,
    nodelist: str = "",
    now: datetime | None = None,
    via: str = "sacct",
    reason_via: str = "scontrol",
    attempt: int | None = None,
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
    ``via``: what the rows were read through; ``reason_via``: the reason; ``attempt``: the
    attempt that is ending (the job's SLURM_RESTART_COUNT + 1; default: the record's).
    """
    at = (now or datetime.now(UTC)).astimezone().replace(tzinfo=None).isoformat()
    attempt = attempt or rec.attempt
    picked = attempt_rows(rows, attempt)
    main, steps = (picked[0][0], picked[0][1:]) if picked else (None, [])
    if main is not None and SACCT_STATES.get(state_word(main["State"]), None) is not None:
        return verdict(rec, rows, final=True, via=via, attempt=attempt)
    synthetic: dict[str, str] | None = None
    rows_via = via
    if reason in ("TimeLimit", "DeadLine"):
        state = "TIMEOUT" if reason == "TimeLimit" else "DEADLINE"
        synthetic = {"State": state, "ExitCode": "0:0"}
        via = reason_via
    elif srun_status is not None:
        synthetic = {
            "State": "FAILED" if srun_status else "COMPLETED",
            "ExitCode": f"{srun_status}:0",
        }
        # the job line from the exit status of the job's srun, seen by the batch script; an
        # out-of-memory step (the cause, then) from the rows
        oom = any(r["State"].startswith("OUT_OF_MEMORY") for r in steps)
        via = rows_via if oom else "srun"
    if synthetic is None:
        return None
    row = {
        "JobID": job_id,
        "NodeList": nodelist,
        "End": at,
        "Reason": reason,
        "AllocTRES": main.get("AllocTRES", "") if main else "",
        **synthetic,
    }
    patch = verdict(rec, [row, *steps], final=True, via=via, attempt=1)
    if patch is not None:  # not sacct's word: what the job's end script concluded
        patch["execution"]["scheduler"].pop("sacct_state", None)
        patch["attempt"] = attempt
        patch["execution"]["scheduler"]["requeues"] = max(job_lines(rows) - 1, attempt - 1)
        if "allocated" in patch["execution"]:
            patch["execution"]["allocated"]["source"] = rows_via
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
