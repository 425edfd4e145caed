"""The submitit drop-in on the real Slurm cluster (slurm/up): submitit's documented examples
(tests/fixtures/submitit_examples/, only the import line changed; the page's partition "dev"
is the test cluster's "debug") run in a fresh interpreter from a real git repository. Each
run's record is checked against sacct's own account of the job (job id, state, node), never
against runrec's output alone. Plus a Checkpointable callable preempted on the requeueing
partition: the requeue is attempt 2 of the same run, resumed from the checkpointed state."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import submitit_checks
from slurm_target import NODE_Y

import runrec_cluster as rr
from runrec_cluster.record import RunState

PARTITION = os.environ.get("RUNREC_SLURM_PARTITION", "debug")
LOW_REQUEUE = os.environ.get("RUNREC_SLURM_LOW_REQUEUE", "low-requeue")
HIGH = os.environ.get("RUNREC_SLURM_HIGH", "high")


def run_example(name: str, repo: Path, store: Path) -> dict:
    # AutoExecutor finds Slurm itself (srun on PATH)
    return submitit_checks.run_example(
        name, repo, store, None, ["--partition", PARTITION], timeout=900
    )


def sacct(job_id: str, name: str) -> list[dict[str, str]]:
    """sacct's job lines for one job (every attempt, -D) of that name: the ground truth (job
    ids restart when the test cluster is set up again; the name tells this job from older
    ones)."""
    fields = ["JobID", "JobName", "State", "NodeList", "Partition"]
    out = subprocess.run(
        ["sacct", "-n", "-P", "-X", "-D", "-j", job_id, "--name", name]
        + [f"--format={','.join(fields)}"],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    ).stdout
    return [dict(zip(fields, line.split("|"), strict=True)) for line in out.splitlines()]


def sacct_settled(job_id: str, name: str, timeout: float = 120) -> list[dict[str, str]]:
    deadline = time.monotonic() + timeout
    while True:
        rows = sacct(job_id, name)
        if rows and rows[-1]["State"].split()[0] not in ("PENDING", "RUNNING", "COMPLETING"):
            return rows
        assert time.monotonic() < deadline, f"sacct still says {rows} for job {job_id}"
        time.sleep(1)


def check_against_sacct(
    store: Path, job: dict, state: str, sacct_state: str, first_run: str | None = None
):
    """sacct knows the job id the drop-in's Job and the record give, under the name runrec
    gave the job (after the first run of its submission), with the record's state and node."""
    rec = rr.load(rr.Store(store), job["run_id"])
    rows = sacct_settled(job["job_id"], f"runrec-{(first_run or job['run_id'])[:10]}")
    row = rows[-1]
    assert row["JobID"] == job["job_id"] == str(rec.execution.scheduler["job_id"])
    assert row["State"].split()[0] == sacct_state
    assert row["Partition"] == PARTITION
    assert rec.state.value == state and rec.execution.backend == "slurm"
    assert rec.nodes and rec.nodes[0].scheduler_node == row["NodeList"]
    assert rec.code is not None and rec.code.commit
    return rec


@pytest.fixture
def where(slurm, repo, tmp_path):
    return repo, tmp_path / "store"


def test_readme_example_on_slurm(where):
    repo, store = where
    rep = run_example("readme_add", repo, store)
    assert rep["raised"] is None and rep["vars"]["output"] == 12
    (job,) = rep["jobs"]["job"]
    assert rep["stdout"].split()[0] == job["job_id"]  # print(job.job_id): Slurm's id
    rec = check_against_sacct(store, job, "succeeded", "COMPLETED")
    assert {k: v.value for k, v in rec.config.items()} == {"a": 5, "b": 7}
    assert rec.entrypoint.function.endswith(":add")
    assert rec.execution.resources.timeout_min == 1
    assert rec.execution.options["slurm_partition"] == PARTITION
    assert job["state"] == "COMPLETED"


def test_explained_and_errors_examples_on_slurm(where):
    repo, store = where
    rep = run_example("explained_add", repo, store)
    assert rep["raised"] is None and rep["vars"]["output"] == 12
    check_against_sacct(store, rep["jobs"]["job"][0], "succeeded", "COMPLETED")
    rep = run_example("errors_example", repo, store)
    assert rep["raised"]["type"] == "FailedJobError"
    assert "ZeroDivisionError" in rep["raised"]["message"]
    (job,) = rep["jobs"]["job"]
    # the function raised inside the job: submitit's job ends FAILED in sacct too
    rec = check_against_sacct(store, job, "failed", "FAILED")
    assert rec.failure.cause.value == "code_error" and rec.failure.type == "ZeroDivisionError"


