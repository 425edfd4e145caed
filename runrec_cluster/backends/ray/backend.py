"""Ray backend: every run is one Ray task that calls ``job.execute`` where it lands.

Generic resources map to Ray task options: ``cpus`` -> ``num_cpus`` (default 1), ``gpus`` ->
``num_gpus``, ``mem_gb`` -> ``memory`` (bytes; Ray schedules by it, it does not enforce it),
``timeout_min`` -> our own watchdog in the job (Ray has no time limit). ``nodes`` above 1 is
refused: a run is one task. Ray-only options carry the ``ray_`` prefix (``RAY_OPTIONS``). A
hardware class's ``ray`` table supplies ``accelerator_type`` and ``resources`` unless given
explicitly. Commands (``submit_command``) are Ray tasks too: ``execute`` runs them as a
subprocess, the same code path as a function.

The submitting process is the tasks' owner (Ray's ownership model): it keeps the ObjectRefs and
reads a dead task's exception from them (source "backend"). Any other process (``runrec ls``,
``runrec reconcile``) asks the Ray state API instead (source "scheduler"). Both translate what
Ray says through one table, ``RAY_OUTCOMES``; a word it does not know gives state UNKNOWN.
A Ray driver's tasks end when the driver exits: runs still open when the submitting process
exits are recorded as killed, with that reason. See docs/ray.md.
"""

from __future__ import annotations

import atexit
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from datetime import UTC, datetime
from typing import Any

import msgspec
import ray

from runrec_cluster.backends.base import Backend, JobSpec
from runrec_cluster.capture.proc import current_user
from runrec_cluster.errors import BackendError, ConfigError
from runrec_cluster.record import (
    Failure,
    FailureCause,
    NodeInfo,
    RunRecord,
    RunState,
    end_patch,
    to_patch,
)

RAY_OPTIONS = frozenset(
    {
        "ray_address",  # "auto" (default; $RAY_ADDRESS wins), "HOST:6379", "ray://HOST:10001"
        "ray_runtime_env",  # dict, as Ray takes it (pip, working_dir, env_vars, ...)
        "ray_scheduling_strategy",  # "DEFAULT" | "SPREAD" | {"node_id": ID, "soft": False}
        "ray_max_retries",  # Ray retries of a dead worker (default 0); each retry is an attempt
        "ray_resources",  # {"name": amount}, merged over the hardware class's resources
        "ray_accelerator_type",  # e.g. "A100"; overrides the hardware class's
        "ray_namespace",  # namespace of the connection (first connection only)
    }
)
_HARDWARE_KEYS = ("accelerator_type", "resources")

# Everything Ray can say about a task, mapped to (our state, cause); None: not over yet.
# Task states come from the state API (TaskStatus); a failed task's word is its error_type
# (ErrorType), and an exception held by the submitter is first named by its error_type
# (_EXCEPTION_WORDS). Unknown words map to UNKNOWN: never guess.
RAY_OUTCOMES: dict[str, tuple[RunState, FailureCause] | None] = {
    "NIL": None,
    "PENDING_ARGS_AVAIL": None,
    "PENDING_NODE_ASSIGNMENT": None,
    "PENDING_OBJ_STORE_MEM_AVAIL": None,
    "PENDING_ARGS_FETCH": None,
    "SUBMITTED_TO_WORKER": None,
    "GETTING_AND_PINNING_ARGS": None,
    "RUNNING": None,
    "RUNNING_IN_RAY_GET": None,
    "RUNNING_IN_RAY_WAIT": None,
    # the task returned, yet the job did not finish its record
    "FINISHED": (RunState.FAILED, FailureCause.INFRASTRUCTURE),
    "WORKER_DIED": (RunState.FAILED, FailureCause.WORKER_CRASHED),
    "OUT_OF_MEMORY": (RunState.FAILED, FailureCause.OUT_OF_MEMORY),
    "TASK_CANCELLED": (RunState.CANCELLED, FailureCause.CANCELLED),
    "NODE_DIED": (RunState.FAILED, FailureCause.NODE_FAILURE),
    "LOCAL_RAYLET_DIED": (RunState.FAILED, FailureCause.NODE_FAILURE),
    "ACTOR_DIED": (RunState.FAILED, FailureCause.NODE_FAILURE),
    # the task raised before the job recorded an end (store not reachable from the node...)
    "TASK_EXECUTION_EXCEPTION": (RunState.FAILED, FailureCause.INFRASTRUCTURE),
    "RUNTIME_ENV_SETUP_FAILED": (RunState.FAILED, FailureCause.INFRASTRUCTURE),
    "WORKER_STARTUP_FAILED": (RunState.FAILED, FailureCause.INFRASTRUCTURE),
    "TASK_UNSCHEDULABLE_ERROR": (RunState.FAILED, FailureCause.INFRASTRUCTURE),
    "TASK_PLACEMENT_GROUP_REMOVED": (RunState.FAILED, FailureCause.INFRASTRUCTURE),
    "DEPENDENCY_RESOLUTION_FAILED": (RunState.FAILED, FailureCause.INFRASTRUCTURE),
    "OUT_OF_DISK_ERROR": (RunState.FAILED, FailureCause.INFRASTRUCTURE),
    "OWNER_DIED": (RunState.FAILED, FailureCause.KILLED),
}

