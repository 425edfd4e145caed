"""The submitit drop-in on the local cluster: submitit's own documented examples (README.md,
docs/examples.md; tests/fixtures/submitit_examples/) run with only the import line changed, in
a fresh interpreter from a real git repository; their outputs and every run's record are
checked. Plus the debug cluster (in-process), map_array as one sweep, Checkpointable on a
requeue-free backend, and the runrec extras (tags, inputs, store)."""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

import cloudpickle
import pytest
import submitit_checks

import runrec_cluster as rr
import runrec_cluster.submitit as submitit
from runrec_cluster.record import RunState

cloudpickle.register_pickle_by_value(sys.modules[__name__])  # Counter travels by value


def run_example(name: str, repo: Path, store: Path, cluster: str = "local", extra=()) -> dict:
    return submitit_checks.run_example(name, repo, store, cluster, extra)


def check_record(store: Path, run_id: str, fn: str, config: dict, state=RunState.SUCCEEDED):
    rec = rr.load(rr.Store(store), run_id)
    assert rec.state == state, rec.failure
    assert rec.entrypoint.function.endswith(":" + fn)
    assert {k: v.value for k, v in rec.config.items()} == config
    assert rec.nodes and rec.nodes[0].hostname == os.uname().nodename
    assert rec.code is not None and rec.code.commit  # the repo's commit
    return rec


@pytest.fixture
def where(repo, tmp_path):
    return repo, tmp_path / "store"


def test_readme_example(where):
    repo, store = where
    rep = run_example("readme_add", repo, store)
    assert rep["raised"] is None
    (job,) = rep["jobs"]["job"]
    assert rep["vars"]["output"] == 12 and job["result"] == 12 and job["state"] == "COMPLETED"
    assert rep["stdout"].split()[0] == job["job_id"]  # the example printed job.job_id
    rec = check_record(store, job["run_id"], "add", {"a": 5, "b": 7})
    assert rec.execution.backend == "local"
    assert rec.execution.resources.timeout_min == 1  # timeout_min=1; slurm_partition ignored
    assert "slurm_partition" not in rec.execution.options
    assert (repo / "log_test").is_dir()  # created, as submitit does


def test_explained_example(where):
    repo, store = where
    rep = run_example("explained_add", repo, store)
    assert rep["raised"] is None and rep["vars"]["output"] == 12
    rec = check_record(store, rep["jobs"]["job"][0]["run_id"], "add", {"a": 5, "b": 7})
    assert rec.execution.resources.timeout_min == 4


def test_job_arrays_example_as_documented(where):
    """The page's `a = [1, 2, 3, 4],` is a one-element tuple: zip gives one call,
    add([1, 2, 3, 4], 10), which raises TypeError (with submitit as well)."""
    repo, store = where
    rep = run_example("job_arrays", repo, store)
    assert rep["raised"] is None
    (job,) = rep["jobs"]["jobs"]
    assert job["state"] == "FAILED" and job["error"] == "FailedJobError"
    assert "TypeError" in job["message"]
    rec = check_record(
        store, job["run_id"], "add", {"a": [1, 2, 3, 4], "b": 10}, state=RunState.FAILED
    )
    assert rec.failure.cause.value == "code_error" and rec.failure.type == "TypeError"


def test_batch_example_one_sweep(where):
    repo, store = where
    rep = run_example("batch", repo, store)
    assert rep["raised"] is None
    batch = rep["jobs"]["jobs"]
    assert [j["result"] for j in batch] == [1, 4, 9]
    recs = list(rr.Store(store).load_all())
    assert len(recs) == 6  # the plain loop's 3 runs, then the batch's 3
    sweeps = {r.sweep_id for r in recs if r.run_id in {j["run_id"] for j in batch}}
    assert len(sweeps) == 1 and None not in sweeps  # one array: one sweep
    loop = [r for r in recs if r.run_id not in {j["run_id"] for j in batch}]
    assert [r.sweep_id for r in loop] == [None] * 3
    assert sorted(r.config["x"].value for r in recs) == [1, 1, 2, 2, 3, 3]


def test_concurrent_jobs_example(where):
    repo, store = where
    rep = run_example("concurrent_jobs", repo, store)
    assert rep["raised"] is None
    assert rep["vars"]["outputs"] == [None] * 10
    assert 0 <= rep["vars"]["num_finished"] <= 10
    jobs = rep["jobs"]["jobs"]
    for k, j in enumerate(jobs, start=1):
        rec = rr.load(rr.Store(store), j["run_id"])
        assert rec.state == RunState.SUCCEEDED
        assert rec.entrypoint.function.endswith(":sleep") and rec.config["arg0"].value == k
        assert (rec.ended_at - rec.started_at).total_seconds() >= k


