"""The job side, the same on every backend: complete the record where the job runs.

``execute(store_root, run_id)`` is what a backend calls on the compute node (the local backend
in a fresh interpreter, Slurm through submitit, Ray inside a task). It captures the node, marks
the run running, runs the function or command, and records the outcome: result, or failure with
its traceback as text. Only this module (and an explicit rerun) unpickles the call.

When the store refuses the end of a run (disk full, read-only), the end record and the result
are saved in a rescue directory laid out like a store (``rescue_dirs``: under the job's log
directory, else ``~``, else ``$TMPDIR``: ``runrec-rescue/<run_id>/``), and the error says where
and how to copy them in (``cp -rn``).

Run as ``python -m runrec_cluster.job.execute STORE RUN_ID`` for the local backend.
"""

from __future__ import annotations

import os
import secrets
import shlex
import signal
import socket
import subprocess
import sys
import threading
import traceback
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import msgspec

from runrec_cluster.capture import env as envcap
from runrec_cluster.capture import node as nodecap
from runrec_cluster.capture import proc
from runrec_cluster.capture.redact import redact_text
from runrec_cluster.errors import StoreError
from runrec_cluster.job.run import Run, _set_current
from runrec_cluster.record import (
    CONTEXT_KEY,
    SCHEMA_VERSION,
    Failure,
    FailureCause,
    NodeInfo,
    RecordVersion,
    ResultRef,
    RunRecord,
    RunState,
    RuntimeLibs,
    Writer,
    end_patch,
    signal_failure,
    to_patch,
)
from runrec_cluster.store import Store, codec, fs, layout

TIMEOUT_EXIT = 124


def _now() -> datetime:
    return datetime.now(UTC)


def node_facts(
    store: Store,
    rec: RunRecord,
    *,
    rank: int = 0,
    features: list[str] | None = None,
    node_name: str = "",
) -> NodeInfo:
    """Capture this node and its package drift against the launch environment."""
    import msgspec.structs

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


def _summary(value: Any) -> str:
    """A short repr of a result, never built whole (a 1 GB bytes result has a 4 GB repr)."""
    import reprlib

    r = reprlib.Repr()
    r.maxstring = r.maxother = 200
    r.maxlong = 60
    try:
        if isinstance(value, (bytes, bytearray, memoryview)):
            summary = f"<{type(value).__name__} of {len(value):,} bytes: {bytes(value[:60])!r}>"
        else:
            summary = r.repr(value)
    except Exception as exc:  # a __repr__ that raises: the result is still kept
        summary = f"<{type(value).__name__}: repr failed: {exc}>"
    return summary if len(summary) <= 200 else summary[:197] + "..."


def _encode_result(store: Store, value: Any) -> ResultRef:
    tname = f"{type(value).__module__}.{type(value).__qualname__}"
    summary = _summary(value)
    try:
        blob = store.put_blob(codec.encode_raw(value))
        return ResultRef(blob=blob, format="msgpack", type=tname, summary=summary)
    except (TypeError, msgspec.EncodeError, OverflowError):
        import cloudpickle

        blob = store.put_blob(cloudpickle.dumps(value))
        return ResultRef(blob=blob, format="pickle", type=tname, summary=summary)


# -- when the store cannot take the end of a run (disk full, read-only, gone) ------------------

RESCUE_DIR = "runrec-rescue"


def rescue_dirs(run_id: str, log_dir: str | None) -> list[str]:
    """Where a job saves its end record and result when the store refuses them, in the order
    tried: ``<base>/runrec-rescue/<run_id>`` for the job's log directory, the home directory
    (shared with the submit host on most clusters), then $TMPDIR (often node-local and wiped
    when the job ends: the last resort)."""
    bases = [log_dir] if log_dir else []
    bases += [os.path.expanduser("~"), os.environ.get("TMPDIR") or "/tmp"]
    out: list[str] = []
    for b in bases:
        d = os.path.join(b, RESCUE_DIR, run_id)
        if d not in out:
            out.append(d)
    return out


def rescue_message(store_root: str, run_id: str, where: str) -> str:
    src = shlex.quote(os.path.join(where, "store")) + "/."
    return (
        f"The job saved the end record and result of run {run_id} in {where} instead of the "
        f"store. Once the store has space (or is writable again), copy them in with "
        f"`cp -rn {src} {shlex.quote(store_root)}/` (see {os.path.join(where, 'README.txt')})"
    )


def find_rescue(store: Store, run_id: str) -> str | None:
    """The rescue directory a job of this run left on this machine (``rescue_dirs``), or None."""
    try:
        rec = store.load(run_id)
        log_dir = rec.execution.log_dir if rec.execution else None
    except Exception:
        log_dir = None
    for d in rescue_dirs(run_id, log_dir or store.log_dir(run_id)):
        if os.path.isfile(os.path.join(d, "README.txt")):
            return d
    return None


