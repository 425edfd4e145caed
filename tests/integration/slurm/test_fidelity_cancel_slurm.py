"""Issue 13, repro 4 on Slurm: `runrec cancel` of a running command run (scancel; the job
forwards SIGTERM to the command) ends `cancelled`, and stays so once the job and Slurm are done.
The command's process is checked gone by the test itself."""

import subprocess
import time

import helpers
import pytest
from helpers import run_cli

import runrec_cluster as rr
from runrec_cluster.capture import proc

pytestmark = pytest.mark.usefixtures("slurm")


def wait_for(what, fn, timeout=90, every=0.3):
    return helpers.wait_for(what, fn, timeout, every)


@pytest.mark.parametrize("trap", [False, True], ids=["dies-of-sigterm", "traps-and-exits-143"])
def test_runrec_cancel_of_a_slurm_command_run_is_cancelled(store, project, trap):
    pidfile = project / "pid"
    body = 'trap "exit 143" TERM; sleep 300 & wait' if trap else "exec sleep 300"
    ex = rr.Executor(backend="slurm", store=store, timeout_min=5, cpus=1, mem_gb=0.5)
    h = ex.submit_command(["bash", "-c", f"echo $$ > {pidfile}; {body}"])
    wait_for("the command to start", lambda: pidfile.exists() and pidfile.read_text().strip())
    cmd = proc.identity(int(pidfile.read_text()))
    wait_for("the run to be running", lambda: h.record().state == rr.RunState.RUNNING)
    r = run_cli("cancel", "--store", store.root, h.run_id)
    assert r.returncode == 0, r.stderr
    assert "state: cancelled" in r.stdout, r.stdout
    if cmd is not None:
        wait_for("the command to be gone", lambda: proc.is_alive(cmd) is False, timeout=30)
    rec = h.wait(timeout=60)
    wait_for("the Slurm job to leave the queue", lambda: _gone(rec), timeout=60)
    time.sleep(3)  # the job's own end, if any, is written by now
    rec = store.load(h.run_id)
    assert rec.state == rr.RunState.CANCELLED and rec.failure.cause.value == "cancelled", (
        rec.failure
    )
    assert rec.failure.by


def _gone(rec) -> bool:
    jid = rec.execution.scheduler["job_id"]
    out = subprocess.run(["squeue", "-h", "-j", str(jid)], capture_output=True, text=True)
    return out.stdout.strip() == ""