def test_errors_example(where):
    repo, store = where
    rep = run_example("errors_example", repo, store)
    raised = rep["raised"]
    assert raised["type"] == "FailedJobError"
    assert "ZeroDivisionError: division by zero" in raised["message"]
    (job,) = rep["jobs"]["job"]
    rec = rr.load(rr.Store(store), job["run_id"])
    assert rec.state == RunState.FAILED and rec.failure.type == "ZeroDivisionError"
    assert rec.failure.cause.value == "code_error"


def test_commands_example(where):
    repo, store = where
    rep = run_example("commands", repo, store)
    assert rep["raised"] is None
    python = shutil.which("python")  # what `which python` answers here (ground truth)
    pip = shutil.which("pip")
    lines = [ln for ln in rep["stdout"].splitlines() if ln.startswith("/")]
    # verbose (the default) echoes the command's stdout, then the example prints the result
    assert lines == [python, python, pip, pip, python]
    (job,) = rep["jobs"]["job"]
    assert job["result"] == python
    rec = rr.load(rr.Store(store), job["run_id"])
    assert rec.state == RunState.SUCCEEDED
    assert rec.entrypoint.function.endswith(":CommandFunction")


def test_multitask_example_refused_clearly(where):
    repo, store = where
    rep = run_example("multitask", repo, store)
    raised = rep["raised"]
    assert raised["type"] == "UnsupportedParameter"
    assert "tasks_per_node=3" in raised["message"]
    assert not list(rr.Store(store).load_all())  # nothing was submitted


def test_local_executor_map_array_and_extras(repo, tmp_path, monkeypatch):
    monkeypatch.chdir(repo)
    data = repo / "weights.bin"
    ex = submitit.LocalExecutor(folder=tmp_path / "logs", runrec_store=tmp_path / "st")
    ex.update_parameters(timeout_min=2, runrec_tags={"team": "vision"}, runrec_inputs=[data])
    jobs = ex.map_array(pow, [2, 3, 4], [2, 2, 2])
    assert [j.result() for j in jobs] == [4, 9, 16]
    recs = [rr.load(rr.Store(tmp_path / "st"), j.run_id) for j in jobs]
    assert len({r.sweep_id for r in recs}) == 1 and recs[0].sweep_id
    assert [r.sweep_index for r in recs] == [0, 1, 2]
    assert all(r.tags == {"team": "vision"} for r in recs)
    assert all(r.inputs and r.inputs[0].path.endswith("weights.bin") for r in recs)
    assert jobs[0].stdout() is not None and jobs[0].paths.stdout.exists()


def test_debug_executor_runs_in_process(repo, tmp_path, monkeypatch):
    monkeypatch.chdir(repo)
    pid = os.getpid()
    ex = submitit.AutoExecutor(
        folder=tmp_path / "logs", cluster="debug", runrec_store=tmp_path / "st"
    )
    job = ex.submit(os.getpid)
    assert job.state == "PENDING"  # nothing ran yet: it runs when its result is asked for
    assert job.result() == pid  # in this very process
    rec = rr.load(rr.Store(tmp_path / "st"), job.run_id)
    assert rec.state == RunState.SUCCEEDED
    assert rec.execution.scheduler["in_process"]["pid"] == pid
    assert os.environ.get("RUNREC_RUN_ID") is None  # the environment is put back
    cancelled = ex.submit(os.getpid)
    cancelled.cancel()
    assert cancelled.state == "CANCELLED"


class Counter(submitit.helpers.Checkpointable):
    def __init__(self):
        self.step = 0

    def __call__(self, n):
        while self.step < n:
            self.step += 1
        return self.step


def test_checkpointable_on_local_runs_plainly(repo, tmp_path, monkeypatch):
    """No stop signal: the callable runs once; the record names the class and its argument."""
    monkeypatch.chdir(repo)
    ex = submitit.AutoExecutor(
        folder=tmp_path / "logs", cluster="local", runrec_store=tmp_path / "st"
    )
    job = ex.submit(Counter(), 5)
    assert job.result() == 5
    rec = rr.load(rr.Store(tmp_path / "st"), job.run_id)
    assert rec.entrypoint.function.endswith(":Counter")
    assert rec.config["n"].value == 5 and rec.attempt == 1