# ray.exceptions class name -> the error_type the state API gives for the same failure
_EXCEPTION_WORDS = {
    "WorkerCrashedError": "WORKER_DIED",
    "OutOfMemoryError": "OUT_OF_MEMORY",
    "TaskCancelledError": "TASK_CANCELLED",
    "NodeDiedError": "NODE_DIED",
    "LocalRayletDiedError": "LOCAL_RAYLET_DIED",
    "ActorDiedError": "ACTOR_DIED",
    "RayTaskError": "TASK_EXECUTION_EXCEPTION",
    "RuntimeEnvSetupError": "RUNTIME_ENV_SETUP_FAILED",
    "TaskUnschedulableError": "TASK_UNSCHEDULABLE_ERROR",
    "TaskPlacementGroupRemoved": "TASK_PLACEMENT_GROUP_REMOVED",
    "OutOfDiskError": "OUT_OF_DISK_ERROR",
    "OwnerDiedError": "OWNER_DIED",
}
# failures Ray retries while ray_max_retries allows (a worker or node lost, an OOM kill)
_RETRIED_BY_RAY = frozenset({"WORKER_DIED", "OUT_OF_MEMORY", "NODE_DIED", "LOCAL_RAYLET_DIED"})

_PENDING_WHY = {
    "PENDING_ARGS_AVAIL": "waiting for its arguments",
    "PENDING_ARGS_FETCH": "fetching its arguments",
    "PENDING_OBJ_STORE_MEM_AVAIL": "waiting for object store memory",
    "SUBMITTED_TO_WORKER": "starting on a worker (worker start or runtime_env setup)",
    "GETTING_AND_PINNING_ARGS": "getting its arguments",
    "NIL": "not yet known to the scheduler",
}
_STANDARD_RESOURCES = frozenset({"CPU", "GPU", "memory", "object_store_memory"})

_CHECK_INTERVAL_S = 3.0  # at most one state-API call per run per this many seconds
_API_TIMEOUT_S = 10
_DRIVER_GRACE_S = 5.0  # task events of a finished driver may lag behind its end
_DRIVER_SLACK_S = 2.0  # Ray stamps the tasks it fails with a driver a little before the job's end
_last_check: dict[str, float] = {}

# This process's connection and the tasks it owns (shared by every RayBackend here).
_CONN: dict[str, Any] = {}
_REFS: dict[str, Any] = {}  # run_id -> ObjectRef
_REF_STORE: dict[str, str] = {}  # run_id -> store root
_REMOTE: dict[str, Any] = {}
_lock = threading.Lock()


# ---------------------------------------------------------------------------------------------
# Where the run executes: inside the Ray task
# ---------------------------------------------------------------------------------------------


def _entry(store_root: str, run_id: str, expect: dict[str, Any] | None) -> None:
    """The Ray task: record what only the task knows, then run the job with ``execute``.
    Returns nothing (the result is in the store, not in Ray's object store)."""
    from runrec_cluster.job.execute import execute
    from runrec_cluster.store import Store

    ctx = ray.get_runtime_context()
    node_id = ctx.get_node_id()
    attempt_number = _attempt_number()
    sched: dict[str, Any] = {
        "task_id": ctx.get_task_id(),
        "ray_job_id": ctx.get_job_id(),
        "node_id": node_id,
        "node_ip": ray.util.get_node_ip_address(),
        "worker_id": ctx.get_worker_id(),
        "worker_pid": os.getpid(),
        "attempt_number": attempt_number,
        "assigned_resources": ctx.get_assigned_resources(),
    }
    rec = Store(store_root).load(run_id)
    if rec.state == RunState.CANCELLED:
        return None  # cancelled by a process that could not cancel the Ray task itself
    features = _node_resource_names(node_id)

    def check(rec: RunRecord, node: NodeInfo) -> dict[str, Any]:
        if not expect:
            return {}
        from runrec_cluster.capture.hardware import HardwareClass

        hw_name = rec.execution.hardware if rec.execution else ""
        ok, bad = HardwareClass(name=hw_name or "", expect=expect).check(node)
        return {"hardware_match": ok, "hardware_mismatches": bad}

    # a Ray worker runs many tasks: leave it as we found it
    main = threading.current_thread() is threading.main_thread()
    handlers = (
        {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGINT, signal.SIGUSR2)}
        if main
        else {}
    )
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
        os.chdir(ep.cwd)  # as on the other backends: where it was submitted, when shared
    reapers: list[subprocess.Popen[bytes]] = []
    if main:
        signal.signal(signal.SIGTERM, _record_sigterm(store_root, run_id, handlers[signal.SIGTERM]))
    try:
        execute(
            store_root,
            run_id,
            scheduler=sched,
            rank=0,
            attempt=attempt_number + 1,
            enforce_timeout=True,
            features=features,
            node_name=node_id,
            hardware_check=check if expect else None,
            on_command_start=lambda pid: reapers.append(_start_reaper(pid)),
        )
    finally:
        for r in reapers:
            _stop_reaper(r)
        for s, h in handlers.items():
            if h is not None:
                signal.signal(s, h)
        for k, v in saved_env.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        try:
            os.chdir(saved_cwd)
        except OSError:
            pass
    return None


