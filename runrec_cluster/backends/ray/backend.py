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

from typing import Any

import msgspec
import ray
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

from runrec_cluster.backends.base import Backend, JobSpec
from runrec_cluster.backends.ray import driver, state_api
from runrec_cluster.backends.ray.driver import connect
from runrec_cluster.backends.ray.states import lost_session_verdict, task_verdict, verdict
from runrec_cluster.backends.ray.task import entry, kill_process
from runrec_cluster.errors import BackendError, ConfigError
from runrec_cluster.record import RunRecord

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
HARDWARE_KEYS = ("accelerator_type", "resources")


class RayBackend(Backend):
    name = "ray"
    option_prefix = "ray_"
    known_options = RAY_OPTIONS
    enforces_timeout = False  # Ray has no time limit: the job's watchdog enforces timeout_min
    check_interval_s = 3.0  # at most one state-API call per run per 3 s (held refs: no limit)

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

    def launch(self, jobs: list[JobSpec]) -> list[dict[str, Any]]:
        if not jobs:
            return []
        base = self._task_options()
        conn = self._connect()
        fn = driver.remote("entry", entry)
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

    # -- verdicts --------------------------------------------------------------------------

    def wants_verdict(self, rec: RunRecord) -> bool:
        if not super().wants_verdict(rec):
            return False
        sch = rec.execution.scheduler if rec.execution else {}
        return self.held(rec) or bool(sch.get("task_id"))

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
            word, message, tb = driver.outcome(ref)
            driver.forget(r.run_id)
            fresh = self.store.load(r.run_id, problems=[])
            if fresh.state.is_terminal():
                continue  # the job finished its own record (our timeout included)
            patch = verdict(fresh, word, message, source="backend", traceback=tb)
            if patch:
                out[r.run_id] = patch
        return out

    def ask(self, recs: list[RunRecord]) -> dict[str, dict[str, Any]]:
        """Another process owns these tasks: read them from the Ray state API."""
        groups: dict[tuple[str, str], list[tuple[RunRecord, str]]] = {}
        for r in recs:
            sch = r.execution.scheduler if r.execution else {}
            key = (self._api_address(r), str(sch.get("ray_job_id") or ""))
            groups.setdefault(key, []).append((r, str(sch["task_id"])))
        out = {}
        for (url, job_id), members in groups.items():
            tasks = state_api.latest_tasks(url, job_id, [tid for _, tid in members])
            owner = state_api.driver_job(url, job_id) if job_id else None
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

    def cancel(self, rec: RunRecord) -> None:
        if self.store.load(rec.run_id, problems=[]).state.is_terminal():
            return  # it ended first; its own record stands
        ref = driver.held_ref(rec.run_id)
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
                driver.outcome(ref)  # consume it: Ray reports unread task errors at exit
                driver.forget(rec.run_id)
        elif rec.process is None:
            how = (
                "recorded before it started; its Ray task does nothing if it starts later (only "
                "the submitting process can remove it from Ray's queue)"
            )
        else:
            how = self._kill_worker(rec)
        self.record_cancel(rec, how)

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
        if not tid:
            return "it has no Ray task id yet"
        return state_api.describe_pending_task(self._api_address(rec), str(tid))


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


def _resource_dict(value: Any, what: str) -> dict[str, float]:
    if not isinstance(value, dict) or not all(
        isinstance(k, str) and isinstance(v, (int, float)) and not isinstance(v, bool)
        for k, v in value.items()
    ):
        raise ConfigError(
            f"{what} must map resource names to amounts, e.g. {{'hwclass-a100': 1}}; got {value!r}."
        )
    return {k: float(v) for k, v in value.items()}
