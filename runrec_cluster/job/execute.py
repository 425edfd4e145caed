"""The job side, the same on every backend: complete the record where the job runs.

``execute(store_root, run_id)`` is what a backend calls on the compute node (the local backend
in a fresh interpreter, Slurm through submitit, Ray inside a task). It captures the node, marks
the run running, runs the function or command (``job.commands``), and records the outcome:
result, or failure with its traceback as text (``job.outcome``, which also saves the end of the
run in a rescue directory when the store refuses it). Only this module, ``job.commands`` (the
pickled argv of a command recorded before withholding) and an explicit rerun unpickle the call.

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
from runrec_cluster.capture import interpreter, proc, withhold
from runrec_cluster.capture import node as nodecap
from runrec_cluster.capture.hardware import mismatch_failure, node_verdict
from runrec_cluster.capture.redact import redact_text
from runrec_cluster.errors import CorruptRecord, JobFailed, SecretsUnavailable, StoreError
from runrec_cluster.job.commands import command_argv, run_command
from runrec_cluster.job.libs import RunLibs, not_yet, record_on_sigterm
from runrec_cluster.job.outcome import (
    encode_result,
    now,
    record_failure,
    write_end,
)
from runrec_cluster.job.run import Run, current_run, install_stop_handler, set_current
from runrec_cluster.job.watchdog import Watchdog
from runrec_cluster.record import (
    CONTEXT_KEY,
    NodeInfo,
    RunRecord,
    RunState,
    end_patch,
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
    """Capture this node, the interpreter of the user's code here, and its package drift
    against the launch environment. For a command that interpreter is the command's (resolved
    on this node's PATH, shebangs, ``python -m``; probed once per interpreter and environment,
    ``capture.interpreter``) and drift compares it with the same command's interpreter on the
    submitting host; for a function run it is this job's Python, against the submitter's."""
    node = nodecap.capture_node(rank=rank, features=features)
    ep, le = rec.entrypoint, rec.launch_env
    launch_blob = le.packages_blob if le is not None else None
    if ep is not None and ep.kind == "command":
        interp, pkgs = interpreter.capture(
            command_argv(store, rec), cwd=ep.cwd or None, put_obj=store.put_obj
        )
        launch_blob = le.interpreter.packages_blob if le and le.interpreter else None
    else:
        pkgs = envcap.packages()
        interp = interpreter.this_python(store.put_obj(pkgs), len(pkgs))
    drift: dict[str, list[str | None]] = {}
    if launch_blob and pkgs is not None:
        try:
            drift = envcap.package_drift(store.get_obj(launch_blob, dict[str, str]), pkgs)
        except Exception:
            drift = {}
    return msgspec.structs.replace(
        node,
        python_executable=interp.python_executable or "",
        python_version=interp.python_version or "",
        packages_blob=interp.packages_blob,
        package_drift=drift,
        env_vars=envcap.selected_env(),
        scheduler_node=node_name,
        interpreter=interp,
        job_python=sys.executable,
    )


# what a node's record keeps per run (True: the whole value; a dict: those keys of the value);
# the rest (hardware, OS, drivers, packages, the libraries seen and how, the determinism
# settings and their notes) is the same for every run of a sweep on that node and goes into a
# shared context blob (record schema v2); a run whose share differs just names another blob
_NODE_OWN: dict[str, Any] = {
    "captured_at": True,
    "env_vars": True,
    "runtime": {"sampling": {"times": True, "pids": True, "gap": True}},
    "determinism": {"captured_at": True},
}


def _split_own(
    entry: dict[str, Any], own_keys: dict[str, Any]
) -> tuple[dict[str, Any], dict[str, Any]]:
    """(shared, own) parts of ``entry`` by ``own_keys`` (``_NODE_OWN``), such that
    ``record.merge_context(shared, own)`` gives ``entry`` back."""
    shared: dict[str, Any] = {}
    own: dict[str, Any] = {}
    for k, v in entry.items():
        rule = own_keys.get(k)
        if rule is True:
            own[k] = v
        elif isinstance(rule, dict) and isinstance(v, dict):
            s, o = _split_own(v, rule)
            if s or not o:  # (an empty dict stays, in the shared part)
                shared[k] = s
            if o:
                own[k] = o
        else:
            shared[k] = v
    return shared, own


def node_patch(store: Store, node: NodeInfo) -> dict[str, Any]:
    """The ``nodes`` part of a job's version: the node's facts as a shared context blob
    (``Store.put_context``; written once per node and environment, however many runs land
    there), and only the per-run fields inline. Readers merge them back (``Store.versions``)."""
    entry = to_patch(nodes=[node])["nodes"][0]
    shared, own = _split_own(entry, _NODE_OWN)
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
    elif rank == 0:
        verdict = node_verdict(rec.execution, node)  # the match, or where the run was placed
        if verdict:
            patch["execution"] = verdict
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


def use_rerun_env(rec: RunRecord) -> None:
    """A rerun in a recreated environment (``runrec rerun --env recorded``): its ``bin`` first
    on PATH and ``VIRTUAL_ENV`` set, as an activated virtual environment, so that a command's
    ``python`` and every program the job starts are that environment's. (The job's own Python
    is that environment's already: the backend started it with it.)"""
    env = rec.rerun.env if rec.rerun is not None else None
    if env is None or env.mode != "recorded" or not env.dir:
        return
    bin_dir = os.path.join(env.dir, "bin")
    path = os.environ.get("PATH", os.defpath)
    if path.split(os.pathsep)[0] != bin_dir:  # a reused worker (Ray) has it already
        os.environ["PATH"] = bin_dir + os.pathsep + path
    os.environ["VIRTUAL_ENV"] = env.dir


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
    use_rerun_env(rec)
    node = node_facts(store, rec, rank=rank, features=features, node_name=node_name)
    # until the libraries are recorded, the record says why they are not there
    node = msgspec.structs.replace(node, runtime=not_yet())
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
    stop = mismatch_failure(rec.execution, patch.get("execution", {})) if rank == 0 else None
    if stop is not None:  # the class says on_mismatch = "fail": the user's code does not run
        log_dir = rec.execution.log_dir if rec.execution else None
        ended = end_patch(stop, source="job")
        write_end(store, run_id, log_dir, lambda _s: ended)
        raise JobFailed(stop.message, run_id=run_id, failure=stop)
    run_attempt = int(patch.get("attempt") or attempt or rec.attempt)
    run = Run(
        store,
        run_id,
        rank=rank,
        pinned=rec.rerun.pinned if rec.rerun else {},
        attempt=run_attempt,
    )
    set_current(run)
    os.environ["RUNREC_STORE"] = store.root
    os.environ["RUNREC_RUN_ID"] = run_id
    os.environ["RUNREC_ATTEMPT"] = str(run_attempt)  # a command's current_run().attempt
    children: list[subprocess.Popen[bytes]] = []
    timeout_min = rec.execution.resources.timeout_min if rec.execution else None
    dog = (
        Watchdog(store, run_id, timeout_min * 60, children)
        if (enforce_timeout and timeout_min)
        else None
    )
    libs = RunLibs(node, lambda n: node_patch(store, n), early=(store, run_id))
    if dog:
        dog.end_fields = libs.end_fields
        dog.start()
    try:
        if rec.entrypoint is None:
            raise CorruptRecord(
                f"run {run_id} has no entrypoint in its launch record: the record is incomplete "
                "or damaged. Check it with `runrec fsck`, and submit the run again."
            )
        if rec.entrypoint.kind == "command":
            return run_command(store, run, rec, children, on_command_start, libs)
        return _call_function(store, rec, libs, rank, dog)
    finally:
        if dog:
            dog.cancel()
        libs.stop()
        set_current(None)


