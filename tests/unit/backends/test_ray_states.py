"""The one table from what Ray says to runrec states, without a cluster (and, but for the two
tests that read Ray's own names, without Ray installed): moved from
tests/integration/ray/test_ray_outcomes.py when the pure table left the Ray backend module."""

import subprocess
import sys
from datetime import UTC, datetime
from types import SimpleNamespace

import pytest

from runrec_cluster.backends.ray.states import (
    EXCEPTION_WORDS,
    RAY_OUTCOMES,
    error_word,
    task_verdict,
    verdict,
)
from runrec_cluster.record import Execution, FailureCause, Process, RunRecord, RunState


def rec(state=RunState.RUNNING, started=True, **options):
    return RunRecord(
        run_id="r1",
        state=state,
        execution=Execution(backend="ray", options=options, scheduler={"task_id": "t1"}),
        process=Process(host="h", pid=1, start_ticks=1, boot_id="b") if started else None,
    )


@pytest.mark.parametrize(
    ("word", "state", "cause"),
    [
        ("WORKER_DIED", "failed", "worker_crashed"),
        ("OUT_OF_MEMORY", "failed", "out_of_memory"),
        ("TASK_CANCELLED", "cancelled", "cancelled"),
        ("NODE_DIED", "failed", "node_failure"),
        ("LOCAL_RAYLET_DIED", "failed", "node_failure"),
        ("ACTOR_DIED", "failed", "node_failure"),
        ("TASK_EXECUTION_EXCEPTION", "failed", "infrastructure"),
        ("RUNTIME_ENV_SETUP_FAILED", "failed", "infrastructure"),
        ("FINISHED", "failed", "infrastructure"),
    ],
)
def test_terminal_words(word, state, cause):
    p = verdict(rec(), word, "msg", source="scheduler", attempt=2)
    assert p["state"] == state and p["failure"]["cause"] == cause and p["failure"]["type"] == word
    assert (
        p["state_source"] == "scheduler"
        and p["failure"]["source"] == "scheduler"
        and p["attempt"] == 2
    )
    assert p["execution"] == {"scheduler": {"ray_outcome": word}}


@pytest.mark.parametrize(
    "word", ["PENDING_NODE_ASSIGNMENT", "RUNNING", "SUBMITTED_TO_WORKER", "NIL"]
)
def test_words_that_are_not_an_end(word):
    assert RAY_OUTCOMES[word] is None and verdict(rec(), word, "", source="scheduler") is None


def test_an_unknown_word_is_unknown_never_guessed():
    p = verdict(rec(), "SOMETHING_NEW", "Ray said so", source="scheduler")
    assert p["state"] == "unknown" and "failure" not in p
    assert "SOMETHING_NEW" in p["warnings"][0] and "left as unknown" in p["warnings"][0]
    assert verdict(rec(RunState.UNKNOWN), "SOMETHING_NEW", "", source="scheduler") is None


def test_every_table_entry_is_a_ray_word():
    common_pb2 = pytest.importorskip("ray.core.generated.common_pb2")

    known = set(common_pb2.ErrorType.keys()) | set(common_pb2.TaskStatus.keys())
    assert set(RAY_OUTCOMES) <= known, set(RAY_OUTCOMES) - known


def test_exceptions_are_named_by_their_error_type():
    rx = pytest.importorskip("ray.exceptions")
    assert error_word(rx.WorkerCrashedError()) == "WORKER_DIED"
    assert error_word(rx.TaskCancelledError()) == "TASK_CANCELLED"
    assert error_word(rx.OutOfMemoryError("oom")) == "OUT_OF_MEMORY"
    assert error_word(rx.NodeDiedError("gone")) == "NODE_DIED"
    task_error = type("RayTaskError(ValueError)", (rx.RayTaskError, ValueError), {})
    assert error_word(task_error.__new__(task_error)) == "TASK_EXECUTION_EXCEPTION"
    assert error_word(KeyError("x")) == "KeyError"  # no Ray word: maps to unknown


def task(state, error_type=None, attempt=0, **kw):
    return SimpleNamespace(
        task_id="t1",
        state=state,
        error_type=error_type,
        attempt_number=attempt,
        node_id="n1",
        error_message=kw.get("msg", ""),
        end_time_ms=1_700_000_000_000,
    )


