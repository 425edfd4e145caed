"""Issue 13, repro 4: `runrec cancel` of a local run records `cancelled`, for a command and a
function, whatever the order in which the job's end and the backend's cancel reach the store,
and also when the command traps the signal and exits non-zero. Real `runrec` CLI, real
processes; the test checks itself that the command's process is gone."""

from __future__ import annotations

import json
import os
import time

import helpers
import jobfns
import pytest
from helpers import run_cli

import runrec_cluster as rr
from runrec_cluster.capture import proc


def wait_for(what, fn, timeout=30, every=0.1):
    return helpers.wait_for(what, fn, timeout, every)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    with open(f"/proc/{pid}/stat") as f:  # a zombie is gone for our purpose
        return f.read().rsplit(")", 1)[1].split()[0] != "Z"


def _submit_cli(store, cwd, *argv):
    r = run_cli("submit", "--store", store.root, "--backend", "local", "--", *argv, cwd=cwd)
    assert r.returncode == 0, r.stderr
    return next(iter(store.run_ids()))


def _cancel_and_settle(store, run_id):
    r = run_cli("cancel", "--store", store.root, run_id)
    assert r.returncode == 0, r.stderr
    assert "state: cancelled" in r.stdout, r.stdout
    rec = store.load(run_id)
    wait_for("the job process to end", lambda: proc.is_alive(rec.process) is False)
    time.sleep(0.5)  # anything the job or the supervisor still writes is in by now
    return store.load(run_id)


def test_cancel_a_command_run_as_in_the_issue(store, tmp_path):
    rid = _submit_cli(store, tmp_path, "sleep", "60")
    rec = wait_for("the run to start", lambda: (r := store.load(rid)).process and r)
    job_pid = rec.process.pid

    def sleeper():  # ground truth: the `sleep 60` process the job started, from /proc
        for d in os.listdir("/proc"):
            if d.isdigit():
                try:
                    with open(f"/proc/{d}/cmdline", "rb") as f:
                        cmd = f.read().split(b"\0")
                    with open(f"/proc/{d}/stat") as f:
                        ppid = int(f.read().rsplit(")", 1)[1].split()[1])
                except OSError:
                    continue
                if cmd[:2] == [b"sleep", b"60"] and ppid == job_pid:
                    return int(d)
        return None

    pid = wait_for("the command to start", sleeper)
    rec = _cancel_and_settle(store, rid)
    assert not _alive(pid)
    assert rec.state == rr.RunState.CANCELLED and rec.failure.cause.value == "cancelled", (
        rec.failure
    )
    assert rec.failure.by and rec.failure.source == "backend"
    assert rec.exit_code == -15  # the job's fact stays: the command died of SIGTERM
    r = run_cli("export", "--store", store.root, "--format", "openlineage", rid)
    assert r.returncode == 0, r.stderr
    events = [json.loads(line) for line in r.stdout.splitlines() if line.strip()]
    assert [e["eventType"] for e in events] == ["START", "ABORT"]


@pytest.mark.parametrize(
    "on_term",
    ["exit 143", "sleep 0.5; trap - TERM; kill -TERM $$"],
    ids=["exits-143", "dies-of-sigterm-after-the-cancel-is-recorded"],
)
def test_cancel_a_command_that_traps_the_signal(store, tmp_path, on_term):
    """The command ends after the backend recorded the cancel: with an exit code of its own,
    or killed by the signal (the job's bare "killed" then comes second)."""
    pidfile = tmp_path / "pid"
    script = f"echo $$ > {pidfile}; trap '{on_term}' TERM; sleep 60 & wait"
    rid = _submit_cli(store, tmp_path, "bash", "-c", script)
    wait_for("the command to start", lambda: pidfile.exists() and pidfile.read_text().strip())
    wait_for("the run to be running", lambda: store.load(rid).state == rr.RunState.RUNNING)
    rec = _cancel_and_settle(store, rid)
    assert not _alive(int(pidfile.read_text()))
    assert rec.state == rr.RunState.CANCELLED and rec.failure.cause.value == "cancelled", (
        rec.failure
    )
    assert rec.exit_code == (143 if on_term == "exit 143" else -15)


def test_cancel_a_function_run_from_the_cli(store, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    pidfile = tmp_path / "pid"
    h = rr.Executor(backend="local", store=store).submit(
        jobfns.write_pid_and_sleep, str(pidfile), 60
    )
    wait_for("the function to start", lambda: pidfile.exists() and pidfile.read_text())
    rec = _cancel_and_settle(store, h.run_id)
    assert not _alive(int(pidfile.read_text()))
    assert rec.state == rr.RunState.CANCELLED and rec.failure.cause.value == "cancelled", (
        rec.failure
    )


@pytest.mark.parametrize("cancel_first", [True, False])
def test_a_bare_kill_never_undoes_a_recorded_cancel(cancel_first):
    """The fold, both orders: the backend's cancel and the job's end (KILLED by SIGTERM)."""
    from runrec_cluster.job.commands import exit_patch
    from runrec_cluster.record import Failure, FailureCause, RunState, end_patch, fold_patches

    cancel = end_patch(
        Failure(cause=FailureCause.CANCELLED, type="Cancelled", source="backend"),
        source="backend",
        state=RunState.CANCELLED,
    )
    killed = exit_patch(-15)
    start = {"state": "running", "state_source": "job"}
    order = [cancel, killed] if cancel_first else [killed, cancel]
    rec = fold_patches([start, *order])
    assert rec["state"] == "cancelled" and rec["failure"]["cause"] == "cancelled"
    assert rec["state_source"] == "backend"
