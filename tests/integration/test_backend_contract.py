"""One contract, every backend: submit, map_array, submit_command, result, a failure, a cancel,
and the record fields present after a run, run against local, the real Slurm cluster (slurm/up)
and the real Ray cluster (ray/up). Each backend's runs are submitted together up front (module
fixture), then checked one by one.

Where the backends differ, the difference is written down in ``EXPECT`` below, not hidden in
the tests."""

from __future__ import annotations

import sys
import time
from typing import Any

import jobfns
import pytest
from helpers import CLUSTER_DOWN, git

import runrec_cluster as rr
from runrec_cluster.backends import get_backend
from runrec_cluster.capture import proc
from runrec_cluster.capture.proc import current_user

# -- where the three backends differ --------------------------------------------------------------

EXPECT: dict[str, dict[str, Any]] = {
    "local": {
        # Executor options that keep the runs where they belong
        "options": {},
        # execution.scheduler keys every run has once it ran
        "scheduler_ids": {"supervisor"},
        # ... and those only the runs of a sweep have
        "sweep_ids": set(),
        # the scheduler's name for the node (NodeInfo.scheduler_node) is recorded
        "scheduler_node": False,
        # node features (Slurm node features, Ray custom resources) are recorded
        "features": False,
        # the scheduler kills at the time limit itself (else: the job's own watchdog)
        "enforces_timeout": False,
        # how the cancel was done, as the record's failure message says it
        "cancel_message": "cancelled by request",
    },
    "slurm": {
        "options": {},
        "scheduler_ids": {"job_id", "raw_job_id", "partition", "nodelist", "batch_script"},
        "sweep_ids": {"array_job_id", "array_task_id"},
        "scheduler_node": True,
        "features": True,
        "enforces_timeout": True,
        "cancel_message": "cancelled by request (scancel {job_id})",
    },
    "ray": {
        # keep the runs off ray/up's oom-test node (see tests/integration/ray/test_ray_backend.py)
        "options": {"ray_resources": {"runrec-general": 1}},
        "scheduler_ids": {"task_id", "node_id", "ray_job_id", "worker_pid", "session_name"},
        "sweep_ids": set(),
        "scheduler_node": True,
        "features": True,
        "enforces_timeout": False,
        "cancel_message": "cancelled by request (ray.cancel(force=True))",
    },
}
# the same on every backend
FAILURE = {"state": rr.RunState.FAILED, "cause": "code_error", "type": "ValueError"}
CANCEL = {"state": rr.RunState.CANCELLED, "cause": "cancelled", "source": "backend"}
WAIT_S = 180


# -- the clusters ------------------------------------------------------------------------------


def _wait_for(what: str, fn: Any, timeout: float = WAIT_S) -> Any:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        v = fn()
        if v:
            return v
        time.sleep(0.3)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


@pytest.fixture(
    scope="module",
    params=[
        pytest.param("local"),
        pytest.param("slurm", marks=pytest.mark.slurm),
        pytest.param("ray", marks=pytest.mark.ray),
    ],
)
def runs(request, tmp_path_factory):
    """Every run of the contract on one backend, submitted together: {what: handle(s)}."""
    name = request.param
    why = CLUSTER_DOWN[name]()
    if why:
        pytest.skip(f"no {name} cluster: {why}")
    base = tmp_path_factory.mktemp(f"contract-{name}")
    repo = base / "repo"
    repo.mkdir()
    git(repo, "init", "-q", "-b", "main")
    (repo / "train.py").write_text("print('hello')\n")
    git(repo, "add", ".")
    git(repo, "commit", "-qm", "first")
    store = rr.Store(base / "store")
    kw: dict[str, Any] = {"timeout_min": 5, "cpus": 1, "mem_gb": 0.5} if name == "slurm" else {}
    ex = rr.Executor(backend=name, store=store, cwd=repo, **kw, **EXPECT[name]["options"])
    return {
        "name": name,
        "store": store,
        "submit": ex.submit(jobfns.add, 2, b=3),
        "sweep": ex.map_array(jobfns.train, [{"lr": 0.1}, {"lr": 0.2}]),
        "command": ex.submit_command([sys.executable, "-c", "print('hi')"]),
        "failure": ex.submit(jobfns.fail, "boom"),
        "cancel": ex.submit(jobfns.sleep_then, 300),
    }


# -- the contract ------------------------------------------------------------------------------


def test_submit_and_result(runs):
    assert runs["submit"].result(timeout=WAIT_S) == 5


def test_map_array(runs):
    hs = runs["sweep"]
    assert [h.result(timeout=WAIT_S)["lr"] for h in hs] == [0.1, 0.2]
    recs = [h.record() for h in hs]
    assert len({r.sweep_id for r in recs}) == 1 and [r.sweep_index for r in recs] == [0, 1]
    for r in recs:
        want = EXPECT[runs["name"]]["scheduler_ids"] | EXPECT[runs["name"]]["sweep_ids"]
        assert want <= set(r.execution.scheduler), r.execution.scheduler


def test_submit_command(runs):
    h = runs["command"]
    assert h.result(timeout=WAIT_S) == 0
    rec = h.record()
    assert rec.entrypoint.kind == "command" and rec.exit_code == 0


def test_failure(runs):
    h = runs["failure"]
    with pytest.raises(rr.JobFailed, match="boom") as err:
        h.result(timeout=WAIT_S)
    rec = h.record()
    f = rec.failure
    assert rec.state == FAILURE["state"] and f.cause.value == FAILURE["cause"], f
    assert f.type == FAILURE["type"] and f.message == "boom" and f.source == "job"
    assert "Traceback" in f.traceback and "in inner" in f.traceback and "boom" in f.traceback
    assert err.value.failure == f and "traceback recorded in the job" in str(err.value)


def test_cancel(runs):
    h = runs["cancel"]
    rec = _wait_for("the run to start", lambda: (r := h.record()).process and r)
    h.cancel()
    rec = h.wait(timeout=60)
    f = rec.failure
    assert rec.state == CANCEL["state"] and f.cause.value == CANCEL["cause"], f
    assert f.source == CANCEL["source"] and rec.state_source == CANCEL["source"]
    assert f.by == current_user() and rec.ended_at
    sch = rec.execution.scheduler
    assert f.message == EXPECT[runs["name"]]["cancel_message"].format(**sch)
    _wait_for("the job process to end", lambda: proc.is_alive(rec.process) is False, 60)
    assert h.record().state == CANCEL["state"], "nothing overrides the cancel afterwards"


def test_record_fields_after_a_run(runs):
    h, name = runs["submit"], runs["name"]
    h.wait(timeout=WAIT_S)
    rec = h.record()
    want = EXPECT[name]
    assert rec.state == rr.RunState.SUCCEEDED and rec.state_source == "job"
    assert rec.user == current_user() and rec.submit_host and rec.attempt == 1
    assert rec.code.is_repo and rec.code.commit and not rec.code.dirty
    assert set(rec.config) >= {"a", "b"} and rec.entrypoint.function.endswith(":add")
    assert rec.launch_env.python_version and rec.launch_env.packages_blob
    assert rec.submitted_at <= rec.started_at <= rec.ended_at and rec.process
    node = rec.node
    assert node is not None and node.hostname and node.python_version and node.cpu_count
    assert bool(node.scheduler_node) == want["scheduler_node"]
    assert bool(node.features) == want["features"]
    ex = rec.execution
    assert ex.backend == name and ex.log_dir
    assert want["scheduler_ids"] <= set(ex.scheduler), ex.scheduler
    assert get_backend(name).enforces_timeout == want["enforces_timeout"]
