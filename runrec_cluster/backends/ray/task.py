"""What runs inside the Ray worker: the task that records what only the task knows and runs the
job with ``job.execute`` (``entry``), and the small task that kills a run's worker for a
process that does not own the run's task (``kill_process``).
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from typing import Any

import ray

from runrec_cluster.capture import proc
from runrec_cluster.capture.hardware import check_expect
from runrec_cluster.job.execute import execute
from runrec_cluster.record import (
    Failure,
    FailureCause,
    NodeInfo,
    Process,
    RunRecord,
    RunState,
    end_patch,
)
from runrec_cluster.store import Store

# Ray's own resources; any other resource of a node is one of its features
STANDARD_RESOURCES = frozenset({"CPU", "GPU", "memory", "object_store_memory"})
_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGUSR2)


def entry(
    store_root: str, run_id: str, expect: dict[str, Any] | None, enforce_timeout: bool = True
) -> None:
    """The Ray task: record what only the task knows, then run the job with ``execute``.
    Returns nothing (the result is in the store, not in Ray's object store). Ray has no time
    limit: the job's own watchdog enforces ``timeout_min`` (``enforce_timeout``)."""
    ctx = ray.get_runtime_context()
    node_id = ctx.get_node_id()
    attempt_number = current_attempt_number()
    sched = _scheduler_facts(ctx, node_id, attempt_number)
    rec = Store(store_root).load(run_id)
    if rec.state == RunState.CANCELLED:
        return None  # cancelled by a process that could not cancel the Ray task itself
    features = node_resource_names(node_id)
    reapers: list[subprocess.Popen[bytes]] = []
    with _worker_left_as_found(store_root, run_id, rec, ctx):
        try:
            execute(
                store_root,
                run_id,
                scheduler=sched,
                rank=0,
                attempt=attempt_number + 1,
                enforce_timeout=enforce_timeout,
                features=features,
                node_name=node_id,
                hardware_check=_hardware_check(expect),
                on_command_start=lambda pid: reapers.append(start_reaper(pid)),
            )
        finally:
            for r in reapers:
                stop_reaper(r)
    return None


def _scheduler_facts(ctx: Any, node_id: str, attempt_number: int) -> dict[str, Any]:
    """What the record keeps under execution.scheduler, known only inside the task."""
    return {
        "task_id": ctx.get_task_id(),
        "ray_job_id": ctx.get_job_id(),
        "node_id": node_id,
        "node_ip": ray.util.get_node_ip_address(),
        "worker_id": ctx.get_worker_id(),
        "worker_pid": os.getpid(),
        "attempt_number": attempt_number,
        "assigned_resources": ctx.get_assigned_resources(),
    }


def _hardware_check(
    expect: dict[str, Any] | None,
) -> Callable[[RunRecord, NodeInfo], dict[str, Any]] | None:
    """The hardware class check ``execute`` runs on the node (None: nothing expected)."""
    if not expect:
        return None

    def check(rec: RunRecord, node: NodeInfo) -> dict[str, Any]:
        ok, bad = check_expect(expect, node)
        return {"hardware_match": ok, "hardware_mismatches": bad}

    return check


@contextlib.contextmanager
def _worker_left_as_found(store_root: str, run_id: str, rec: RunRecord, ctx: Any) -> Iterator[None]:
    """A Ray worker runs many tasks: the job runs where it was submitted (as on the other
    backends, when shared), with SIGTERM recorded; signal handlers, environment and working
    directory are restored afterwards."""
    main = threading.current_thread() is threading.main_thread()
    handlers = {s: signal.getsignal(s) for s in _SIGNALS} if main else {}
    saved_env = {k: os.environ.get(k) for k in ("RUNREC_STORE", "RUNREC_RUN_ID")}
    saved_cwd = os.getcwd()
    ep = rec.entrypoint
    if (
        ep is not None
        and ep.kind == "function"
        and ep.cwd
        and os.path.isdir(ep.cwd)
        and not (ctx.runtime_env or {}).get("working_dir")
    ):
        os.chdir(ep.cwd)
    if main:
        signal.signal(signal.SIGTERM, record_sigterm(store_root, run_id, handlers[signal.SIGTERM]))
    try:
        yield
    finally:
        for s, h in handlers.items():
            if h is not None:
                signal.signal(s, h)
        for k, v in saved_env.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        with contextlib.suppress(OSError):
            os.chdir(saved_cwd)


def record_sigterm(store_root: str, run_id: str, ray_handler: Any) -> Any:
    """Ray stops a worker with SIGTERM (its driver exited, `ray stop`, a node drain) and its
    handler raises SystemExit inside the task, which the job would record as a code error.
    Record the signal first (the first end the job writes stays), then let Ray exit."""

    def handler(signum: int, frame: Any) -> None:
        failure = Failure(
            cause=FailureCause.KILLED,
            type="Signal",
            message=(
                "the Ray worker running the job received SIGTERM: Ray stops a task's worker when "
                "the driver that submitted it exits, on `ray stop`, or when the node is drained"
            ),
            signal=int(signum),
            source="job",
        )
        try:
            Store(store_root).write_version(
                run_id, "end", end_patch(failure, source="job"), role="job"
            )
        finally:
            if callable(ray_handler):
                ray_handler(signum, frame)
            else:
                raise SystemExit(128 + signum)

    return handler


def current_attempt_number() -> int:
    """Ray's attempt number of the running task (0 first, +1 per Ray retry)."""
    try:  # Ray keeps it on its (private) core worker only
        worker = ray._private.worker.global_worker
        return int(worker.core_worker.get_current_task_attempt_number())
    except Exception:
        return 0


def node_resource_names(node_id: str) -> list[str]:
    """The node's custom resources (``hwclass-a100``, ``accelerator_type:A100``): its features."""
    try:
        nodes = ray.nodes()
    except Exception:
        return []
    for n in nodes:
        if n.get("NodeID") == node_id:
            res = n.get("Resources") or {}
            return sorted(
                k for k in res if k not in STANDARD_RESOURCES and not k.startswith("node:")
            )
    return []


# A command runs in its own session; a worker killed hard (OOM monitor, crash, kill -9) would
# leave it running. This tiny process ends the command's group unless told "done" first.
_REAPER = """\
import os, signal, sys, time
pg = int(sys.argv[1])
if sys.stdin.buffer.read() == b"done":
    sys.exit(0)
for sig, wait in ((signal.SIGTERM, 5.0), (signal.SIGKILL, 0.0)):
    try:
        os.killpg(pg, sig)
    except (ProcessLookupError, PermissionError):
        sys.exit(0)
    end = time.monotonic() + wait
    while time.monotonic() < end:
        time.sleep(0.1)
        try:
            os.killpg(pg, 0)
        except ProcessLookupError:
            sys.exit(0)
"""


def start_reaper(pgid: int) -> subprocess.Popen[bytes]:
    """Start the process that ends process group ``pgid`` if this worker dies first."""
    return subprocess.Popen(
        [sys.executable, "-I", "-c", _REAPER, str(pgid)],
        stdin=subprocess.PIPE,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )


def stop_reaper(p: subprocess.Popen[bytes]) -> None:
    """The command ended: tell its reaper so, and let it exit."""
    try:
        if p.stdin is not None:
            p.stdin.write(b"done")
            p.stdin.close()
        p.wait(timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        pass


def kill_process(who: dict[str, Any]) -> str:
    """A task pinned to a run's node: SIGKILL its worker, if it is still that process."""
    p = Process(**who)
    alive = proc.is_alive(p)
    if alive is None:
        return f"process {p.pid} runs on host {p.host}, not on this node ({socket.gethostname()})"
    if not alive:
        return "gone"
    os.kill(p.pid, signal.SIGKILL)
    return "killed"
