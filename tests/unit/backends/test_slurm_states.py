"""The Slurm state table and verdict, without a cluster: every sacct state of Slurm 22.05, a
state not in the table, and the verdict cases seen on the real cluster (step .0 out of memory
under submitit, CANCELLED by a uid, exit codes)."""

from __future__ import annotations

import logging
import os
import pwd
from datetime import UTC, datetime, timedelta

import msgspec
import pytest

from runrec_cluster.backends.slurm import SlurmBackend
from runrec_cluster.backends.slurm_states import (
    REFINES_KILLED,
    SACCT_STATES,
    STATE_NOTES,
    cancelled_by,
    exit_status,
    state_word,
    verdict,
)
from runrec_cluster.record import (
    Execution,
    Failure,
    FailureCause,
    Resources,
    RunRecord,
    RunState,
    fold_patches,
)

F, C = RunState.FAILED, RunState.CANCELLED
# Every job state `man sacct` (22.05) lists, and what it must mean; None: not over yet.
EXPECTED = {
    "BOOT_FAIL": (F, FailureCause.INFRASTRUCTURE),
    "CANCELLED": (C, FailureCause.CANCELLED),
    "COMPLETED": (F, FailureCause.INFRASTRUCTURE),  # asked only when the job wrote no end
    "COMPLETING": None,
    "CONFIGURING": None,
    "DEADLINE": (F, FailureCause.TIMEOUT),
    "FAILED": (F, FailureCause.EXIT_CODE),
    "NODE_FAIL": (F, FailureCause.NODE_FAILURE),
    "OUT_OF_MEMORY": (F, FailureCause.OUT_OF_MEMORY),
    "PENDING": None,
    "PREEMPTED": (F, FailureCause.PREEMPTED),
    "REQUEUED": None,
    "REQUEUE_FED": None,
    "REQUEUE_HOLD": None,
    "RESIZING": None,
    "RESV_DEL_HOLD": None,
    "REVOKED": (C, FailureCause.CANCELLED),
    "RUNNING": None,
    "SIGNALING": None,
    "SPECIAL_EXIT": (F, FailureCause.EXIT_CODE),
    "STAGE_OUT": None,
    "STOPPED": None,
    "SUSPENDED": None,
    "TIMEOUT": (F, FailureCause.TIMEOUT),
}
END = "2024-05-01T12:00:00"


def rec(state=RunState.RUNNING, failure=None, ended_at=None):
    return RunRecord(
        run_id="r1",
        state=state,
        failure=failure,
        ended_at=ended_at,
        execution=Execution(backend="slurm", scheduler={"job_id": "100"}),
    )


def killed(source="job", ended_at=None):
    f = Failure(cause=FailureCause.KILLED, type="Signal", message="signal 9", source=source)
    return rec(RunState.FAILED, f, ended_at=ended_at or datetime.now(UTC))


def row(job_id="100", state="FAILED", exit_code="1:0", end=END, nodes="n1"):
    return {"JobID": job_id, "State": state, "ExitCode": exit_code, "NodeList": nodes, "End": end}


def test_the_table_has_every_sacct_state_of_slurm_22_05():
    assert set(SACCT_STATES) == set(EXPECTED)


@pytest.mark.parametrize("state", sorted(EXPECTED))
def test_every_state_maps_as_expected(state):
    assert SACCT_STATES[state] == EXPECTED[state]
    p = verdict(rec(), [row(state=state, exit_code="0:0")])
    if EXPECTED[state] is None:
        assert p is None, "not over: the run is left alone"
        return
    our_state, cause = EXPECTED[state]
    assert p["state"] == our_state.value and p["state_source"] == "scheduler"
    f = p["failure"]
    assert f["cause"] == cause.value and f["type"] == state and f["source"] == "scheduler"
    assert f["message"] == STATE_NOTES.get(state, f"Slurm job 100 ended {state} on n1")
    assert p["execution"] == {"scheduler": {"sacct_state": state, "nodelist": "n1", "requeues": 0}}
    assert f["via"] == "sacct" and p["attempt"] == 1
    assert p["ended_at"] == datetime.fromisoformat(END).astimezone(UTC)


@pytest.mark.parametrize("state", sorted(s for s in EXPECTED if EXPECTED[s]))
def test_a_run_the_job_ended_killed_gets_only_a_more_specific_cause(state):
    """The verdict on a bare KILLED is written exactly when the fold lets it replace that end."""
    before = killed()
    p = verdict(before, [row(state=state)])
    launch = msgspec.to_builtins(before, builtin_types=(datetime,))
    folded = fold_patches([launch, p] if p else [launch])
    replaced = folded["state"] != "failed" or folded["failure"]["cause"] != "killed"
    assert (p is not None) == (EXPECTED[state][1] in REFINES_KILLED)
    assert (p is not None) == replaced


