"""A command job (``submit_command``) on the node: start the recorded command line in its own
session, forward the scheduler's signals to it, and record its exit code as the outcome."""

from __future__ import annotations

import os
import signal
import subprocess
from collections.abc import Callable
from typing import Any

import cloudpickle

from runrec_cluster.job.outcome import now, write_end
from runrec_cluster.job.run import Run
from runrec_cluster.record import (
    Failure,
    FailureCause,
    RunRecord,
    RunState,
    end_patch,
    signal_failure,
    to_patch,
)
from runrec_cluster.store import Store

FORWARDED_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGUSR2)
NOT_STARTED_EXIT = 127  # the exit code of a command that could not be started (as a shell's)


def run_command(
    store: Store,
    run: Run,
    rec: RunRecord,
    children: list[subprocess.Popen[bytes]],
    on_start: Callable[[int], Any] | None = None,
) -> int:
    """Run the command of ``rec`` and return its exit code (negative: killed by that signal).
    Its process joins ``children`` (for the watchdog); ``on_start(pid)`` is told its pid."""
    ep = rec.entrypoint
    assert ep is not None
    env = dict(os.environ)
    env["RUNREC_STORE"] = store.root
    env["RUNREC_RUN_ID"] = rec.run_id
    env["RUNREC_RANK"] = str(run.rank)
    argv = list(ep.argv)
    if ep.call_blob:  # the unredacted command line, kept out of the record
        argv = cloudpickle.loads(store.get_blob(ep.call_blob))
    try:
        p = subprocess.Popen(argv, cwd=ep.cwd or None, env=env, start_new_session=True)
    except OSError as exc:
        failure = Failure(
            cause=FailureCause.CODE_ERROR,
            type=type(exc).__name__,
            message=f"cannot start {ep.argv[0]!r}: {exc.strerror or exc}",
            source="job",
        )
        store.write_version(
            rec.run_id,
            "end",
            end_patch(failure, source="job"),
            role="job",
        )
        return NOT_STARTED_EXIT
    children.append(p)
    if on_start is not None:
        on_start(p.pid)
    rc = _wait_forwarding_signals(p)
    if run.rank != 0:
        return rc
    patch = exit_patch(rc)
    log_dir = rec.execution.log_dir if rec.execution else None
    write_end(store, rec.run_id, log_dir, lambda _s: patch)
    return rc


def _wait_forwarding_signals(p: subprocess.Popen[bytes]) -> int:
    """Wait for ``p``, passing the signals a scheduler sends (``FORWARDED_SIGNALS``) on to its
    process group; the handlers found are put back after."""

    def forward(signum: int, _frame: Any) -> None:
        try:
            os.killpg(p.pid, signum)
        except OSError:
            pass

    previous = {}
    for sig in FORWARDED_SIGNALS:
        try:
            previous[sig] = signal.signal(sig, forward)
        except ValueError:  # not the main thread
            pass
    try:
        return p.wait()
    finally:  # a reused worker process (Ray) must get its own handlers back
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def exit_patch(rc: int) -> dict[str, Any]:
    """The end of a command run that exited with ``rc``: succeeded on 0, else failed (killed by
    a signal when ``rc`` is negative, else EXIT_CODE)."""
    patch: dict[str, Any] = {"exit_code": rc, "ended_at": now()}
    if rc == 0:
        patch.update(to_patch(state=RunState.SUCCEEDED, state_source="job"))
        return patch
    if rc < 0:
        failure = signal_failure(-rc, "the command", source="job")
    else:
        failure = Failure(
            cause=FailureCause.EXIT_CODE,
            type="ExitCode",
            message=f"the command exited with code {rc}",
            exit_code=rc,
            source="job",
        )
    patch.update(to_patch(state=RunState.FAILED, state_source="job", failure=failure))
    return patch
