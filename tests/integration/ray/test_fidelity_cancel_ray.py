"""Issue 13, repro 4 on Ray: `runrec cancel` (from another process than the submitter) of a
running command run ends `cancelled` and stays so, also for a command that traps SIGTERM and
exits non-zero. The command's process is checked gone by the test itself."""

import time

import pytest
from helpers import run_cli, wait_for

import runrec_cluster as rr
from runrec_cluster.capture import proc

pytestmark = pytest.mark.usefixtures("ray_cluster")


@pytest.mark.parametrize("trap", [False, True], ids=["sleep", "traps-and-exits-143"])
def test_runrec_cancel_of_a_ray_command_run_is_cancelled(store, tmp_path, trap):
    pidfile = tmp_path / "pid"
    body = 'trap "exit 143" TERM; sleep 300 & wait' if trap else "exec sleep 300"
    ex = rr.Executor(backend="ray", store=store, cwd=tmp_path, ray_resources={"runrec-general": 1})
    h = ex.submit_command(["bash", "-c", f"echo $$ > {pidfile}; {body}"])
    wait_for("the command to start", lambda: pidfile.exists() and pidfile.read_text().strip())
    cmd = proc.identity(int(pidfile.read_text()))
    wait_for("the run to be running", lambda: h.record().state == rr.RunState.RUNNING)
    r = run_cli("cancel", "--store", store.root, h.run_id)
    assert r.returncode == 0, r.stderr
    assert "state: cancelled" in r.stdout, r.stdout
    wait_for("the command to be gone", lambda: proc.is_alive(cmd) is False, timeout=30)
    time.sleep(3)  # anything the job or the driver still writes is in by now
    rec = h.wait(timeout=30)
    assert rec.state == rr.RunState.CANCELLED and rec.failure.cause.value == "cancelled", (
        rec.failure
    )
    assert rec.failure.by