def test_a_state_not_in_the_table_is_unknown_with_a_warning(caplog):
    with caplog.at_level(logging.WARNING, logger="runrec_cluster.backends"):
        p = verdict(rec(), [row(state="HIBERNATING")])
    assert p["state"] == "unknown" and p["state_source"] == "scheduler" and "failure" not in p
    assert p["warnings"] == [
        "Slurm reports state 'HIBERNATING', which runrec does not know; left as unknown"
    ]
    assert "HIBERNATING" in caplog.text and "r1" in caplog.text
    assert verdict(rec(RunState.UNKNOWN), [row(state="HIBERNATING")]) is None, "said once"


def test_step_0_out_of_memory_under_submitit():
    """submitit runs the function in step .0: the job line says FAILED, the step OUT_OF_MEMORY."""
    rows = [
        row(state="FAILED", exit_code="0:125"),
        row("100.batch", state="FAILED", exit_code="0:125"),
        row("100.0", state="OUT_OF_MEMORY", exit_code="0:125"),
    ]
    p = verdict(rec(), rows)
    f = p["failure"]
    assert p["state"] == "failed" and f["cause"] == "out_of_memory" and f["type"] == "FAILED"
    assert f["message"] == (
        "Slurm job 100 ended FAILED on n1; step 100.0 OUT_OF_MEMORY (exit code 0, signal 125)"
    )
    assert f["signal"] == 125 and f["exit_code"] == 0
    # it refines the bare KILLED the job recorded, and even a COMPLETED job line
    assert verdict(killed(), rows)["failure"]["cause"] == "out_of_memory"
    rows[0] = row(state="COMPLETED", exit_code="0:0")
    assert verdict(rec(), rows)["failure"]["cause"] == "out_of_memory"


def test_cancelled_by_a_uid_names_the_user():
    uid = os.getuid()
    p = verdict(rec(), [row(state=f"CANCELLED by {uid}", exit_code="0:15")])
    f = p["failure"]
    assert p["state"] == "cancelled" and f["cause"] == "cancelled" and f["type"] == "CANCELLED"
    assert f["by"] == pwd.getpwuid(uid).pw_name and f["signal"] == 15
    assert p["execution"]["scheduler"]["sacct_state"] == f"CANCELLED by {uid}"
    assert cancelled_by("CANCELLED by 4294967") == "4294967", "an unknown uid stays a uid"
    assert cancelled_by("FAILED") is None and cancelled_by("CANCELLED") is None


@pytest.mark.parametrize(
    ("code", "exit_code", "sig", "said"),
    [
        ("1:0", 1, None, " (exit code 1, signal 0)"),
        ("0:9", 0, 9, " (exit code 0, signal 9)"),
        ("0:0", 0, None, ""),
        ("", None, None, ""),
    ],
)
def test_exit_codes(code, exit_code, sig, said):
    p = verdict(rec(), [row(state="FAILED", exit_code=code)])
    f = p["failure"]
    assert f.get("exit_code") == exit_code and f.get("signal") == sig
    assert f["message"] == f"Slurm job 100 ended FAILED on n1{said}"


def test_still_settling_or_not_found_is_no_verdict():
    assert verdict(rec(), [row(end="Unknown")]) is None
    assert verdict(rec(), [row(end="")]) is None
    assert verdict(rec(), [row(), row("100.0", state="RUNNING")]) is None, "a step still runs"
    assert verdict(rec(), [row("100.0")]) is None, "no job line"
    p = verdict(rec(), [row(state="TIMEOUT", nodes="None assigned", exit_code="0:0")])
    assert p["failure"]["message"] == "Slurm job 100 ended TIMEOUT"


def test_state_words_and_exit_status():
    assert state_word("CANCELLED by 0") == "CANCELLED" and state_word("RUNNING+") == "RUNNING"
    assert state_word("") == ""
    assert exit_status("2:0") == (2, 0) and exit_status("") == (None, None)


def test_which_runs_the_slurm_backend_asks_about():
    b = SlurmBackend(None, Resources(), {})
    assert b.wants_verdict(rec())
    assert b.wants_verdict(killed()), "a bare KILLED may get its cause"
    assert not b.wants_verdict(killed(ended_at=datetime.now(UTC) - timedelta(hours=2)))
    assert not b.wants_verdict(killed(source="scheduler"))
    done = rec(RunState.SUCCEEDED)
    assert not b.wants_verdict(done)
    assert not b.wants_verdict(RunRecord(run_id="r2", execution=Execution(backend="slurm")))