def _record_sigterm(store_root: str, run_id: str, ray_handler: Any) -> Any:
    """Ray stops a worker with SIGTERM (its driver exited, `ray stop`, a node drain) and its
    handler raises SystemExit inside the task, which the job would record as a code error.
    Record the signal first (the first end the job writes stays), then let Ray exit."""

    def handler(signum: int, frame: Any) -> None:
        from runrec_cluster.store import Store

        failure = Failure(
            cause=FailureCause.KILLED,
            type="Signal",
            message=(
                "the Ray worker running the job received SIGTERM: Ray stops a task's worker when the "
                "driver that submitted it exits, on `ray stop`, or when the node is drained"
            ),
            signal=int(signum),
            source="job",
        )
        try:
            Store(store_root).write_version(
                run_id,
                "end",
                end_patch(failure, source="job"),
                role="job",
            )
        finally:
            if callable(ray_handler):
                ray_handler(signum, frame)
            else:
                raise SystemExit(128 + signum)

    return handler


def _attempt_number() -> int:
    """Ray's attempt number of the running task (0 first, +1 per Ray retry)."""
    try:
        from ray._private.worker import global_worker

        return int(global_worker.core_worker.get_current_task_attempt_number())
    except Exception:
        return 0


def _node_resource_names(node_id: str) -> list[str]:
    """The node's custom resources (``hwclass-a100``, ``accelerator_type:A100``): its features."""
    try:
        nodes = ray.nodes()
    except Exception:
        return []
    for n in nodes:
        if n.get("NodeID") == node_id:
            res = n.get("Resources") or {}
            return sorted(
                k for k in res if k not in _STANDARD_RESOURCES and not k.startswith("node:")
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


def _start_reaper(pgid: int) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-I", "-c", _REAPER, str(pgid)],
        stdin=subprocess.PIPE,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )


