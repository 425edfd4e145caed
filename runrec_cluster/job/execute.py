"""The job side, the same on every backend: complete the record where the job runs.

``execute(store_root, run_id)`` is what a backend calls on the compute node (the local backend
in a fresh interpreter, Slurm through submitit, Ray inside a task). It captures the node, marks
the run running, runs the function or command (``job.commands``), and records the outcome:
result, or failure with its traceback as text (``job.outcome``, which also saves the end of the
run in a rescue directory when the store refuses it). Only this module, ``job.commands`` (a
command's unredacted argv) and an explicit rerun unpickle the call.

Run as ``python -m runrec_cluster.job.execute STORE RUN_ID`` for the local backend.
"""

from __future__ import annotations

import os
import subprocess
import sys
import traceback
from collections.abc import Callable
from typing import Any

import cloudpickle
import msgspec
import msgspec.structs

from runrec_cluster.capture import env as envcap
from runrec_cluster.capture import node as nodecap
from runrec_cluster.capture import proc
from runrec_cluster.capture.hardware import HardwareClass
from runrec_cluster.capture.redact import redact_text
from runrec_cluster.errors import CorruptRecord, StoreError
from runrec_cluster.job.commands import run_command
from runrec_cluster.job.outcome import (
    encode_result,
    now,
    record_failure,
    write_end,
)
from runrec_cluster.job.run import Run, set_current
from runrec_cluster.job.watchdog import Watchdog
from runrec_cluster.record import (
    CONTEXT_KEY,
    NodeInfo,
    RunRecord,
    RunState,
    RuntimeLibs,
    to_patch,
)
from runrec_cluster.store import Store

__all__ = ["execute", "main", "node_facts", "node_patch"]

HardwareCheck = Callable[[RunRecord, NodeInfo], dict[str, Any]]


def node_facts(
    store: Store,
    rec: RunRecord,
    *,
    rank: int = 0,
    features: list[str] | None = None,
    node_name: str = "",
) -> NodeInfo:
    """Capture this node and its package drift against the launch environment."""
    node = nodecap.capture_node(rank=rank, features=features)
    pkgs = envcap.packages()
    drift: dict[str, list[str | None]] = {}
    if rec.launch_env is not None and rec.launch_env.packages_blob:
        try:
            launch_pkgs = store.get_obj(rec.launch_env.packages_blob, dict[str, str])
            drift = envcap.package_drift(launch_pkgs, pkgs)
        except Exception:
            drift = {}
    return msgspec.structs.replace(
        node,
        packages_blob=store.put_obj(pkgs),
        package_drift=drift,
        env_vars=envcap.selected_env(),
        scheduler_node=node_name,
    )


# what a node's record keeps per run; the rest (hardware, OS, drivers, packages) is the same
# for every run on that node and goes into a shared context blob (record schema v2)
_NODE_OWN = ("captured_at", "env_vars")


def node_patch(store: Store, node: NodeInfo) -> dict[str, Any]:
    """The ``nodes`` part of a job's start version: the node's facts as a shared context blob
    (``Store.put_context``; written once per node and environment, however many runs land
    there), and only the per-run fields inline. Readers merge them back (``Store.versions``)."""
    entry = to_patch(nodes=[node])["nodes"][0]
    shared = {k: v for k, v in entry.items() if k not in _NODE_OWN}
    own = {k: v for k, v in entry.items() if k in _NODE_OWN}
    try:
        digest = store.put_context({"nodes": [shared]})
    except StoreError:
        return {"nodes": [entry]}  # the whole entry inline; the version write says what failed
    return {CONTEXT_KEY: digest, "nodes": [own]}


def start_patch(
    store: Store,
    rec: RunRecord,
    node: NodeInfo,
    *,
    rank: int = 0,
    attempt: int | None = None,
    scheduler: dict[str, Any] | None = None,
    hardware_check: HardwareCheck | None = None,
) -> dict[str, Any]:
    """The job's first version: the node, the hardware check, the scheduler's ids, and (rank 0)
    the run marked running by this process."""
    patch: dict[str, Any] = node_patch(store, node)
    if hardware_check is not None:  # a backend's own check (rec, node) -> execution patch
        patch["execution"] = hardware_check(rec, node)
    elif rank == 0 and rec.execution is not None and rec.execution.hardware_expect:
        hw = HardwareClass(rec.execution.hardware or "", expect=dict(rec.execution.hardware_expect))
        ok, bad = hw.check(node)
        patch["execution"] = {"hardware_match": ok, "hardware_mismatches": bad}
    if scheduler:
        patch.setdefault("execution", {})["scheduler"] = scheduler
    if rank == 0:
        me = proc.identity()
        patch.update(
            to_patch(
                state=RunState.RUNNING,
                state_source="job",
                started_at=now(),
                # unless the local supervisor recorded this very process already
                process=me if rec.process != me else None,
            )
        )
        patch["attempt"] = attempt or rec.attempt
    return patch


