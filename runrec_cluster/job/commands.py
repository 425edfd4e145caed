"""A command job (``submit_command``) on the node: start the recorded command line in its own
session, forward the scheduler's signals to it, and record its exit code as the outcome.

The command's stderr passes through the job (``StderrTail``): every byte goes on to the job's own
stderr (the run's log) unchanged, and the last lines are kept so that a failure says what the
command said last (redacted, at most ``TAIL_LINES`` lines / ``TAIL_BYTES`` bytes)."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Callable, Mapping
from typing import Any

import cloudpickle
import msgspec.structs

from runrec_cluster.capture import withhold
from runrec_cluster.capture.redact import redact_text
from runrec_cluster.errors import RunrecError, SecretsUnavailable
from runrec_cluster.job import argparse_capture
from runrec_cluster.job.libs import RunLibs
from runrec_cluster.job.outcome import now, record_failure, write_end
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
CANCEL_WAIT_S = 1.0  # how long a command that exited non-zero on a forwarded signal waits for
# the backend's record of a cancel (``recorded_cancel``)
TAIL_LINES = 20  # a failed command's message keeps at most this many last lines of its stderr
TAIL_BYTES = 4096  # ... and at most this many bytes of them
_DRAIN_S = 2.0  # how long to wait for stderr to close after the command exited (a grandchild
# that inherited it may keep it open: the tail is then what arrived until then)


class StderrTail:
    """A pipe for a command's stderr: a thread copies everything to the job's own stderr (fd 2)
    and keeps the last ``TAIL_BYTES`` bytes."""

    def __init__(self) -> None:
        self.read_fd, self.write_fd = os.pipe()
        self.buf = bytearray()
        self.thread = threading.Thread(target=self._pump, name="runrec-stderr", daemon=True)

    def start(self) -> None:
        """Start copying; the parent's copy of the write end is closed (the child has its own)."""
        os.close(self.write_fd)
        self.thread.start()

    def close(self) -> None:
        """Close both ends (the command could not be started)."""
        for fd in (self.read_fd, self.write_fd):
            try:
                os.close(fd)
            except OSError:
                pass

    def _pump(self) -> None:
        try:
            while chunk := os.read(self.read_fd, 65536):
                _write_all(2, chunk)
                self.buf += chunk
                if len(self.buf) > 2 * TAIL_BYTES:
                    del self.buf[: len(self.buf) - TAIL_BYTES]
        except OSError:
            pass
        finally:
            os.close(self.read_fd)

    def tail(self) -> str:
        """The last lines the command wrote to stderr, redacted and bounded ("" when none)."""
        self.thread.join(_DRAIN_S)
        data = bytes(self.buf[-TAIL_BYTES:])
        text = data.decode("utf-8", errors="replace")
        lines = text.splitlines()[-TAIL_LINES:]
        if len(data) == TAIL_BYTES and lines and len(lines) < TAIL_LINES:
            lines = lines[1:] or lines  # the first line is cut: drop it unless it is all there is
        return redact_text("\n".join(lines).strip("\n"))


def _write_all(fd: int, data: bytes) -> None:
    try:
        while data:
            data = data[os.write(fd, data) :]
    except OSError:  # the job's stderr is gone: the tail is still kept
        pass


def run_command(
    store: Store,
    run: Run,
    rec: RunRecord,
    children: list[subprocess.Popen[bytes]],
    on_start: Callable[[int], Any] | None = None,
    libs: RunLibs | None = None,
) -> int:
    """Run the command of ``rec`` and return its exit code (negative: killed by that signal).
    Its process joins ``children`` (for the watchdog); ``on_start(pid)`` is told its pid;
    ``libs`` samples its process tree's loaded libraries, carried by the end version. The
    command line items withheld from the store come from their owner-only file (a missing one
    fails the run, cause ``infrastructure``, before the command starts); rank 0 removes the
    file when the run ends, whatever the outcome (capture/withhold.py)."""
    ep = rec.entrypoint
    assert ep is not None
    try:
        try:
            values = withhold.job_values(rec.run_id, ep)
        except SecretsUnavailable as exc:
            extra: dict[str, Any] = {}
            if libs is not None:
                libs.not_sampled = "the command was not started: its withheld values are missing"
                extra = libs.end_fields()
            log_dir = rec.execution.log_dir if rec.execution else None
            record_failure(store, rec.run_id, run.rank, exc, log_dir, extra=extra)
            raise
        argv = command_argv(store, rec, values)
        return _run(store, run, rec, argv, children, on_start, libs)
    finally:
        if run.rank == 0:
            withhold.discard(rec.run_id, ep.secrets_dir)


