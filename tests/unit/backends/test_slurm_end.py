"""The Slurm end script without a cluster: the verdict from what the scheduler says during a
job's end (rows as measured on Slurm 22.05: cancel and preemption already final in sacct, a time
limit seen first as scontrol's Reason=TimeLimit, an out-of-memory step while the job still runs),
the batch lines (real bash), and ``finish`` against a real store with fake sacct/scontrol."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
import time

import pytest

from runrec_cluster.backends import slurm_end
from runrec_cluster.backends.slurm_states import end_verdict, parse_sacct, parse_scontrol
from runrec_cluster.record import (
    Execution,
    Failure,
    FailureCause,
    RunRecord,
    RunState,
    end_patch,
    to_patch,
)
from runrec_cluster.store import Store

JOB = "100"
RUN = "01m94n87956zq4gkjzmedwa55v"


def rec(state=RunState.RUNNING, failure=None):
    return RunRecord(
        run_id="r1",
        state=state,
        failure=failure,
        execution=Execution(backend="slurm", scheduler={"job_id": JOB}),
    )


def row(job_id, state, end="2026-01-01T00:00:05", exit_code="0:0"):
    return {"JobID": job_id, "State": state, "ExitCode": exit_code, "NodeList": "n1", "End": end}


@pytest.mark.parametrize(
    ("rows", "reason", "status", "want"),
    [
        # scancel: sacct final during KillWait, steps too
        ([row(JOB, "CANCELLED by 0"), row(f"{JOB}.0", "CANCELLED")], "None", None, "cancelled"),
        # preemption (REQUEUE and CANCEL): the job line PREEMPTED, no end time yet
        ([row(JOB, "PREEMPTED", end="Unknown")], "None", None, "preempted"),
        # time limit: sacct still RUNNING, scontrol already says why
        ([row(JOB, "RUNNING", end="Unknown")], "TimeLimit", None, "timeout"),
        # out of memory: only the srun step says so; the job line still pending/running
        (
            [row(JOB, "PENDING", "Unknown"), row(f"{JOB}.batch", "RUNNING", "Unknown")]
            + [row(f"{JOB}.0", "OUT_OF_MEMORY", exit_code="0:125")],
            "",
            1,
            "out_of_memory",
        ),
        # srun failed by itself, no out-of-memory step: what sacct will say, FAILED
        ([row(JOB, "RUNNING", "Unknown"), row(f"{JOB}.0", "FAILED")], "", 1, "exit_code"),
        # srun ended 0 and the job never wrote its end
        ([row(JOB, "RUNNING", "Unknown"), row(f"{JOB}.0", "COMPLETED")], "", 0, "infrastructure"),
        # signalled, nothing known yet: poll again
        ([row(JOB, "RUNNING", "Unknown")], "None", None, None),
    ],
)
def test_end_verdict(rows, reason, status, want):
    patch = end_verdict(rec(), rows, job_id=JOB, reason=reason, srun_status=status, nodelist="n1")
    if want is None:
        assert patch is None
        return
    assert patch["failure"]["cause"] == want and patch["state_source"] == "scheduler"
    assert patch["ended_at"] is not None
    if want == "cancelled":
        assert patch["state"] == "cancelled" and patch["failure"]["by"]
    if reason == "TimeLimit" or status is not None:  # concluded, not sacct's word
        assert "sacct_state" not in patch["execution"]["scheduler"]


def test_end_verdict_refines_only_a_bare_kill():
    """A command run records `killed` on the forwarded SIGTERM: the scheduler's cause refines
    it; a run that ended with a cause of its own is not touched."""
    killed = rec(
        RunState.FAILED,
        Failure(cause=FailureCause.KILLED, type="Signal", message="sig 15", source="job"),
    )
    p = end_verdict(killed, [row(JOB, "TIMEOUT")], job_id=JOB)
    assert p and p["failure"]["cause"] == "timeout"
    assert (
        end_verdict(
            killed, [row(JOB, "RUNNING"), row(f"{JOB}.0", "FAILED")], job_id=JOB, srun_status=1
        )
        is None
    )


def test_parsers():
    out = "\x1f".join([JOB, JOB, "TIMEOUT", "0:0", "0:0", "None", "n1", "s", "e", "debug", ""])
    assert parse_sacct(out + "\nbad line\n")[JOB][0]["State"] == "TIMEOUT"
    f = parse_scontrol("JobId=100 JobName=x JobState=COMPLETING Reason=TimeLimit Dependency=(null)")
    assert f["JobState"] == "COMPLETING" and f["Reason"] == "TimeLimit"


def test_batch_lines_trap_runs_at_once_on_term(tmp_path):
    """In real bash: srun (a fake that ignores SIGTERM, as submitit's process does) runs in the
    background, a TERM to the script runs the end command at once with --signal TERM, not when
    srun is gone; a normal end passes srun's exit status."""
    bindir = tmp_path / "bin"
    bindir.mkdir()
    fake = bindir / "srun"
    fake.write_text("#!/bin/bash\ntrap '' TERM\n[ \"$1\" = fail ] && exit 3\nsleep 30\n")
    fake.chmod(fake.stat().st_mode | stat.S_IXUSR)
    log = tmp_path / "end.log"
    py = tmp_path / "py"
    py.write_text(f'#!/bin/bash\necho "$(date +%s.%N) $*" >> {log}\n')
    py.chmod(py.stat().st_mode | stat.S_IXUSR)
    lines = slurm_end.batch_lines(str(py), "/st ore", ["run0", "run1"])
    env = dict(os.environ, PATH=f"{bindir}:{os.environ['PATH']}")
    script = "\n".join([*lines, 'srun "$1"'])
    ok = subprocess.run(["bash", "-c", script, "x", "fail"], env=env, timeout=20)
    assert ok.returncode == 3
    text = log.read_text()
    assert f"-m {slurm_end.MODULE} /st ore run0 run1 --signal  --status 3" in text, text
    log.unlink()
    p = subprocess.Popen(["bash", "-c", script, "x", "sleep"], env=env)
    time.sleep(1)
    t0 = time.time()
    p.terminate()
    assert p.wait(timeout=20) == 143
    text = log.read_text()
    assert "--signal TERM" in text and float(text.split()[0]) - t0 < 5, text


def _fake_slurm(bindir, sacct_out, scontrol_out="JobId=100 JobState=COMPLETING Reason=None"):
    bindir.mkdir(exist_ok=True)
    for name, out in (("sacct", sacct_out), ("scontrol", scontrol_out)):
        f = bindir / name
        f.write_text(f"#!/bin/bash\nprintf '%s\\n' '{out}'\n")
        f.chmod(0o755)


def test_finish_writes_the_verdict_once(tmp_path, monkeypatch):
    store = Store(tmp_path / "store")
    store.ensure_writable()
    store.write_version(RUN, "launch", to_patch(state=RunState.RUNNING), role="submitter")
    store.write_version(
        RUN, "dispatch", {"execution": {"backend": "slurm", "scheduler": {"job_id": JOB}}}
    )
    line = "\x1f".join(
        [
            JOB,
            JOB,
            "CANCELLED by 0",
            "0:0",
            "0:0",
            "None",
            "n1",
            "s",
            "2026-01-01T00:00:05",
            "debug",
            "cpu=1,mem=400M,node=1,billing=1",
        ]
    )
    _fake_slurm(tmp_path / "bin", line)
    monkeypatch.setenv("PATH", f"{tmp_path / 'bin'}:{os.environ['PATH']}")
    env = {"SLURM_JOB_ID": JOB, "SLURM_JOB_NODELIST": "n1"}
    msg = slurm_end.finish(store, RUN, signalled=True, srun_status=None, env=env)
    r = store.load(RUN)
    assert r.state == RunState.CANCELLED and r.state_source == "scheduler", msg
    assert r.execution.scheduler["end_script"]["scheduler_calls"] == 1
    assert "nothing to add" in slurm_end.finish(
        store, RUN, signalled=True, srun_status=None, env=env
    )


def test_finish_leaves_a_run_that_ended_by_itself(tmp_path, monkeypatch):
    """Its end stands; only what Slurm allocated is added (scontrol's TRES, one call)."""
    store = Store(tmp_path / "store")
    store.ensure_writable()
    f = Failure(cause=FailureCause.CODE_ERROR, type="ValueError", message="x", source="job")
    store.write_version(RUN, "end", end_patch(f, source="job"), role="job")
    _fake_slurm(tmp_path / "bin", "", "JobId=100 JobState=RUNNING Reason=None")  # no TRES
    monkeypatch.setenv("PATH", f"{tmp_path / 'bin'}:{os.environ['PATH']}")
    monkeypatch.setenv("RUNREC_SLURM_API", "cli")
    msg = slurm_end.finish(store, RUN, signalled=False, srun_status=1, env={"SLURM_JOB_ID": JOB})
    assert "nothing to add" in msg and len(store.version_files(RUN)) == 1
    tres = "cpu=2,mem=1G,node=1,billing=2,gres/gpu=1"
    _fake_slurm(
        tmp_path / "bin", "", f"JobId=100 Restarts=1 NodeList=n1 AllocTRES={tres} Reason=None"
    )
    msg = slurm_end.finish(store, RUN, signalled=False, srun_status=1, env={"SLURM_JOB_ID": JOB})
    r = store.load(RUN)
    assert r.state == RunState.FAILED and r.failure.cause == FailureCause.CODE_ERROR, msg
    a = r.execution.allocated
    assert (a.cpus, a.mem_mb, a.gpus, a.nodes, a.nodelist) == (2, 1024, 1, 1, "n1")
    assert a.tres == tres and a.source == "scontrol"
    assert r.execution.scheduler["requeues"] == 1


def test_main_never_fails(tmp_path, capsys):
    assert slurm_end.main([]) == 0
    assert slurm_end.main([str(tmp_path / "nostore"), "01nosuchrun"]) == 0
    assert "runrec:" in capsys.readouterr().err
    assert sys.executable  # the job's interpreter is what the batch lines call
