"""The submitting process as a Ray driver: its one connection to the cluster, the tasks it owns
(their ObjectRefs, shared by every RayBackend of the process), what a finished ObjectRef says,
and the record of runs still open when the process exits (Ray ends a driver's tasks with it).
"""

from __future__ import annotations

import atexit
import os
import socket
import sys
import threading
import time
from typing import Any

import ray

from runrec_cluster.backends.ray.states import clip, error_word, plain
from runrec_cluster.errors import BackendError
from runrec_cluster.record import Failure, FailureCause, end_patch
from runrec_cluster.store import Store

# This process's connection and the tasks it owns (shared by every RayBackend here).
_CONN: dict[str, Any] = {}
_REFS: dict[str, Any] = {}  # run_id -> ObjectRef
_REF_STORE: dict[str, str] = {}  # run_id -> store root
_REMOTE: dict[str, Any] = {}
_lock = threading.Lock()
_atexit_registered: list[bool] = []


def resolve_address(options: dict[str, Any]) -> str:
    """The cluster address of these options: ray_address, else $RAY_ADDRESS, else "auto"."""
    return str(options.get("ray_address") or os.environ.get("RAY_ADDRESS") or "auto")


def connect(address: str | None = None, namespace: str | None = None) -> dict[str, Any]:
    """Connect this process to the cluster once (``address``: "auto" by default, $RAY_ADDRESS
    wins over the default; never empty, so no local Ray is ever started). Returns what the
    records keep: addresses, session, the driver's Ray job id."""
    with _lock:
        if _CONN and ray.is_initialized():
            return _CONN
        where = resolve_address({"ray_address": address})
        if not ray.is_initialized():
            ctx = _init(where, namespace)
            dashboard = getattr(ctx, "dashboard_url", None)
        else:  # the user connected already: use that connection
            try:
                dashboard = ray._private.worker.get_dashboard_url()
            except Exception:
                dashboard = None
        _CONN.clear()
        _CONN.update(_connection_facts(where, dashboard))
        return _CONN


# A Ray Client (ray://) connection is served by a server process the proxier starts for it;
# that start can fail once in a while (the new process already gone when the proxier looks at
# it: "Initialization failure from server ... ZombieProcess"). Such a failure is tried again.
_CLIENT_TRIES = 3


def _init(where: str, namespace: str | None) -> Any:
    tries = _CLIENT_TRIES if where.startswith("ray://") else 1
    for n in range(1, tries + 1):
        try:
            return ray.init(
                address=where, ignore_reinit_error=True, log_to_driver=False, namespace=namespace
            )
        except Exception as exc:
            transient = isinstance(exc, ConnectionError) and "Initialization failure" in str(exc)
            if transient and n < tries:
                time.sleep(n)
                continue
            lines = [ln for ln in str(exc).splitlines() if ln.strip()]
            why = lines[-1].strip() if lines else ""  # the server's traceback: its last line
            raise BackendError(
                f"cannot connect to the Ray cluster at {where!r}"
                f"{f' (after {n} tries)' if n > 1 else ''}: {type(exc).__name__}: {why}. Start "
                "one (`ray start --head`; here: ray/up), or pass ray_address='HOST:6379' or "
                "'ray://HOST:10001'."
            ) from exc
    raise AssertionError("unreachable")


def _connection_facts(where: str, dashboard: str | None) -> dict[str, Any]:
    rc = ray.get_runtime_context()
    info: dict[str, Any] = {"ray_address": where}
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
    return info


def remote(name: str, fn: Any) -> Any:
    """``ray.remote(fn)``, made once per process under ``name``."""
    with _lock:
        if name not in _REMOTE:
            _REMOTE[name] = ray.remote(fn)
        return _REMOTE[name]


def hold(run_id: str, ref: Any, store_root: str) -> None:
    """Keep the ObjectRef of a run's task: this process owns it."""
    _REFS[run_id] = ref
    _REF_STORE[run_id] = store_root


def held_ref(run_id: str) -> Any:
    """The ObjectRef this process holds for the run; None when it holds none (another process
    submitted it, or this one disconnected: ray.shutdown() drops the refs)."""
    return _REFS.get(run_id) if ray.is_initialized() else None


def forget(run_id: str) -> None:
    """Drop the run's ObjectRef (its outcome was read, or its submission failed)."""
    _REFS.pop(run_id, None)
    _REF_STORE.pop(run_id, None)


def outcome(ref: Any, owner: str = "the submitting process") -> tuple[str, str, str]:
    """(word, message, traceback) for a finished ObjectRef this process (``owner``) owns."""
    try:
        ray.get(ref, timeout=0)
    except Exception as exc:
        word = error_word(exc)
        text = plain(str(exc)) or type(exc).__name__
        lines = [x for x in text.splitlines() if x.strip()]
        if word == "TASK_EXECUTION_EXCEPTION" and len(lines) > 1:
            # the task raised before the job recorded anything: the traceback is Ray's text
            msg = f"the Ray task raised before the job recorded its end: {lines[-1].strip()}"
            return word, msg, text
        return word, f"Ray raised {type(exc).__name__} in {owner}: {clip(text)}", ""
    return "FINISHED", "the Ray task returned", ""


def task_id(ref: Any) -> str | None:
    """The task id of an ObjectRef (None for Ray Client refs: the task records its own)."""
    try:
        return ref.task_id().hex()
    except Exception:
        return None


def register_atexit() -> None:
    """Once per process: record the runs still open when it exits (see ``_at_exit``)."""
    with _lock:
        if not _atexit_registered:
            atexit.register(_at_exit)  # after ray.init's own: runs before Ray disconnects
            _atexit_registered.append(True)


def _at_exit() -> None:
    """Runs still open when the submitting process exits are ended by Ray (a driver's tasks end
    with it): record that now, with the reason, rather than leave them running."""
    if not _REFS or not ray.is_initialized():
        return
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
        try:
            if _record_driver_exit(Store(root), run_id):
                ended.append(run_id)
        except Exception:
            continue
    if ended:
        print(
            f"runrec: {len(ended)} Ray run(s) were still open when this process exited; Ray ends "
            f"them with it (recorded as killed): {', '.join(ended)}",
            file=sys.stderr,
        )


def _record_driver_exit(store: Store, run_id: str) -> bool:
    """Record an open run as killed because its driver (this process) exits; False if it ended."""
    rec = store.load(run_id, problems=[])
    if rec.state.is_terminal():
        return False
    failure = Failure(
        cause=FailureCause.KILLED,
        type="DriverExited",
        message=(
            f"the submitting process (Ray driver, pid {os.getpid()} on {socket.gethostname()}) "
            f"exited while the run was {rec.state.value}; Ray ends a driver's tasks with it. Keep "
            "that process alive until its runs end (RunHandle.wait/result), or submit from a Ray "
            "Job (`ray job submit -- python your_script.py`)."
        ),
        source="backend",
    )
    store.write_version(run_id, "end", end_patch(failure, source="backend"), role="backend")
    return True
