"""The checkpoint hook (``Run.on_stop``, ``Run.attempt``) in real processes: a stop signal runs
the function once, before the handler that was there, and the process then ends as it would
have."""

from __future__ import annotations

import signal
import subprocess
import sys
import textwrap
import time

import pytest

PROG = textwrap.dedent(
    """
    import os, signal, sys, time
    from runrec_cluster.job.run import Run, install_stop_handler
    from runrec_cluster.store import Store

    out = sys.argv[1]
    run = Run(Store(os.path.dirname(out)), "01m94n87956zq4gkjzmedwa55v", attempt=2)
    if sys.argv[2] == "chained":  # as job.execute does: a handler was there (submitit's)
        signal.signal(signal.SIGTERM, lambda s, f: open(out, "a").write("previous\\n"))
        install_stop_handler(run)
    run.on_stop(lambda signum: open(out, "a").write(f"saved {signum} attempt {run.attempt}\\n"))
    print("ready", flush=True)
    for _ in range(20):
        time.sleep(0.1)
    open(out, "a").write("survived\\n")
    """
)


@pytest.mark.parametrize("how", ["default", "chained"])
def test_on_stop_runs_once_then_the_signal_does_what_it_did(tmp_path, how):
    out = tmp_path / "out.txt"
    p = subprocess.Popen(
        [sys.executable, "-c", PROG, str(out), how], stdout=subprocess.PIPE, text=True
    )
    assert p.stdout.readline().strip() == "ready"
    p.send_signal(signal.SIGTERM)
    if how == "chained":
        time.sleep(0.5)
        p.send_signal(signal.SIGTERM)  # a second signal: the function does not run again
        assert p.wait(timeout=30) == 0
        assert out.read_text().splitlines() == [
            "saved 15 attempt 2",
            "previous",
            "previous",
            "survived",
        ]
    else:  # no handler was there: SIGTERM still ends the process, after the checkpoint
        assert p.wait(timeout=30) == -signal.SIGTERM
        assert out.read_text().splitlines() == ["saved 15 attempt 2"]
