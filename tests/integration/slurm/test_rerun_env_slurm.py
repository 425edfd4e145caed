"""`runrec rerun --env recorded` on the real Slurm cluster: the job runs in the recreated
environment on the node (submitit starts that environment's Python; ground truth: the job's
own sys.executable / sys.prefix, written by the job, and the environment's Python asked)."""

import pytest
from envkit import dist_version, install, make_venv, new_id, project, runrec, where

import runrec_cluster as rr

pytestmark = pytest.mark.usefixtures("slurm")


def test_recorded_env_on_a_slurm_node(tmp_path):
    py = make_venv(tmp_path / "venv", "six==1.16.0")
    proj = project(tmp_path / "proj")
    store = str(tmp_path / "store")
    out = runrec(py, "submit", "--store", store, "--backend", "slurm", "--cpus", "1",
                 "--mem-gb", "0.5", "--wait", "--", "python", "where.py", cwd=proj)  # fmt: skip
    orig = new_id(out, "submitted run ")
    install(py, "six==1.17.0")
    out = runrec(py, "rerun", orig, "--env", "recorded", "--check", "--store", store, cwd=proj)
    rid = new_id(out)
    assert "options.slurm_python" in out.stdout
    rec = rr.Store(store).load(rid)
    got = where(store, rid)
    env_dir = rec.rerun.env.dir
    assert got["prefix"] == env_dir and got["executable"] == rec.rerun.env.python
    assert got["six"] == "1.16.0" and dist_version(got["executable"], "six") == "1.16.0"
    assert rec.node.job_python == rec.rerun.env.python  # submitit's Python on the node
    assert rec.node.scheduler_node  # it ran on a Slurm node
    assert rec.reproduction.verdict == "bit-identical"