def _run(
    store: Store,
    run: Run,
    rec: RunRecord,
    argv: list[str],
    children: list[subprocess.Popen[bytes]],
    on_start: Callable[[int], Any] | None,
    libs: RunLibs | None,
) -> int:
    ep = rec.entrypoint
    assert ep is not None
    env = dict(os.environ)
    env["RUNREC_STORE"] = store.root
    env["RUNREC_RUN_ID"] = rec.run_id
    env["RUNREC_RANK"] = str(run.rank)
    if libs is not None:  # its maps at exit (first: argparse's sitecustomize chains to it)
        libs.prepare_command(env)
    argv_capture = argparse_capture.prepare(env, rec, store)  # its argparse options
    err = StderrTail()
    try:
        p = subprocess.Popen(
            argv, cwd=ep.cwd or None, env=env, start_new_session=True, stderr=err.write_fd
        )
    except OSError as exc:
        err.close()
        failure = not_started_failure(exc, argv[0], ep.argv[0], env.get("PATH", ""))
        extra: dict[str, Any] = {}
        if libs is not None:
            libs.not_sampled = "the command could not be started"
            extra = libs.end_fields()
        store.write_version(
            rec.run_id,
            "end",
            {**extra, **end_patch(failure, source="job")},
            role="job",
        )
        return NOT_STARTED_EXIT
    if libs is not None:
        libs.start_command(p.pid)
    err.start()
    children.append(p)
    if on_start is not None:
        on_start(p.pid)
    signalled: list[int] = []
    rc = _wait_forwarding_signals(p, signalled, libs.sample if libs is not None else None)
    lib_fields = libs.end_fields() if libs is not None else {}
    if run.rank != 0:
        if lib_fields:
            store.write_version(rec.run_id, "libraries", lib_fields, role="job")
        return rc
    patch = exit_patch(rc, err.tail() if rc != 0 else "")
    cancel = recorded_cancel(store, rec.run_id) if signalled and rc != 0 else None
    if cancel is not None:  # it ended on the signal a cancel sent: the cancel is the outcome
        patch = to_patch(
            state=RunState.CANCELLED,
            state_source="job",
            failure=cancel,
            exit_code=rc,
            ended_at=patch["ended_at"],
        )
    patch.update(lib_fields)
    patch.update(argparse_capture.collect(argv_capture))  # config: argv / default
    log_dir = rec.execution.log_dir if rec.execution else None
    write_end(store, rec.run_id, log_dir, lambda _s: patch)
    return rc


def command_argv(
    store: Store, rec: RunRecord, values: Mapping[str, Any] | None = None
) -> list[str]:
    """The command line as it runs: the recorded argv with the items withheld from the store
    put back from ``values`` (``withhold.job_values``; without them, those items stay as
    recorded: redacted). A record from before withholding pickled its real argv in
    ``Entrypoint.call_blob``: that one is used as it is."""
    ep = rec.entrypoint
    assert ep is not None
    if ep.call_blob:  # an older record: the unredacted command line, pickled in the store
        return list(cloudpickle.loads(store.get_blob(ep.call_blob)))
    return withhold.provide_argv(list(ep.argv), values or {})


def recorded_cancel(store: Store, run_id: str, wait_s: float = CANCEL_WAIT_S) -> Failure | None:
    """The cancel of the run recorded in the store (``Backend.record_cancel``), asked for up to
    ``wait_s`` seconds (a backend records it right after sending the signal the command ended
    on), or None: the signal came from elsewhere (a time limit, a kill)."""
    end = time.monotonic() + wait_s
    while True:
        try:
            f = store.load(run_id, problems=[]).failure
        except RunrecError:
            return None
        if f is not None and f.cause == FailureCause.CANCELLED:
            return f
        if time.monotonic() >= end:
            return None
        time.sleep(0.1)


def _wait_forwarding_signals(
    p: subprocess.Popen[bytes], signalled: list[int], before: Callable[[], None] | None = None
) -> int:
    """Wait for ``p``, passing the signals a scheduler sends (``FORWARDED_SIGNALS``) on to its
    process group (and noting them in ``signalled``; ``before()`` is called first: a last
    sample of the tree); the handlers found are put back after."""

    def forward(signum: int, _frame: Any) -> None:
        signalled.append(signum)
        if before is not None:
            try:
                before()
            except Exception:  # the signal is passed on whatever happens here
                pass
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


def not_started_failure(exc: OSError, executable: str, shown: str, path: str) -> Failure:
    """Why the command could not be started: EXECUTABLE_NOT_FOUND when the executable itself is
    missing (not on ``path``, or its path does not exist), else CODE_ERROR (not executable, the
    working directory is gone...). ``shown`` is the executable as recorded (redacted)."""
    if isinstance(exc, FileNotFoundError) and exc.filename in (executable, None):
        where = (
            "the path does not exist"
            if os.sep in executable
            else f"no such executable on PATH on {socket.gethostname()} (PATH={path})"
        )
        return Failure(
            cause=FailureCause.EXECUTABLE_NOT_FOUND,
            type="ExecutableNotFound",
            message=(
                f"cannot start {shown!r}: {where}. Check the command's spelling, install it on "
                "the node, or give its full path; then submit the run again."
            ),
            exit_code=NOT_STARTED_EXIT,
            source="job",
        )
    return Failure(
        cause=FailureCause.CODE_ERROR,
        type=type(exc).__name__,
        message=f"cannot start {shown!r}: {exc.strerror or exc}"
        + (f" ({exc.filename})" if exc.filename and exc.filename != executable else ""),
        source="job",
    )


def exit_patch(rc: int, stderr_tail: str = "") -> dict[str, Any]:
    """The end of a command run that exited with ``rc``: succeeded on 0, else failed (killed by
    a signal when ``rc`` is negative, else EXIT_CODE); a failure's message ends with the last
    lines of the command's stderr (``stderr_tail``, redacted already) when it wrote any."""
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
    if stderr_tail:
        failure = msgspec.structs.replace(
            failure, message=f"{failure.message}; its last stderr lines:\n{stderr_tail}"
        )
    patch.update(to_patch(state=RunState.FAILED, state_source="job", failure=failure))
    return patch
