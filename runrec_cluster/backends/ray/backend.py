"""Ray backend: every run is one Ray task that calls ``job.execute`` where it lands.

Generic resources map to Ray task options: ``cpus`` -> ``num_cpus`` (default 1), ``gpus`` ->
``num_gpus``, ``mem_gb`` -> ``memory`` (bytes; Ray schedules by it, it does not enforce it),
``timeout_min`` -> our own watchdog in the job (Ray has no time limit). ``nodes`` above 1 is
refused: a run is one task. Ray-only options carry the ``ray_`` prefix (``RAY_OPTIONS``). A
hardware class's ``ray`` table supplies ``accelerator_type`` and ``resources`` unless given
explicitly. Commands (``submit_command``) are Ray tasks too: ``execute`` runs them as a
subprocess, the same code path as a function.

Detached (the default, ``ray_detached=True``): the submitting process hands the runs to a
runrec driver that Ray Jobs runs on the cluster (``jobs``, ``jobdriver``) and returns; that
driver owns the tasks, so the runs outlive the submitter. Attached (``ray_detached=False``):
the submitting process is the tasks' owner and the runs end with it (recorded as killed).

The owner keeps the ObjectRefs and reads a dead task's exception from them (source "backend").
Any other process (``runrec ls``, ``runrec reconcile``) asks the Ray state API instead (source
"scheduler"), and leaves a detached run to its driver while that driver is alive. Both
translate what Ray says through one table, ``RAY_OUTCOMES``; a word it does not know gives
state UNKNOWN. See docs/ray.md.
"""

from __future__ import annotations

import os
import socket
import time
from datetime import UTC, datetime
from typing import Any

import msgspec
import ray
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

from runrec_cluster.backends.base import Backend, JobSpec
from runrec_cluster.backends.ray import driver, state_api
from runrec_cluster.backends.ray import jobs as ray_jobs
from runrec_cluster.backends.ray.driver import connect
from runrec_cluster.backends.ray.states import (
    JOB_ALIVE,
    driver_job_verdict,
    job_status,
    lost_session_verdict,
    task_verdict,
    verdict,
)
from runrec_cluster.backends.ray.task import entry, kill_process
from runrec_cluster.capture.proc import current_user
from runrec_cluster.errors import BackendError, ConfigError
from runrec_cluster.record import RunRecord
from runrec_cluster.store import Store

RAY_OPTIONS = frozenset(
    {
        "ray_address",  # "auto" (default; $RAY_ADDRESS wins), "HOST:6379", "ray://HOST:10001"
        "ray_runtime_env",  # dict, as Ray takes it (pip, working_dir, env_vars, ...)
        "ray_scheduling_strategy",  # "DEFAULT" | "SPREAD" | {"node_id": ID, "soft": False}
        "ray_max_retries",  # Ray retries of a dead worker (default 0); each retry is an attempt
        "ray_resources",  # {"name": amount}, merged over the hardware class's resources
        "ray_accelerator_type",  # e.g. "A100"; overrides the hardware class's
        "ray_namespace",  # namespace of the connection (first connection only)
        "ray_detached",  # True (default): a runrec driver on the cluster (Ray Jobs) owns the runs
    }
)
CANCEL_WAIT_S = 30.0  # how long a cancel waits for a live runrec driver to carry it out


def cancel_request(rec: RunRecord) -> dict[str, Any] | None:
    """The cancel request some process wrote for a detached run (``request_cancel``), or None."""
    sch = rec.execution.scheduler if rec.execution else {}
    req = sch.get("cancel_requested")
    return req if isinstance(req, dict) else None


def is_detached(rec: RunRecord) -> bool:
    """Whether a runrec driver job (Ray Jobs) owns the run's task."""
    sch = rec.execution.scheduler if rec.execution else {}
    return bool(sch.get("submission_id"))


HARDWARE_KEYS = ("accelerator_type", "resources")


