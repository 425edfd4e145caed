"""Clock skew between the submit host and the node, with a real local job whose clock is off.

The node (the local supervisor and the job process) runs under libfaketime (``LD_PRELOAD``,
``FAKETIME=-1h`` / ``+1h``; Debian package ``faketime``), so every time it writes is an hour off
the submitter's. What we show, and what these tests hold:

- versions are folded in ``seq`` order, never by their clocks: the end is last even when its
  clock says it was written before the launch;
- ``submitted`` (submit host's clock) and ``started`` / ``ended`` (node's clock) are shown as each
  host wrote them: with skew, started may read before submitted;
- the duration is ``ended - started``, both from the node's clock when the job ends its own
  run: right whatever the skew. When the end is recorded by another host (the submitter
  inferring that a killed job is gone) and the clocks put it before the start, the duration is
  unknown (``None``; ``ls`` shows ``-``), never a negative number.
"""

from __future__ import annotations

import glob
import json
import os
import signal
import sys
import time

import cloudpickle
import jobfns
import pytest
from helpers import run_cli
from helpers import write_figures as _results

import runrec_cluster as rr

# the job function below travels by value: the job process cannot import this test module
cloudpickle.register_pickle_by_value(sys.modules[__name__])

SKEWS = {"-1h": -3600.0, "+1h": 3600.0}


def _libfaketime() -> str | None:
    found = sorted(glob.glob("/usr/lib/*/faketime/libfaketime.so.1")) + sorted(
        glob.glob("/usr/lib/faketime/libfaketime.so.1")
    )
    return found[0] if found else None


LIB = _libfaketime()
pytestmark = pytest.mark.skipif(
    LIB is None, reason="libfaketime is not installed (apt-get install faketime)"
)


def _skewed_python(tmp_path, skew: str) -> str:
    """An interpreter whose clock is off by ``skew``: what the local backend runs the supervisor
    with (``local_python``); the job processes it starts inherit the skew."""
    # both clocks are faked: with FAKETIME_DONT_FAKE_MONOTONIC, libfaketime 0.9.10 breaks
    # Python 3.11's time.sleep (EINVAL, libfaketime issue #426). With the monotonic clock faked
    # too, timed waits on a thread condition hang (#390): these jobs use none (no timeout_min).
    path = tmp_path / f"python-skewed{skew}"
    path.write_text(
        f"#!/bin/sh\nexport LD_PRELOAD='{LIB}' FAKETIME='{skew}'\nexec '{sys.executable}' \"$@\"\n"
    )
    path.chmod(0o755)
    return str(path)


def node_clock(seconds: float) -> float:
    """The job: sleep a little, return what its clock says."""
    import time

    time.sleep(seconds)
    return time.time()