def _write_end(
    store: Store, run_id: str, log_dir: str | None, make_patch: Callable[[Store], dict[str, Any]]
) -> None:
    """Write the end version; ``make_patch(s)`` builds its patch, putting blobs (the result) in
    ``s``. When the store refuses it (disk full, read-only), the same version and its blobs are
    saved under a rescue directory (``rescue_dirs``) laid out like a store, and the
    ``StoreError`` raised says where and how to copy them in."""
    try:
        store.write_version(run_id, "end", make_patch(store), role="job")
        return
    except StoreError as exc:
        failed = exc
    tried = []
    for d in rescue_dirs(run_id, log_dir):
        try:
            _save_rescue(store, run_id, d, make_patch, failed)
        except (OSError, StoreError) as exc:
            tried.append(f"{d}: {exc}")
            continue
        raise StoreError(
            f"cannot write the end of run {run_id} to the store {store.root}: {failed}. "
            + rescue_message(store.root, run_id, d)
            + "."
        ) from failed
    raise StoreError(
        f"cannot write the end of run {run_id} to the store {store.root}: {failed}; nor save it "
        f"anywhere else ({'; '.join(tried)}). Its outcome is lost: free space and run it again."
    ) from failed


def _save_rescue(
    store: Store,
    run_id: str,
    where: str,
    make_patch: Callable[[Store], dict[str, Any]],
    failed: StoreError,
) -> None:
    rescue = Store(os.path.join(where, "store"), fsync=store.fsync)
    patch = make_patch(rescue)  # the result blob lands in the rescue store
    seq = 1  # the number the store would have given it
    for path in store.version_files(run_id):
        m = layout.VERSION_RE.match(os.path.basename(path))
        if m:
            seq = max(seq, int(m.group(1)) + 1)
    version = RecordVersion(
        schema_version=SCHEMA_VERSION,
        run_id=run_id,
        seq=seq,
        written_at=_now(),
        writer=Writer(host=socket.gethostname(), pid=os.getpid(), role="job"),
        event="end",
        patch=patch,
    )
    name = layout.version_name(seq, secrets.token_hex(6))
    fs.write_atomic(os.path.join(layout.run_dir(rescue.root, run_id), name), codec.encode(version))
    src = shlex.quote(rescue.root) + "/."
    readme = (
        f"runrec: the store {store.root} could not take the end of run {run_id}:\n"
        f"  {failed}\n\n"
        f"Its end record (state {patch.get('state', '?')}) and its result are saved here, laid "
        f"out like a store:\n  {rescue.root}\n"
        f"Once the store has space (or is writable again), copy them in (-n: nothing in the "
        f"store is overwritten):\n  cp -rn {src} {shlex.quote(store.root)}/\n"
        f"Then `runrec show {run_id}` shows the outcome and the result, `runrec index "
        f"--rebuild` updates the query index, and this directory can be deleted.\n"
    )
    fs.write_atomic(os.path.join(where, "README.txt"), readme.encode(), mode=0o644)