class RayBackend(Backend):
    name = "ray"
    option_prefix = "ray_"
    known_options = RAY_OPTIONS
    enforces_timeout = False  # Ray has no time limit: the job's watchdog enforces timeout_min
    check_interval_s = 3.0  # at most one state-API call per run per 3 s (held refs: no limit)
    owner_name = "the submitting process"  # who holds the refs, as verdict messages say

    # -- connection ------------------------------------------------------------------------

    def _address(self) -> str:
        return driver.resolve_address(self.options)

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
            bad = sorted(set(hw.ray) - set(HARDWARE_KEYS))
            if bad:
                raise ConfigError(
                    f"hardware class {hw.name!r}: unknown ray key(s) {bad} (use {', '.join(HARDWARE_KEYS)})."
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

    @property
    def detached(self) -> bool:
        """Whether runs are handed to a runrec driver on the cluster (``ray_detached``)."""
        return bool(self.options.get("ray_detached", True))

    def launch(self, jobs: list[JobSpec]) -> list[dict[str, Any]]:
        if not jobs:
            return []
        base = self._task_options()
        fn = driver.remote("entry", entry)
        try:
            fn.options(**base)  # Ray validates here: refuse before anything is submitted
        except (ValueError, TypeError) as exc:
            raise ConfigError(f"invalid Ray task options {base}: {exc}") from exc
        if self.detached:
            return self._launch_detached(jobs)
        conn = self._connect()
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
                ref = fn.options(**o).remote(
                    self.store.root, j.run_id, expect, not self.enforces_timeout
                )
                submitted.append(ref)
                driver.hold(j.run_id, ref, self.store.root)
                tid = driver.task_id(ref)
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
                driver.forget(j.run_id)
            raise BackendError(f"Ray refused the task: {type(exc).__name__}: {exc}") from exc
        driver.register_atexit()
        return out

    def _dashboard(self) -> dict[str, Any]:
        """The submitter's facts for a detached launch: addresses and session, with the
        dashboard URL (the Jobs API). An http(s) ``ray_address`` is the dashboard itself (no
        Ray connection at all); otherwise this process connects as an attached one would."""
        where = self._address()
        if where.startswith(("http://", "https://")):
            facts = {"ray_address": where, "dashboard_url": where.rstrip("/")}
            session = state_api.session_name(where)
            if session:
                facts["session_name"] = session
            return facts
        conn = self._connect()
        keep = ("ray_address", "gcs_address", "dashboard_url", "session_name", "namespace")
        facts = {k: conn[k] for k in keep if k in conn}
        if not facts.get("dashboard_url"):
            raise BackendError(
                f"the Ray cluster at {where!r} runs no dashboard, and detached runs are submitted "
                "through its Jobs API: start the head with the dashboard (`pip install "
                "'ray[default]'`), or pass ray_detached=False (runs then end with this process)."
            )
        return facts

    def _launch_detached(self, jobs: list[JobSpec]) -> list[dict[str, Any]]:
        """Hand the runs to runrec drivers that Ray Jobs runs on the cluster (one per
        ``MAX_RUNS_PER_DRIVER`` runs); return at once."""
        facts = self._dashboard()
        url = str(facts["dashboard_url"])
        sub = ray_jobs.DriverSubmitter(url)
        out: dict[str, dict[str, Any]] = {}
        for chunk in ray_jobs.chunks([j.run_id for j in jobs]):
            meta = {
                "runrec_store": self.store.root,
                "runrec_first_run": chunk[0],
                "runrec_runs": str(len(chunk)),
                "runrec_user": current_user(),
            }
            sid = sub.submit(self.store.root, chunk, self.options.get("ray_runtime_env"), meta)
            for rid in chunk:
                out[rid] = dict(
                    facts,
                    detached=True,
                    submission_id=sid,
                    driver_logs=ray_jobs.logs_command(sid, url),
                )
        return [out[j.run_id] for j in jobs]

    # -- verdicts --------------------------------------------------------------------------

    def wants_verdict(self, rec: RunRecord) -> bool:
        if not super().wants_verdict(rec):
            return False
        sch = rec.execution.scheduler if rec.execution else {}
        return self.held(rec) or bool(sch.get("task_id") or sch.get("submission_id"))

    def held(self, rec: RunRecord) -> bool:
        # the refs are only good while this process is connected (ray.shutdown() drops them)
        return driver.held_ref(rec.run_id) is not None

    def check_held(self, recs: list[RunRecord]) -> dict[str, dict[str, Any]]:
        """The submitter owns these tasks: a finished ObjectRef carries Ray's own exception."""
        refs = {r.run_id: driver.held_ref(r.run_id) for r in recs}
        ready, _ = ray.wait(
            list(refs.values()), num_returns=len(refs), timeout=0, fetch_local=False
        )
        ready_ids = {ref.hex() for ref in ready}
        out = {}
        for r in recs:
            ref = refs[r.run_id]
            if ref.hex() not in ready_ids:
                continue
            word, message, tb = driver.outcome(ref, self.owner_name)
            driver.forget(r.run_id)
            fresh = self.store.load(r.run_id, problems=[])
            if fresh.state.is_terminal():
                continue  # the job finished its own record (our timeout included)
            patch = verdict(fresh, word, message, source="backend", traceback=tb)
            if patch:
                out[r.run_id] = patch
        return out

    def ask(self, recs: list[RunRecord]) -> dict[str, dict[str, Any]]:
        """Another process owns these tasks: read them from the Ray state API. A detached run
        is left to its runrec driver while that driver job is alive."""
        launched = [r for r in recs if _sch(r).get("task_id")]
        out = self._ask_tasks(launched)
        out.update(self._ask_drivers([r for r in recs if not _sch(r).get("task_id")]))
        return out

    def _ask_drivers(self, recs: list[RunRecord]) -> dict[str, dict[str, Any]]:
        """Detached runs whose driver has not recorded their task: the driver job's status."""
        groups: dict[tuple[str, str], list[RunRecord]] = {}
        for r in recs:
            groups.setdefault((self._api_address(r), str(_sch(r)["submission_id"])), []).append(r)
        out = {}
        for (url, sid), members in groups.items():
            job = state_api.submitted_job(url, sid)
            if job is None:
                session = state_api.session_name(url) or ""
                patches = {r.run_id: lost_session_verdict(r, _sch(r), session) for r in members}
            else:
                patches = {r.run_id: driver_job_verdict(r, job) for r in members}
            for run_id, patch in patches.items():
                if patch and not self.store.load(run_id, problems=[]).state.is_terminal():
                    out[run_id] = patch
        return out

    def _ask_tasks(self, recs: list[RunRecord]) -> dict[str, dict[str, Any]]:
        groups: dict[tuple[str, str], list[tuple[RunRecord, str]]] = {}
        for r in recs:
            sch = r.execution.scheduler if r.execution else {}
            key = (self._api_address(r), str(sch.get("ray_job_id") or ""))
            groups.setdefault(key, []).append((r, str(sch["task_id"])))
        out = {}
        for (url, job_id), members in groups.items():
            owner = state_api.driver_job(url, job_id) if job_id else None
            if owner is not None and job_status(owner) in JOB_ALIVE:
                # a live runrec driver gives its runs' verdicts itself (as their owner)
                members = [(r, tid) for r, tid in members if not is_detached(r)]
            if not members:
                continue
            tasks = state_api.latest_tasks(url, job_id, [tid for _, tid in members])
            session = None
            for r, tid in members:
                t = tasks.get(tid)
                if t is None:
                    if session is None:
                        session = state_api.session_name(url) or ""
                    sch = r.execution.scheduler if r.execution else {}
                    patch = lost_session_verdict(r, sch, session)
                else:
                    patch = task_verdict(r, t, owner)
                if patch:
                    fresh = self.store.load(r.run_id, problems=[])
                    if not fresh.state.is_terminal():
                        out[r.run_id] = patch
        return out

    def _api_address(self, rec: RunRecord) -> str:
        sch = rec.execution.scheduler if rec.execution else {}
        return str(sch.get("dashboard_url") or sch.get("gcs_address") or self._address())

    # -- cancel ----------------------------------------------------------------------------

    def cancel(self, rec: RunRecord, by: str | None = None) -> None:
        """Cancel as the owner (``ray.cancel``), through the run's live runrec driver (a
        request in the store), or else without the owner (its worker killed, or recorded
        before it starts). ``by``: who asked (default: this user)."""
        if self.store.load(rec.run_id, problems=[]).state.is_terminal():
            return  # it ended first; its own record stands
        ref = driver.held_ref(rec.run_id)
        note = ""
        if ref is None and is_detached(rec):
            note = self._cancel_through_driver(rec)
            if not note:
                return  # the driver recorded it
            rec = self.store.load(rec.run_id, problems=[])
        if ref is not None:
            how = self._cancel_owned(rec, ref)
        elif rec.process is None:
            how = (
                "recorded before it started; its Ray task does nothing if it starts later (only "
                "the task's owner can remove it from Ray's queue)"
            )
        else:
            how = self._kill_worker(rec)
        self.record_cancel(rec, f"{how}; {note}" if note else how, by=by)

    def _cancel_owned(self, rec: RunRecord, ref: Any) -> str:
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
            driver.outcome(ref)  # consume it: Ray reports unread task errors at exit
            driver.forget(rec.run_id)
        return "ray.cancel(force=True)"

    def _cancel_through_driver(self, rec: RunRecord) -> str:
        """Ask the run's runrec driver to cancel it (only the owner can ``ray.cancel``): a
        request in the store, then wait for its record. "": done; else why not (the caller
        then cancels without the owner, and says so)."""
        sid = str(_sch(rec)["submission_id"])
        try:
            job = state_api.submitted_job(self._api_address(rec), sid)
        except BackendError as exc:
            return f"its runrec driver {sid} could not be asked ({exc})"
        if job is None or job_status(job) not in JOB_ALIVE:
            return f"its runrec driver {sid} is {job_status(job) if job else 'unknown to Ray'}"
        request_cancel(self.store, rec.run_id)
        end = time.monotonic() + CANCEL_WAIT_S
        while time.monotonic() < end:
            if self.store.load(rec.run_id, problems=[]).state.is_terminal():
                return ""
            time.sleep(0.2)
        return f"its runrec driver {sid} did not carry it out within {CANCEL_WAIT_S:g} s"

    def _kill_worker(self, rec: RunRecord) -> str:
        """Ray lets only the owner cancel a task; from another process, kill the run's worker
        with a small task pinned to its node (the process identity guards against PID reuse)."""
        sch = rec.execution.scheduler if rec.execution else {}
        node_id = sch.get("node_id")
        if not node_id or rec.process is None:
            raise BackendError(
                f"run {rec.run_id} has no Ray node or worker process recorded; try again in a moment."
            )
        self._connect()
        killer = driver.remote("kill", kill_process).options(
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
        if not tid and sch.get("submission_id"):
            sid = sch["submission_id"]
            try:
                job = state_api.submitted_job(self._api_address(rec), str(sid))
            except BackendError as exc:
                return f"its runrec driver (Ray job {sid}) could not be asked: {exc}"
            status = job_status(job) if job is not None else "not known to Ray Jobs yet"
            return f"its runrec driver (Ray job {sid}, {status}) has not launched its task yet"
        if not tid:
            return "it has no Ray task id yet"
        return state_api.describe_pending_task(self._api_address(rec), str(tid))


def _sch(rec: RunRecord) -> dict[str, Any]:
    return rec.execution.scheduler if rec.execution else {}


def request_cancel(store: Store, run_id: str) -> None:
    """Ask the run's runrec driver to cancel it: a version under execution.scheduler, which
    the driver notices within a second (``jobdriver.carry_out_cancel``)."""
    req = {
        "by": current_user(),
        "at": datetime.now(UTC).isoformat(timespec="milliseconds"),
        "host": socket.gethostname(),
        "pid": os.getpid(),
    }
    patch = {"execution": {"scheduler": {"cancel_requested": req}}}
    store.write_version(run_id, "cancel-request", patch, role="backend")


def _strategy(value: Any) -> Any:
    if isinstance(value, str):
        if value.upper() not in ("DEFAULT", "SPREAD"):
            raise ConfigError(
                f"ray_scheduling_strategy={value!r}: use 'DEFAULT', 'SPREAD' or {{'node_id': ID, 'soft': False}}."
            )
        return value.upper()
    if isinstance(value, dict) and "node_id" in value:
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