def execute(
    store_root: str,
    run_id: str,
    *,
    scheduler: dict[str, Any] | None = None,
    rank: int = 0,
    attempt: int | None = None,
    enforce_timeout: bool = True,
    features: list[str] | None = None,
    node_name: str = "",
    hardware_check: HardwareCheck | None = None,
    on_command_start: Callable[[int], Any] | None = None,
) -> Any:
    """Run a recorded job here. Returns the function's result (or the command's exit code);
    re-raises the function's exception after recording it. ``on_command_start(pid)`` is called
    when a command's process has started (the Ray backend uses it to end the command if the
    worker dies)."""
    store = Store(store_root)
    rec = store.load(run_id)
    node = node_facts(store, rec, rank=rank, features=features, node_name=node_name)
    patch = start_patch(
        store,
        rec,
        node,
        rank=rank,
        attempt=attempt,
        scheduler=scheduler,
        hardware_check=hardware_check,
    )
    store.write_version(run_id, "start" if rank == 0 else "node", patch, role="job")
    run = Run(store, run_id, rank=rank, pinned=rec.rerun.pinned if rec.rerun else {})
    set_current(run)
    os.environ["RUNREC_STORE"] = store.root
    os.environ["RUNREC_RUN_ID"] = run_id
    children: list[subprocess.Popen[bytes]] = []
    timeout_min = rec.execution.resources.timeout_min if rec.execution else None
    dog = (
        Watchdog(store, run_id, timeout_min * 60, children)
        if (enforce_timeout and timeout_min)
        else None
    )
    if dog:
        dog.start()
    try:
        if rec.entrypoint is None:
            raise CorruptRecord(
                f"run {run_id} has no entrypoint in its launch record: the record is incomplete "
                "or damaged. Check it with `runrec fsck`, and submit the run again."
            )
        if rec.entrypoint.kind == "command":
            return run_command(store, run, rec, children, on_command_start)
        return _call_function(store, rec, node, rank, dog)
    finally:
        if dog:
            dog.cancel()
        set_current(None)


def _call_function(
    store: Store, rec: RunRecord, node: NodeInfo, rank: int, dog: Watchdog | None
) -> Any:
    """Unpickle the recorded call, call it, and record its outcome (the end on rank 0)."""
    ep = rec.entrypoint
    assert ep is not None
    log_dir = rec.execution.log_dir if rec.execution else None
    if ep.call_blob is None:
        raise CorruptRecord(
            f"run {rec.run_id} has no recorded call: the record is incomplete or damaged. "
            "Check it with `runrec fsck`, and submit the run again."
        )
    fn, args, kwargs = cloudpickle.loads(store.get_blob(ep.call_blob))
    try:
        value = fn(*args, **kwargs)
    except BaseException as exc:
        if dog:
            dog.cancel()
        record_failure(store, rec.run_id, rank, exc, log_dir)
        raise
    if dog:
        dog.cancel()
    if rank != 0:
        return value
    end_node = msgspec.structs.replace(node, runtime=nodecap.runtime_libs())
    # the node's facts again only when the run loaded libraries (CUDA, cuDNN, NCCL)
    none = RuntimeLibs()
    changed = (end_node.runtime or none) != (node.runtime or none)
    end_nodes = [end_node] if changed else None
    ended_at = now()
    write_end(
        store,
        rec.run_id,
        log_dir,
        lambda s: to_patch(
            state=RunState.SUCCEEDED,
            state_source="job",
            ended_at=ended_at,
            result=encode_result(s, value),
            nodes=end_nodes,
        ),
    )
    return value


def main(argv: list[str] | None = None) -> int:
    """``python -m runrec_cluster.job.execute STORE RUN_ID``: the local backend's job process.
    Exits 0 when a function run succeeded, a command's own exit code, else 1."""
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 2:
        print("usage: python -m runrec_cluster.job.execute STORE RUN_ID", file=sys.stderr)
        return 2
    try:
        out = execute(args[0], args[1])
    except BaseException:  # recorded already; the log gets the same redacted text
        sys.stderr.write(redact_text(traceback.format_exc()))
        return 1
    store = Store(args[0])
    rec = store.load(args[1])
    if rec.entrypoint and rec.entrypoint.kind == "command":
        return int(out) if isinstance(out, int) and out >= 0 else 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
