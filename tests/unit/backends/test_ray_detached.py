"""Detached Ray runs without a cluster: the verdict from a runrec driver job's status (pure,
no Ray), and the driver's command line and submission ids (``backends.ray.jobs``, needs the
``ray`` package but no cluster)."""

import shlex
from types import SimpleNamespace

import pytest

from runrec_cluster.backends.ray.states import JOB_ALIVE, driver_job_verdict, job_status
from runrec_cluster.record import Execution, RunRecord, RunState


def rec():
    sch = {"submission_id": "runrec-r1", "detached": True}
    return RunRecord(
        run_id="r1",
        state=RunState.SUBMITTED,
        execution=Execution(backend="ray", scheduler=sch),
    )


def job(status, message="", end_time=1796526331044):
    return SimpleNamespace(
        status=status, submission_id="runrec-r1", message=message, end_time=end_time
    )


@pytest.mark.parametrize("status", sorted(JOB_ALIVE))
def test_a_live_driver_gets_no_verdict(status):
    assert driver_job_verdict(rec(), job(status)) is None


@pytest.mark.parametrize(
    ("status", "cause"),
    [("STOPPED", "killed"), ("FAILED", "infrastructure"), ("SUCCEEDED", "infrastructure")],
)
def test_a_driver_that_ended_before_launching(status, cause):
    p = driver_job_verdict(rec(), job(status, "Job entrypoint command failed with exit code 1"))
    assert p["state"] == "failed" and p["state_source"] == "scheduler"
    f = p["failure"]
    assert f["cause"] == cause and f["type"] == f"Driver{status.title()}"
    assert "runrec-r1" in f["message"] and "exit code 1" in f["message"]
    assert "ray job logs runrec-r1" in f["message"]
    assert p["execution"]["scheduler"]["ray_outcome"] == f"JOB_{status}"
    assert p["ended_at"].year == 2026


def test_an_unknown_job_status_is_unknown_not_guessed():
    p = driver_job_verdict(rec(), job("EXPLODED"))
    assert p["state"] == "unknown" and "EXPLODED" in p["warnings"][0]


def test_job_status_reads_enums_and_text():
    class JobStatus:
        value = "RUNNING"

    assert job_status(SimpleNamespace(status=JobStatus())) == "RUNNING"
    assert job_status("JobStatus.FAILED") == "FAILED"


def test_driver_command_line_and_ids():
    jobs = pytest.importorskip("runrec_cluster.backends.ray.jobs")
    line = jobs.entrypoint("/data/my store", ["a1", "b2"])
    assert shlex.split(line) == [
        "python", "-m", "runrec_cluster.backends.ray.jobdriver", "/data/my store", "a1", "b2",
    ]  # fmt: skip
    assert jobs.submission_id(["a1", "b2"]) == "runrec-a1"
    ids = [f"r{i}" for i in range(2500)]
    parts = jobs.chunks(ids)
    assert [len(p) for p in parts] == [1000, 1000, 500] and sum(parts, []) == ids
