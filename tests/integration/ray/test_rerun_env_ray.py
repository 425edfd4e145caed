"""`runrec rerun --env recorded` on the real Ray cluster: the task's worker is the recreated
environment's Python (runtime_env ``py_executable``). The original is a local run made in a
small venv with ray; the rerun goes to Ray (ground truth: the job's own sys.executable and
sys.prefix, written by the job, and the environment's Python asked)."""

import sys

import pytest
from envkit import dist_version, install, make_venv, new_id, project, runrec, where

import runrec_cluster as rr

pytestmark = pytest.mark.usefixtures("ray_cluster")


def test_recorded_env_on_a_ray_worker(tmp_path):
    import ray

    py = make_venv(tmp_path / "venv", "six==1.16.0", f"ray=={ray.__version__}")
    proj = project(tmp_path / "proj")
    store = str(tmp_path / "store")
    out = runrec(py, "submit", "--store", store, "--backend", "local", "--wait", "--",
                 "python", "where.py", cwd=proj)  # fmt: skip
    orig = new_id(out, "submitted run ")
    install(py, "six==1.17.0")
    # submitted from the test venv (it has ray[default] for the Ray Jobs API)
    out = runrec(
        sys.executable,
        "rerun",
        orig,
        "--backend",
        "ray",
        "--env",
        "recorded",
        "--check",
        "--store",
        store,
        cwd=proj,
    )
    rid = new_id(out)
    assert "py_executable" in out.stdout
    rec = rr.Store(store).load(rid)
    got = where(store, rid)
    assert got["prefix"] == rec.rerun.env.dir and got["executable"] == rec.rerun.env.python
    assert got["six"] == "1.16.0" and dist_version(got["executable"], "six") == "1.16.0"
    assert rec.node.job_python == rec.rerun.env.python  # the Ray worker's own Python
    assert rec.execution.backend == "ray" and rec.node.scheduler_node
    assert rec.reproduction.verdict == "bit-identical"