def test_a_worker_death_ray_will_retry_is_no_verdict_yet():
    assert (
        task_verdict(rec(ray_max_retries=2), task("FAILED", "WORKER_DIED", attempt=1), None) is None
    )
    assert (
        task_verdict(rec(ray_max_retries=-1), task("FAILED", "OUT_OF_MEMORY", attempt=9), None)
        is None
    )
    p = task_verdict(
        rec(ray_max_retries=2), task("FAILED", "WORKER_DIED", attempt=2, msg="SIGKILL"), None
    )
    assert (
        p["failure"]["cause"] == "worker_crashed"
        and p["attempt"] == 3
        and "SIGKILL" in p["failure"]["message"]
    )
    # a code error is never retried (retry_exceptions=False)
    p = task_verdict(rec(ray_max_retries=2), task("FAILED", "TASK_EXECUTION_EXCEPTION"), None)
    assert p["failure"]["cause"] == "infrastructure"


def test_a_failed_task_without_error_type_is_unknown():
    p = task_verdict(rec(), task("FAILED", None), None)
    assert p["state"] == "unknown"


def test_tasks_of_an_ended_driver_were_killed_by_ray():
    now_ms = int(datetime.now(UTC).timestamp() * 1000)
    fresh = SimpleNamespace(job_id="05000000", end_time=now_ms - 1000)
    assert task_verdict(rec(), task("PENDING_NODE_ASSIGNMENT"), fresh) is None, (
        "events may still arrive"
    )
    old = SimpleNamespace(job_id="05000000", end_time=now_ms - 60_000)
    p = task_verdict(rec(), task("PENDING_NODE_ASSIGNMENT"), old)
    assert (
        p["state"] == "failed"
        and p["failure"]["cause"] == "killed"
        and p["failure"]["type"] == "OWNER_DIED"
    )
    assert (
        "05000000" in p["failure"]["message"]
        and "PENDING_NODE_ASSIGNMENT" in p["failure"]["message"]
    )
    assert task_verdict(rec(), task("RUNNING"), None) is None
    # Ray marks them WORKER_DIED 15 s after the driver ends: the owner died, not the worker
    died = task("FAILED", "WORKER_DIED")
    died.end_time_ms = now_ms - 30_000
    assert task_verdict(rec(), died, old)["failure"]["type"] == "OWNER_DIED"
    died.end_time_ms = now_ms - 60_500  # stamped a little before the driver's end
    assert task_verdict(rec(), died, old)["failure"]["type"] == "OWNER_DIED"
    died.end_time_ms = now_ms - 90_000  # the worker died well before its driver ended
    assert task_verdict(rec(), died, old)["failure"]["type"] == "WORKER_DIED"
    assert task_verdict(rec(started=False), died, old)["failure"]["type"] == "OWNER_DIED", (
        "it never ran"
    )


# -- added with the move: every entry of the table, and the import without Ray -----------------


@pytest.mark.parametrize("word", sorted(RAY_OUTCOMES))
def test_every_ray_outcome_maps_as_the_table_says(word):
    mapped = RAY_OUTCOMES[word]
    p = verdict(rec(), word, "what Ray said", source="scheduler", attempt=1)
    if mapped is None:
        assert p is None
        return
    state, cause = mapped
    assert isinstance(state, RunState) and isinstance(cause, FailureCause)
    assert state.is_terminal()
    assert p["state"] == state.value and p["state_source"] == "scheduler"
    assert p["failure"]["cause"] == cause.value and p["failure"]["type"] == word
    assert "what Ray said" in p["failure"]["message"] and p["ended_at"]
    assert p["execution"] == {"scheduler": {"ray_outcome": word}} and p["attempt"] == 1


def test_every_exception_word_is_in_the_table():
    assert set(EXCEPTION_WORDS.values()) <= set(RAY_OUTCOMES)


def test_the_table_imports_without_ray():
    code = (
        "import sys; sys.modules['ray'] = None\n"
        "from runrec_cluster.backends.ray import states\n"
        "assert states.RAY_OUTCOMES['WORKER_DIED']\n"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