class _Watchdog:
    """Our own time limit (backends without one: local, ray). Records TIMEOUT, then exits."""

    def __init__(
        self, store: Store, run_id: str, timeout_s: float, child: list[subprocess.Popen[bytes]]
    ):
        self.store, self.run_id, self.timeout_s, self.child = store, run_id, timeout_s, child
        self.timer = threading.Timer(timeout_s, self._fire)
        self.timer.daemon = True

    def start(self) -> None:
        self.timer.start()

    def cancel(self) -> None:
        self.timer.cancel()

    def _fire(self) -> None:
        for p in self.child:
            try:
                os.killpg(p.pid, signal.SIGKILL)
            except OSError:
                pass
        failure = Failure(
            cause=FailureCause.TIMEOUT,
            type="Timeout",
            message=f"the run exceeded its time limit of {self.timeout_s:g} s (timeout_min) and was stopped by runrec",
            source="job",
        )
        try:
            self.store.write_version(
                self.run_id,
                "end",
                end_patch(failure, source="job"),
                role="job",
            )
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(TIMEOUT_EXIT)


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
    hardware_check: Any = None,
    on_command_start: Any = None,
) -> Any:
    """Run a recorded job here. Returns the function's result (or the command's exit code);
    re-raises the function's exception after recording it. ``on_command_start(pid)`` is called
    when a command's process has started (the Ray backend uses it to end the command if the
    worker dies)."""
    store = Store(store_root)
    rec = store.load(run_id)
    node = node_facts(store, rec, rank=rank, features=features, node_name=node_name)
    patch: dict[str, Any] = node_patch(store, node)
    if hardware_check is not None:  # a backend's own check (rec, node) -> execution patch
        patch["execution"] = hardware_check(rec, node)
    elif rank == 0 and rec.execution is not None and rec.execution.hardware_expect:
        from runrec_cluster.capture.hardware import HardwareClass

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
                started_at=_now(),
                # unless the local supervisor recorded this very process already
                process=me if rec.process != me else None,
            )
        )
        patch["attempt"] = attempt or rec.attempt
    store.write_version(run_id, "start" if rank == 0 else "node", patch, role="job")
    run = Run(store, run_id, rank=rank, pinned=rec.rerun.pinned if rec.rerun else {})
    _set_current(run)
    os.environ["RUNREC_STORE"] = store.root
    os.environ["RUNREC_RUN_ID"] = run_id
    children: list[subprocess.Popen[bytes]] = []
    timeout_min = rec.execution.resources.timeout_min if rec.execution else None
    dog = (
        _Watchdog(store, run_id, timeout_min * 60, children)
        if (enforce_timeout and timeout_min)
        else None
    )
    if dog:
        dog.start()
    ep = rec.entrypoint
    log_dir = rec.execution.log_dir if rec.execution else None
    try:
        if ep is None:
            raise RuntimeError(f"run {run_id} has no entrypoint in its launch record")
        if ep.kind == "command":
            return _run_command(store, run, rec, children, on_command_start)
        import cloudpickle

        if ep.call_blob is None:
            raise RuntimeError(f"run {run_id} has no recorded call")
        fn, args, kwargs = cloudpickle.loads(store.get_blob(ep.call_blob))
        try:
            value = fn(*args, **kwargs)
        except BaseException as exc:
            if dog:
                dog.cancel()
            _record_failure(store, run_id, rank, exc, log_dir)
            raise
        if dog:
            dog.cancel()
        if rank == 0:
            end_node = msgspec.structs.replace(node, runtime=nodecap.runtime_libs())
            # the node's facts again only when the run loaded libraries (CUDA, cuDNN, NCCL)
            none = RuntimeLibs()
            changed = (end_node.runtime or none) != (node.runtime or none)
            end_nodes = [end_node] if changed else None
            ended_at = _now()
            _write_end(
                store,
                run_id,
                log_dir,
                lambda s: to_patch(
                    state=RunState.SUCCEEDED,
                    state_source="job",
                    ended_at=ended_at,
                    result=_encode_result(s, value),
                    nodes=end_nodes,
                ),
            )
        return value
    finally:
        if dog:
            dog.cancel()
        _set_current(None)


def _record_failure(
    store: Store, run_id: str, rank: int, exc: BaseException, log_dir: str | None = None
) -> None:
    if isinstance(exc, KeyboardInterrupt):
        cause, state = FailureCause.CANCELLED, RunState.CANCELLED
    elif isinstance(exc, MemoryError):
        cause, state = FailureCause.OUT_OF_MEMORY, RunState.FAILED
    elif isinstance(exc, (FileNotFoundError, UnicodeDecodeError)) or type(exc).__name__ in (
        "ParserError",
        "EmptyDataError",
    ):
        cause, state = FailureCause.DATA_PROBLEM, RunState.FAILED
    else:
        cause, state = FailureCause.CODE_ERROR, RunState.FAILED
    failure = Failure(
        cause=cause,
        type=f"{type(exc).__module__}.{type(exc).__qualname__}".removeprefix("builtins."),
        message=redact_text(str(exc)),  # a database URL in an error message...
        traceback=redact_text("".join(traceback.format_exception(exc))),
        source="job",
    )
    if rank != 0:
        store.write_version(
            run_id,
            "rank-failure",
            {"warnings": [f"rank {rank} failed: {failure.type}: {failure.message}"]},
            role="job",
        )
        return
    patch = end_patch(failure, source="job", state=state)
    _write_end(store, run_id, log_dir, lambda _s: patch)


def _run_command(
    store: Store,
    run: Run,
    rec: RunRecord,
    children: list[subprocess.Popen[bytes]],
    on_start: Any = None,
) -> int:
    ep = rec.entrypoint
    assert ep is not None
    env = dict(os.environ)
    env["RUNREC_STORE"] = store.root
    env["RUNREC_RUN_ID"] = rec.run_id
    env["RUNREC_RANK"] = str(run.rank)
    argv = list(ep.argv)
    if ep.call_blob:  # the unredacted command line, kept out of the record
        import cloudpickle

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
        return 127
    children.append(p)
    if on_start is not None:
        on_start(p.pid)

    def forward(signum: int, _frame: Any) -> None:
        try:
            os.killpg(p.pid, signum)
        except OSError:
            pass

    previous = {}
    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGUSR2):
        try:
            previous[sig] = signal.signal(sig, forward)
        except ValueError:  # not the main thread
            pass
    try:
        rc = p.wait()
    finally:  # a reused worker process (Ray) must get its own handlers back
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    if run.rank != 0:
        return rc
    patch: dict[str, Any] = {"exit_code": rc, "ended_at": _now()}
    if rc == 0:
        patch.update(to_patch(state=RunState.SUCCEEDED, state_source="job"))
    else:
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
    log_dir = rec.execution.log_dir if rec.execution else None
    _write_end(store, rec.run_id, log_dir, lambda _s: patch)
    return rc


def main(argv: list[str] | None = None) -> int:
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