def test_batch_example_is_one_slurm_array(where):
    repo, store = where
    rep = run_example("batch", repo, store)
    assert rep["raised"] is None
    batch = rep["jobs"]["jobs"]
    assert [j["result"] for j in batch] == [1, 4, 9]
    array_ids = {j["job_id"].split("_")[0] for j in batch}
    assert len(array_ids) == 1  # one array job
    assert sorted(j["job_id"].split("_")[1] for j in batch) == ["0", "1", "2"]
    for j in batch:
        rec = check_against_sacct(store, j, "succeeded", "COMPLETED", batch[0]["run_id"])
        assert rec.execution.scheduler["array_job_id"] == next(iter(array_ids))
    sweeps = {rr.load(rr.Store(store), j["run_id"]).sweep_id for j in batch}
    assert len(sweeps) == 1 and None not in sweeps


def test_commands_example_on_slurm(where):
    repo, store = where
    rep = run_example("commands", repo, store)
    assert rep["raised"] is None
    (job,) = rep["jobs"]["job"]
    assert job["result"] == os.path.join(os.path.dirname(sys.executable), "python")
    check_against_sacct(store, job, "succeeded", "COMPLETED")


_CHECKPOINT_SCRIPT = textwrap.dedent(
    """
    import json, os, sys, time
    import runrec_cluster.submitit as submitit

    class Counter(submitit.helpers.Checkpointable):
        def __init__(self):
            self.step = 0
            self.attempts = []

        def __call__(self, n, marker):
            env = submitit.JobEnvironment()
            self.attempts.append(env.attempt)
            start = self.step
            while self.step < n:
                time.sleep(0.5)
                self.step += 1
                if self.step == 3:
                    open(marker, "w").close()
            return {"start": start, "step": self.step, "attempts": self.attempts}

    executor = submitit.AutoExecutor(folder="log_ckpt")
    executor.update_parameters(timeout_min=5, slurm_partition=sys.argv[1], slurm_nodelist=sys.argv[3])
    job = executor.submit(Counter(), 30, sys.argv[2])
    print(json.dumps({"job_id": job.job_id, "run_id": job.run_id}), flush=True)
    print(json.dumps(job.result()), flush=True)
    """
)


def test_checkpointable_preempted_resumes_as_attempt_2(where, tmp_path):
    repo, store = where
    script = repo / "ckpt_example.py"
    script.write_text(_CHECKPOINT_SCRIPT)
    marker = tmp_path / "step3"
    env = dict(os.environ, RUNREC_STORE=str(store))
    env.pop("RUNREC_SUBMITIT_CLUSTER", None)
    p = subprocess.Popen(
        [sys.executable, str(script), LOW_REQUEUE, str(marker), NODE_Y],
        cwd=repo,
        env=env,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        ids = json.loads(p.stdout.readline())
        deadline = time.monotonic() + 240
        while not marker.exists():
            assert time.monotonic() < deadline and p.poll() is None, "the job never reached step 3"
            time.sleep(0.2)
        subprocess.run(
            ["sbatch", "--parsable", "-p", HIGH, "-w", NODE_Y, "-c", "2", "--mem=100M"]
            + ["-J", "high", "-o", "/dev/null", "--wrap", "sleep 2"],
            check=True,
            capture_output=True,
            timeout=60,
        )
        out = json.loads(p.stdout.readline())
        assert p.wait(timeout=600) == 0
    finally:
        if p.poll() is None:
            p.kill()
    # the second attempt resumed from the checkpointed state (self.step > 0), not from 0
    assert out["start"] >= 3 and out["step"] == 30 and out["attempts"] == [1, 2]
    rows = sacct_settled(ids["job_id"], f"runrec-{ids['run_id'][:10]}")
    states = [r["State"].split()[0] for r in rows]
    assert states[0] in ("PREEMPTED", "REQUEUED") and states[-1] == "COMPLETED"
    assert all(r["JobID"] == ids["job_id"] for r in rows)  # one job id, requeued
    rec = rr.load(rr.Store(store), ids["run_id"])
    assert rec.state == RunState.SUCCEEDED and rec.attempt == 2
    assert str(rec.execution.scheduler["job_id"]) == ids["job_id"]
    assert rec.execution.options["slurm_signal_delay_s"] == 90  # submitit's, for checkpointables
    ckpt = Path(rr.Store(store).log_dir(ids["run_id"])) / "submitit-checkpoint.pkl"
    assert ckpt.exists()