def _stop_reaper(p: subprocess.Popen[bytes]) -> None:
    try:
        assert p.stdin is not None
        p.stdin.write(b"done")
        p.stdin.close()
        p.wait(timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        pass


def _kill_process(who: dict[str, Any]) -> str:
    """A task pinned to a run's node: SIGKILL its worker, if it is still that process."""
    from runrec_cluster.capture import proc
    from runrec_cluster.record import Process

    p = Process(**who)
    alive = proc.is_alive(p)
    if alive is None:
        return f"process {p.pid} runs on host {p.host}, not on this node ({socket.gethostname()})"
    if not alive:
        return "gone"
    os.kill(p.pid, signal.SIGKILL)
    return "killed"


def _forget(run_id: str) -> None:
    _REFS.pop(run_id, None)
    _REF_STORE.pop(run_id, None)


def _remote(name: str, fn: Any) -> Any:
    with _lock:
        if name not in _REMOTE:
            _REMOTE[name] = ray.remote(fn)
        return _REMOTE[name]


# ---------------------------------------------------------------------------------------------
# The submitting side
# ---------------------------------------------------------------------------------------------


def _address(options: dict[str, Any]) -> str:
    return str(options.get("ray_address") or os.environ.get("RAY_ADDRESS") or "auto")


def connect(address: str | None = None, namespace: str | None = None) -> dict[str, Any]:
    """Connect this process to the cluster once (``address``: "auto" by default, $RAY_ADDRESS
    wins over the default; never empty, so no local Ray is ever started). Returns what the
    records keep: addresses, session, the driver's Ray job id."""
    with _lock:
        if _CONN and ray.is_initialized():
            return _CONN
        address = _address({"ray_address": address})
        dashboard = None
        if not ray.is_initialized():
            try:
                ctx = ray.init(
                    address=address,
                    ignore_reinit_error=True,
                    log_to_driver=False,
                    namespace=namespace,
                )
            except Exception as exc:
                raise BackendError(
                    f"cannot connect to the Ray cluster at {address!r}: {type(exc).__name__}: {exc}. "
                    "Start one (`ray start --head`; here: ray/up), or pass ray_address="
                    "'HOST:6379' or 'ray://HOST:10001'."
                ) from exc
            dashboard = getattr(ctx, "dashboard_url", None)
        else:  # the user connected already: use that connection
            try:
                from ray._private.worker import get_dashboard_url

                dashboard = get_dashboard_url()
            except Exception:
                dashboard = None
        rc = ray.get_runtime_context()
        info: dict[str, Any] = {"ray_address": address}
        for key, get in (
            ("gcs_address", lambda: rc.gcs_address),
            ("session_name", rc.get_session_name),
            ("ray_job_id", rc.get_job_id),
            ("namespace", lambda: rc.namespace),
        ):
            try:
                info[key] = get()
            except Exception:
                pass
        if dashboard:
            info["dashboard_url"] = dashboard if "://" in dashboard else f"http://{dashboard}"
        info["driver_pid"] = os.getpid()
        info["driver_host"] = socket.gethostname()
        _CONN.clear()
        _CONN.update(info)
        return _CONN


class RayBackend(Backend):
    name = "ray"
    option_prefix = "ray_"
    known_options = RAY_OPTIONS
    enforces_timeout = False  # Ray has no time limit: the job's watchdog enforces timeout_min

    # -- connection ------------------------------------------------------------------------

    def _address(self) -> str:
        return _address(self.options)

    def _connect(self) -> dict[str, Any]:
        return connect(self.options.get("ray_address"), self.options.get("ray_namespace"))

    # -- launching -------------------------------------------------------------------------

    def _task_options(self) -> dict[str, Any]:
        r, opts = self.resources, self.options
        if r.nodes is not None and r.nodes > 1:
            raise ConfigError(
                f"nodes={r.nodes}: a Ray run is one task on one node. Use nodes=1 (or leave it out); "
                "for multi-node work start Ray Train or a placement group inside the function."
            )
        o: dict[str, Any] = {"num_cpus": r.cpus or 1, "retry_exceptions": False}
        try:
            o["max_retries"] = int(opts.get("ray_max_retries", 0))
        except (TypeError, ValueError):
            raise ConfigError(
                f"ray_max_retries={opts['ray_max_retries']!r}: give a whole number (-1: unlimited)."
            ) from None
        if r.gpus:
            o["num_gpus"] = r.gpus
        if r.mem_gb:
            o["memory"] = int(r.mem_gb * 1024**3)
        acc: Any = None
        res: dict[str, Any] = {}
        hw = self.hardware
        if hw is not None:
            bad = sorted(set(hw.ray) - set(_HARDWARE_KEYS))
            if bad:
                raise ConfigError(
                    f"hardware class {hw.name!r}: unknown ray key(s) {bad} (use {', '.join(_HARDWARE_KEYS)})."
                )
            acc = hw.ray.get("accelerator_type")
            res.update(
                _resource_dict(
                    hw.ray.get("resources") or {}, f"hardware class {hw.name!r} ray.resources"
                )
            )
        if opts.get("ray_accelerator_type"):
            acc = opts["ray_accelerator_type"]
        res.update(_resource_dict(opts.get("ray_resources") or {}, "ray_resources"))
        if acc:
            o["accelerator_type"] = str(acc)
        if res:
            o["resources"] = res
        renv = opts.get("ray_runtime_env")
        if renv:
            if not isinstance(renv, dict):
                raise ConfigError(
                    f"ray_runtime_env must be a dict as Ray takes it, e.g. {{'pip': ['torch']}}; got {renv!r}."
                )
            o["runtime_env"] = dict(renv)
        strategy = opts.get("ray_scheduling_strategy")
        if strategy is not None:
            o["scheduling_strategy"] = _strategy(strategy)
        return o

    def launch(self, jobs: list[JobSpec]) -> list[dict[str, Any]]:
        if not jobs:
            return []
        base = self._task_options()
        conn = self._connect()
        fn = _remote("entry", _entry)
        try:
            fn.options(**base)  # Ray validates here: refuse before anything is submitted
        except (ValueError, TypeError) as exc:
            raise ConfigError(f"invalid Ray task options {base}: {exc}") from exc
        expect = dict(self.hardware.expect) if self.hardware is not None else None
        out: list[dict[str, Any]] = []
        submitted: list[Any] = []
        try:
            for j in jobs:
                o = dict(base, name=f"runrec-{j.run_id}")
                if j.env:
                    renv = dict(o.get("runtime_env") or {})
                    renv["env_vars"] = {**renv.get("env_vars", {}), **j.env}
                    o["runtime_env"] = renv
                ref = fn.options(**o).remote(self.store.root, j.run_id, expect)
                submitted.append(ref)
                _REFS[j.run_id] = ref
                _REF_STORE[j.run_id] = self.store.root
                tid = _task_id(ref)
                info = {k: v for k, v in conn.items()}
                info.update({"task_id": tid, "object_ref": ref.hex(), "task_name": o["name"]})
                if tid:
                    info["logs"] = f"ray logs task --id {tid}"
                out.append(info)
        except Exception as exc:
            for ref in submitted:
                try:
                    ray.cancel(ref, force=True)
                except Exception:
                    pass
            for j in jobs:
                _forget(j.run_id)
            raise BackendError(f"Ray refused the task: {type(exc).__name__}: {exc}") from exc
        _register_atexit()
        return out

    # -- verdicts --------------------------------------------------------------------------

    def check(self, rec: RunRecord) -> dict[str, Any] | None:
        return self.check_many([rec]).get(rec.run_id)

    def check_many(self, recs: list[RunRecord]) -> dict[str, dict[str, Any]]:
        out: dict[str, dict[str, Any]] = {}
        held: list[RunRecord] = []
        others: list[RunRecord] = []
        for r in recs:
            if r.state.is_terminal() or r.execution is None:
                continue
            # the refs are only good while this process is connected (ray.shutdown() drops them)
            (held if r.run_id in _REFS and ray.is_initialized() else others).append(r)
        if held:
            out.update(self._check_refs(held))
        if others:
            out.update(self._check_state_api(others))
        return out

    def _check_refs(self, recs: list[RunRecord]) -> dict[str, dict[str, Any]]:
        """The submitter owns these tasks: a finished ObjectRef carries Ray's own exception."""
        refs = {r.run_id: _REFS[r.run_id] for r in recs}
        ready, _ = ray.wait(
            list(refs.values()), num_returns=len(refs), timeout=0, fetch_local=False
        )
        ready_ids = {ref.hex() for ref in ready}
        out = {}
        for r in recs:
            ref = refs[r.run_id]
            if ref.hex() not in ready_ids:
                continue
            word, message, tb = _outcome(ref)
            _forget(r.run_id)
            fresh = self.store.load(r.run_id, problems=[])
            if fresh.state.is_terminal():
                continue  # the job finished its own record (our timeout included)
            patch = verdict(fresh, word, message, source="backend", traceback=tb)
            if patch:
                out[r.run_id] = patch
        return out

    def _check_state_api(self, recs: list[RunRecord]) -> dict[str, dict[str, Any]]:
        """Another process owns these tasks: read them from the Ray state API (rate-limited)."""
        now = time.monotonic()
        groups: dict[tuple[str, str], list[tuple[RunRecord, str]]] = {}
        for r in recs:
            sch = r.execution.scheduler if r.execution else {}
            tid = sch.get("task_id")
            if not tid:
                continue
            last = _last_check.get(r.run_id)
            if last is not None and now - last < _CHECK_INTERVAL_S:
                continue
            _last_check[r.run_id] = now
            groups.setdefault((self._api_address(r), str(sch.get("ray_job_id") or "")), []).append(
                (r, str(tid))
            )
        out = {}
        for (url, job_id), members in groups.items():
            tasks = _latest_tasks(url, job_id, [tid for _, tid in members])
            driver = _driver_job(url, job_id) if job_id else None
            session = None
            for r, tid in members:
                t = tasks.get(tid)
                sch = r.execution.scheduler if r.execution else {}
                if t is None:
                    if session is None:
                        session = _session_name(url) or ""
                    patch = _lost_session_verdict(r, sch, session)
                else:
                    patch = self._task_verdict(r, t, driver)
                if patch:
                    fresh = self.store.load(r.run_id, problems=[])
                    if not fresh.state.is_terminal():
                        out[r.run_id] = patch
        return out

    def _task_verdict(self, rec: RunRecord, t: Any, driver: Any) -> dict[str, Any] | None:
        """A patch from the state API's view of the task (newest attempt) and of its driver."""
        state = str(t.state)
        word = state if state != "FAILED" else str(t.error_type or "FAILED")
        attempt = int(t.attempt_number or 0)
        ended = _ms_time(getattr(t, "end_time_ms", None))
        driver_end = _ms_time(getattr(driver, "end_time", None)) if driver is not None else None
        note = ""
        if driver_end is not None:
            note = f" (its driver, Ray job {driver.job_id}, ended at {driver_end.isoformat(timespec='seconds')})"
            # The owner died: Ray ends a driver's tasks with it, and 15 s later marks those
            # still pending WORKER_DIED. Say so, with Ray's word for it.
            if word in RAY_OUTCOMES and RAY_OUTCOMES[word] is None:
                if (datetime.now(UTC) - driver_end).total_seconds() < _DRIVER_GRACE_S:
                    return None  # its last events may still be on their way
                word, ended = "OWNER_DIED", driver_end
            elif word == "WORKER_DIED" and (
                rec.process is None  # it never ran: no worker of its own could die
                or (ended is not None and (driver_end - ended).total_seconds() < _DRIVER_SLACK_S)
            ):
                word = "OWNER_DIED"
        elif word in RAY_OUTCOMES and RAY_OUTCOMES[word] is None:
            return None  # still pending or running
        if word in _RETRIED_BY_RAY:
            retries = int(_opt(rec, "ray_max_retries", 0) or 0)
            if retries < 0 or attempt < retries:
                return None  # Ray starts another attempt of the same run
        where = f" on node {t.node_id}" if getattr(t, "node_id", None) else ""
        said = f"{state}/{t.error_type}" if state == "FAILED" else state
        message = f"Ray task {t.task_id} attempt {attempt}: {said}{where}{note}"
        if word == "OWNER_DIED":
            message += "; Ray ends a driver's tasks when the driver exits"
        detail = _plain(getattr(t, "error_message", None) or "").strip()
        if detail:
            message += f": {_clip(detail)}"
        return verdict(rec, word, message, source="scheduler", attempt=attempt + 1, ended_at=ended)

    def _api_address(self, rec: RunRecord) -> str:
        sch = rec.execution.scheduler if rec.execution else {}
        return str(sch.get("dashboard_url") or sch.get("gcs_address") or self._address())

    # -- cancel ----------------------------------------------------------------------------

    def cancel(self, rec: RunRecord) -> None:
        if self.store.load(rec.run_id, problems=[]).state.is_terminal():
            return  # it ended first; its own record stands
        ref = _REFS.get(rec.run_id) if ray.is_initialized() else None
        how = "ray.cancel(force=True)"
        if ref is not None:
            try:
                ray.cancel(ref, force=True)
            except Exception as exc:
                raise BackendError(
                    f"ray.cancel of run {rec.run_id} failed: {type(exc).__name__}: {exc}"
                ) from exc
            # write after the worker is gone: a command killed on the way is then recorded
            # first as a bare "killed", which this "cancelled" refines (record.fold)
            ready, _ = ray.wait([ref], timeout=10, fetch_local=False)
            if ready:
                _outcome(ref)  # consume it: Ray reports unread task errors at exit
                _forget(rec.run_id)
        elif rec.process is None:
            how = "recorded before it started; its Ray task does nothing if it starts later (only the submitting process can remove it from Ray's queue)"
        else:
            how = self._kill_worker(rec)
        self.store.write_version(
            rec.run_id,
            "cancel",
            to_patch(
                state=RunState.CANCELLED,
                state_source="backend",
                ended_at=datetime.now(UTC),
                failure=Failure(
                    cause=FailureCause.CANCELLED,
                    type="Cancelled",
                    message=f"cancelled by request ({how})",
                    by=current_user(),
                    source="backend",
                ),
            ),
            role="backend",
        )

    def _kill_worker(self, rec: RunRecord) -> str:
        """Ray lets only the owner cancel a task; from another process, kill the run's worker
        with a small task pinned to its node (the process identity guards against PID reuse)."""
        from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

        sch = rec.execution.scheduler if rec.execution else {}
        node_id = sch.get("node_id")
        if not node_id or rec.process is None:
            raise BackendError(
                f"run {rec.run_id} has no Ray node or worker process recorded; try again in a moment."
            )
        self._connect()
        killer = _remote("kill", _kill_process).options(
            num_cpus=0,
            max_retries=0,
            name=f"runrec-cancel-{rec.run_id}",
            scheduling_strategy=NodeAffinitySchedulingStrategy(node_id=node_id, soft=False),
        )
        try:
            said = ray.get(killer.remote(msgspec.to_builtins(rec.process)), timeout=60)
        except Exception as exc:
            raise BackendError(
                f"could not kill the worker of run {rec.run_id} on Ray node {node_id}: {type(exc).__name__}: {exc}"
            ) from exc
        if said not in ("killed", "gone"):
            raise BackendError(f"could not cancel run {rec.run_id}: {said}")
        return f"worker {rec.process.pid} on Ray node {node_id} {said} with SIGKILL"

    # -- pending ---------------------------------------------------------------------------

    def describe_pending(self, rec: RunRecord) -> str:
        sch = rec.execution.scheduler if rec.execution else {}
        tid = sch.get("task_id")
        if not tid:
            return "it has no Ray task id yet"
        url = self._api_address(rec)
        try:
            t = _latest_tasks(url, "", [str(tid)], detail=True).get(str(tid))
            if t is None:
                return f"Ray task {tid} is not known to the state API at {url} yet"
            state = str(t.state)
            if state != "PENDING_NODE_ASSIGNMENT":
                why = _PENDING_WHY.get(state, "")
                return f"Ray task {tid} is {state}" + (f": {why}" if why else "")
            nodes = _api("list_nodes", url, raise_on_missing_output=False)
        except BackendError as exc:
            return f"Ray task {tid} (state unknown: {exc})"
        need = {k: float(v) for k, v in (t.required_resources or {}).items()}
        alive = [n for n in nodes if str(n.state) == "ALIVE"]
        offered: dict[str, float] = {}
        for n in alive:
            for k, v in (n.resources_total or {}).items():
                offered[k] = max(offered.get(k, 0.0), float(v))
        missing = [k for k, v in need.items() if offered.get(k, 0.0) < v]
        asked = _fmt_resources(need)
        if missing:
            have = ", ".join(sorted(k for k in offered if not k.startswith("node:"))) or "none"
            return (
                f"Ray task {tid} is pending (PENDING_NODE_ASSIGNMENT) and infeasible: no alive node "
                f"offers {', '.join(sorted(missing))} (it asks for {asked}; the nodes offer {have}). "
                "It waits until such a node joins the cluster"
            )
        fits = [
            n
            for n in alive
            if all(float((n.resources_total or {}).get(k, 0.0)) >= v for k, v in need.items())
        ]
        if not fits:
            return f"Ray task {tid} is pending (PENDING_NODE_ASSIGNMENT) and infeasible: no single node offers all of {asked}"
        return (
            f"Ray task {tid} is pending (PENDING_NODE_ASSIGNMENT): waiting for {asked} to be free on one of "
            f"{len(fits)} node(s) that can run it (or for its scheduling strategy to be met)"
        )


# ---------------------------------------------------------------------------------------------
# Translating what Ray says (pure; unit-tested without a cluster)
# ---------------------------------------------------------------------------------------------


def error_word(exc: BaseException) -> str:
    """The state API's error_type for an exception ``ray.get`` raised (the class name when
    Ray has no error_type for it, which then maps to UNKNOWN)."""
    for cls in type(exc).__mro__:
        word = _EXCEPTION_WORDS.get(cls.__name__)
        if word:
            return word
    return type(exc).__name__


def verdict(
    rec: RunRecord,
    word: str,
    message: str,
    *,
    source: str,
    attempt: int | None = None,
    ended_at: datetime | None = None,
    traceback: str = "",
) -> dict[str, Any] | None:
    """A patch for a run whose Ray task ended (``word``: a task state or an error_type) without
    the job finishing its record; None when Ray says it is not over."""
    if word not in RAY_OUTCOMES:
        if rec.state == RunState.UNKNOWN:
            return None
        patch = to_patch(state=RunState.UNKNOWN, state_source=source)
        patch["warnings"] = [
            f"Ray reports {word!r} for this run's task, which runrec does not know; left as unknown ({_clip(message, 300)})"
        ]
        return patch
    mapped = RAY_OUTCOMES[word]
    if mapped is None:
        return None
    state, cause = mapped
    if word == "FINISHED":
        message = f"Ray says the task finished, but the job did not finish its record (a lost store write?). {message}"
    failure = Failure(cause=cause, type=word, message=message, traceback=traceback, source=source)
    patch = end_patch(failure, source=source, state=state, ended_at=ended_at)
    patch["execution"] = {"scheduler": {"ray_outcome": word}}
    if attempt is not None:
        patch["attempt"] = attempt
    return patch


def _outcome(ref: Any) -> tuple[str, str, str]:
    """(word, message, traceback) for a finished ObjectRef this process owns."""
    try:
        ray.get(ref, timeout=0)
    except Exception as exc:
        word = error_word(exc)
        text = _plain(str(exc)) or type(exc).__name__
        lines = [x for x in text.splitlines() if x.strip()]
        if word == "TASK_EXECUTION_EXCEPTION" and len(lines) > 1:
            # the task raised before the job recorded anything: the traceback is Ray's text
            msg = f"the Ray task raised before the job recorded its end: {lines[-1].strip()}"
            return word, msg, text
        return word, f"Ray raised {type(exc).__name__} in the submitting process: {_clip(text)}", ""
    return "FINISHED", "the Ray task returned", ""


def _lost_session_verdict(
    rec: RunRecord, sch: dict[str, Any], session_now: str
) -> dict[str, Any] | None:
    """The task is unknown to the cluster. Only when the cluster was restarted since (another
    session) is that an answer: the task cannot be running there."""
    then = sch.get("session_name")
    if not then or not session_now or then == session_now:
        return None  # not reported yet, or evicted from the state API: no verdict
    failure = Failure(
        cause=FailureCause.INFRASTRUCTURE,
        type="ClusterRestarted",
        message=(
            f"the Ray cluster this run was submitted to (session {then}) is gone; the cluster at "
            f"that address now runs session {session_now}, which does not know task {sch.get('task_id')}"
        ),
        source="inferred",
    )
    return end_patch(failure, source="inferred")


# ---------------------------------------------------------------------------------------------
# Helpers
# ---------------------------------------------------------------------------------------------


def _api(name: str, url: str, **kw: Any) -> Any:
    from ray.util import state as ray_state

    try:
        return getattr(ray_state, name)(address=url, timeout=_API_TIMEOUT_S, **kw)
    except Exception as exc:
        raise BackendError(
            f"cannot read the Ray state API at {url} ({name}): {type(exc).__name__}: {_clip(str(exc), 300)}. "
            "Is the cluster up (`ray status`)?"
        ) from exc


def _latest_tasks(
    url: str, job_id: str, task_ids: list[str], *, detail: bool = True
) -> dict[str, Any]:
    """The newest attempt of each task: one call per task for a few, one per driver job for many."""
    wanted = set(task_ids)
    rows: list[Any] = []
    if job_id and len(wanted) > 5:
        rows = _api(
            "list_tasks",
            url,
            filters=[("job_id", "=", job_id)],
            limit=100_000,
            detail=detail,
            raise_on_missing_output=False,
        )
    found = {t.task_id for t in rows}
    for tid in sorted(wanted - found)[:50]:
        rows += _api(
            "list_tasks",
            url,
            filters=[("task_id", "=", tid)],
            detail=detail,
            raise_on_missing_output=False,
        )
    latest: dict[str, Any] = {}
    for t in rows:
        if t.task_id in wanted and (
            t.task_id not in latest or t.attempt_number > latest[t.task_id].attempt_number
        ):
            latest[t.task_id] = t
    return latest


def _driver_job(url: str, job_id: str) -> Any:
    """The Ray driver job that owns the tasks (its status and end), or None."""
    try:
        jobs = _api(
            "list_jobs",
            url,
            filters=[("job_id", "=", job_id)],
            detail=True,
            raise_on_missing_output=False,
        )
    except BackendError:
        return None
    return jobs[0] if jobs else None


def _session_name(url: str) -> str | None:
    import json
    import urllib.request

    if "://" not in url or not url.startswith("http"):
        return None
    try:
        with urllib.request.urlopen(url.rstrip("/") + "/api/version", timeout=_API_TIMEOUT_S) as f:
            return json.loads(f.read()).get("session_name")
    except Exception:
        return None


def _task_id(ref: Any) -> str | None:
    try:
        return ref.task_id().hex()
    except Exception:  # Ray Client refs: the task records its own id when it starts
        return None


def _strategy(value: Any) -> Any:
    if isinstance(value, str):
        if value.upper() not in ("DEFAULT", "SPREAD"):
            raise ConfigError(
                f"ray_scheduling_strategy={value!r}: use 'DEFAULT', 'SPREAD' or {{'node_id': ID, 'soft': False}}."
            )
        return value.upper()
    if isinstance(value, dict) and "node_id" in value:
        from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

        return NodeAffinitySchedulingStrategy(
            node_id=str(value["node_id"]), soft=bool(value.get("soft", False))
        )
    raise ConfigError(
        f"ray_scheduling_strategy={value!r}: use 'DEFAULT', 'SPREAD' or {{'node_id': ID, 'soft': False}} "
        "(plain values, so the record can keep them)."
    )


def _resource_dict(value: Any, what: str) -> dict[str, float]:
    if not isinstance(value, dict) or not all(
        isinstance(k, str) and isinstance(v, (int, float)) and not isinstance(v, bool)
        for k, v in value.items()
    ):
        raise ConfigError(
            f"{what} must map resource names to amounts, e.g. {{'hwclass-a100': 1}}; got {value!r}."
        )
    return {k: float(v) for k, v in value.items()}


def _fmt_resources(res: dict[str, float]) -> str:
    return ", ".join(f"{k}={v:g}" for k, v in sorted(res.items())) or "nothing"


def _opt(rec: RunRecord, key: str, default: Any) -> Any:
    return rec.execution.options.get(key, default) if rec.execution else default


def _ms_time(ms: Any) -> datetime | None:
    try:
        return datetime.fromtimestamp(int(ms) / 1000, UTC) if ms else None
    except (TypeError, ValueError, OverflowError):
        return None


def _plain(text: str) -> str:
    """Without the terminal colour codes Ray puts in its error texts."""
    import re

    return re.sub(r"\x1b\[[0-9;]*m", "", text)


def _clip(text: str, n: int = 2000) -> str:
    return text if len(text) <= n else text[: n - 3] + "..."


_atexit_registered: list[bool] = []


def _register_atexit() -> None:
    with _lock:
        if not _atexit_registered:
            atexit.register(_at_exit)  # after ray.init's own: runs before Ray disconnects
            _atexit_registered.append(True)


def _at_exit() -> None:
    """Runs still open when the submitting process exits are ended by Ray (a driver's tasks end
    with it): record that now, with the reason, rather than leave them running."""
    if not _REFS or not ray.is_initialized():
        return
    from runrec_cluster.store import Store

    try:
        refs = dict(_REFS)
        ready, _ = ray.wait(
            list(refs.values()), num_returns=len(refs), timeout=0, fetch_local=False
        )
    except Exception:
        return
    done = {r.hex() for r in ready}
    ended = []
    for run_id, ref in refs.items():
        root = _REF_STORE.get(run_id)
        if ref.hex() in done or root is None:
            continue
        store = Store(root)
        try:
            rec = store.load(run_id, problems=[])
            if rec.state.is_terminal():
                continue
            failure = Failure(
                cause=FailureCause.KILLED,
                type="DriverExited",
                message=(
                    f"the submitting process (Ray driver, pid {os.getpid()} on {socket.gethostname()}) exited "
                    f"while the run was {rec.state.value}; Ray ends a driver's tasks with it. Keep that process "
                    "alive until its runs end (RunHandle.wait/result), or submit from a Ray Job "
                    "(`ray job submit -- python your_script.py`)."
                ),
                source="backend",
            )
            store.write_version(
                run_id,
                "end",
                end_patch(failure, source="backend"),
                role="backend",
            )
        except Exception:
            continue
        ended.append(run_id)
    if ended:
        print(
            f"runrec: {len(ended)} Ray run(s) were still open when this process exited; Ray ends them with it "
            f"(recorded as killed): {', '.join(ended)}",
            file=sys.stderr,
        )