def _call_function(
    store: Store, rec: RunRecord, libs: RunLibs, rank: int, dog: Watchdog | None
) -> Any:
    """Unpickle the recorded call, call it, and record its outcome (the end on rank 0) with
    the libraries it loaded (sampled while it ran, and in a ``finally``: every outcome)."""
    ep = rec.entrypoint
    assert ep is not None
    log_dir = rec.execution.log_dir if rec.execution else None
    if ep.call_blob is None:
        raise CorruptRecord(
            f"run {rec.run_id} has no recorded call: the record is incomplete or damaged. "
            "Check it with `runrec fsck`, and submit the run again."
        )
    try:  # values withheld from the store's call come from their owner-only file
        values = withhold.job_values(rec.run_id, ep)
        with withhold.provided(values):
            fn, args, kwargs = cloudpickle.loads(store.get_blob(ep.call_blob))
    except SecretsUnavailable as exc:
        record_failure(store, rec.run_id, rank, exc, log_dir)
        raise
    libs.start_function()
    restore = record_on_sigterm(store, rec.run_id, libs)
    run = current_run()  # its on_stop functions run first on a stop signal (checkpoints)
    restore_stop = install_stop_handler(run) if run is not None else (lambda: None)
    lib_fields: dict[str, Any] = {}
    try:
        try:
            with withhold.provided(values):  # a rerun's call unpickles the original's inside
                value = fn(*args, **kwargs)
        finally:
            if dog:
                dog.cancel()
            restore_stop()
            restore()
            if rank == 0:  # the run ended: its secrets file goes, whatever the outcome
                withhold.discard(rec.run_id, ep.secrets_dir)
            lib_fields = libs.end_fields()
    except BaseException as exc:
        record_failure(store, rec.run_id, rank, exc, log_dir, extra=lib_fields)
        raise
    if rank != 0:
        store.write_version(rec.run_id, "libraries", lib_fields, role="job")
        return value
    ended_at = now()
    write_end(
        store,
        rec.run_id,
        log_dir,
        lambda s: (
            to_patch(
                state=RunState.SUCCEEDED,
                state_source="job",
                ended_at=ended_at,
                result=encode_result(s, value),
            )
            | lib_fields
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