@pytest.mark.parametrize("skew", list(SKEWS))
def test_skewed_node_folds_by_seq_and_shows_a_sane_duration(store, repo, tmp_path, skew):
    offset = SKEWS[skew]
    ex = rr.Executor(
        backend="local",
        store=store,
        name="skewed",
        cwd=repo,
        local_python=_skewed_python(tmp_path, skew),
    )
    t_submit = time.time()
    h = ex.submit(node_clock, 0.5)
    node_time = h.result(timeout=120)
    t_back = time.time()
    # the node's clock really was off by the skew
    assert t_submit + offset - 60 < node_time < t_back + offset + 60

    rec = store.load(h.run_id)
    assert rec.state == rr.RunState.SUCCEEDED and rec.state_source == "job"
    vs = store.versions(h.run_id)
    by_seq = [v.event for v in sorted(vs, key=lambda v: v.seq)]
    by_clock = [v.event for v in sorted(vs, key=lambda v: v.written_at)]
    assert by_seq[0] == "launch" and by_seq[-1] == "end"
    launch = next(v for v in vs if v.event == "launch")
    end = next(v for v in vs if v.event == "end")
    # the end's clock reads an hour before (-1h) or after (+1h) the launch; it folds last anyway
    assert abs((end.written_at - launch.written_at).total_seconds() - offset) < 300
    assert (by_clock != by_seq) == (offset < 0)
    # each time as its host wrote it
    queued = (rec.started_at - rec.submitted_at).total_seconds()
    assert abs(queued - offset) < 300
    # the duration: both ends from the node's clock, so the skew cancels
    assert 0.5 <= rec.duration_s < abs(offset) / 2

    out = run_cli("ls", "--json", "--store", store.root)
    assert out.returncode == 0, out.stderr
    row = next(r for r in json.loads(out.stdout) if r["run_id"] == h.run_id)
    assert row["state"] == "succeeded" and row["duration_s"] == rec.duration_s
    out = run_cli("ls", "--store", store.root)
    assert out.returncode == 0 and "succeeded" in out.stdout
    out = run_cli("show", h.run_id, "--store", store.root)
    assert out.returncode == 0, out.stderr
    assert f"duration: {rec.duration_s:.2f} s" in out.stdout
    assert f"started: {rec.started_at.isoformat()}" in out.stdout
    out = run_cli(
        "table", "--columns", "run_id,state,duration_s", "--format", "json", "--store", store.root
    )
    assert out.returncode == 0, out.stderr
    trow = next(r for r in json.loads(out.stdout) if r["run_id"] == h.run_id)
    assert trow["state"] == "succeeded" and trow["duration_s"] == pytest.approx(rec.duration_s)
    _results(
        f"test_skewed_node_folds_by_seq_and_shows_a_sane_duration[{skew}]",
        f"A real local job on a node whose clock is {skew} off (libfaketime): folded by seq, "
        "state succeeded, duration from the node's clock; started-submitted shows the skew.",
        skew_s=offset,
        node_clock_offset_s=round(node_time - (t_submit + t_back) / 2, 1),
        started_minus_submitted_s=round(queued, 1),
        duration_s=round(rec.duration_s, 2),
        versions=len(vs),
        order_by_clock_differs=by_clock != by_seq,
    )


def test_end_inferred_on_the_submit_host_never_gives_a_negative_duration(store, repo, tmp_path):
    """The node's clock is an hour ahead; its job and supervisor are killed (-9), so the next
    reader on the submit host records the end with its own clock: before the start."""
    ex = rr.Executor(
        backend="local",
        store=store,
        name="skew-killed",
        cwd=repo,
        local_python=_skewed_python(tmp_path, "+1h"),
    )
    pidfile = tmp_path / "pid"
    h = ex.submit(jobfns.write_pid_and_sleep, str(pidfile), 120)
    deadline = time.monotonic() + 120
    while not (pidfile.exists() and pidfile.read_text()):
        assert time.monotonic() < deadline, "the job did not start"
        time.sleep(0.1)
    rec = store.load(h.run_id)
    assert rec.state == rr.RunState.RUNNING and rec.started_at is not None
    os.kill(rec.execution.scheduler["supervisor"]["pid"], signal.SIGKILL)
    os.kill(int(pidfile.read_text()), signal.SIGKILL)
    time.sleep(0.3)

    out = run_cli("ls", "--json", "--store", store.root)
    assert out.returncode == 0, out.stderr
    row = next(r for r in json.loads(out.stdout) if r["run_id"] == h.run_id)
    rec = store.load(h.run_id)
    assert rec.state == rr.RunState.FAILED and rec.failure.source == "inferred"
    assert rec.ended_at < rec.started_at  # two clocks: the end reads an hour before the start
    assert rec.duration_s is None and row["duration_s"] is None
    out = run_cli("ls", "--store", store.root)
    assert out.returncode == 0 and "killed" in out.stdout
    line = next(x for x in out.stdout.splitlines() if x.startswith(h.run_id[:10]))
    assert "ms" not in line and "-" in line.split()  # the duration column shows "-"
    out = run_cli("show", h.run_id, "--store", store.root)
    assert out.returncode == 0, out.stderr
    assert "duration: unknown" in out.stdout and "clock" in out.stdout
    _results(
        "test_end_inferred_on_the_submit_host_never_gives_a_negative_duration",
        "Node clock +1h, job and supervisor killed -9, end inferred on the submit host: the end "
        "reads before the start, the duration is unknown (None, '-' in ls), show says why.",
        ended_minus_started_s=round((rec.ended_at - rec.started_at).total_seconds(), 1),
        duration_s=rec.duration_s,
    )
