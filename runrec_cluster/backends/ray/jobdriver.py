"""Detached runs, the cluster side: the runrec driver that Ray Jobs runs for a submission.

    python -m runrec_cluster.backends.ray.jobdriver STORE RUN_ID...

It launches the runs' tasks exactly as an attached submitter does (``RayBackend.launch``: same
task entry, options, hardware class, resources, retries, scheduling strategy), so it owns their
ObjectRefs. Then, until every one of its tasks is over, it

- records Ray's verdict for a task that ended without the job finishing its record (worker
  crash, memory monitor kill, node death...; source "backend"), as soon as the ref is ready;
- carries out cancel requests that any process wrote to the store (``request_cancel``):
  ``ray.cancel(force=True)`` as the owner, then ``cancelled``;
- on SIGTERM (``ray job stop``, ``ray stop``) records its open runs as killed before it exits
  (Ray ends a driver's tasks with it).

A crash of the driver itself (kill -9, its node lost) writes nothing: readers then find from
the state API that the owner is gone (OWNER_DIED) or, for a run whose task was never launched,
from the Jobs API that the driver ended (``states.driver_job_verdict``). See docs/ray.md.
"""

from __future__ import annotations

import os
import signal
import socket
import sys
import time
from typing import Any

import ray

from runrec_cluster.backends.base import JobSpec
from runrec_cluster.backends.ray import driver, jobs
from runrec_cluster.backends.ray.backend import RayBackend, cancel_request
from runrec_cluster.capture.hardware import HardwareClass
from runrec_cluster.errors import RunrecError
from runrec_cluster.record import Failure, FailureCause, RunRecord, end_patch
from runrec_cluster.store import Store, layout

POLL_S = 1.0  # how often the driver looks for cancel requests (one stat per open run)
# the submitter's keys under execution.scheduler; the driver adds its own (ray_job_id, task ids)
SUBMITTER_KEYS = frozenset(
    {"ray_address", "gcs_address", "dashboard_url", "session_name", "namespace"}
)


def say(msg: str) -> None:
    """A line in the driver's log (`ray job logs runrec-...`)."""
    print(f"runrec driver: {msg}", flush=True)


def backend_for_runs(store: Store, rec: RunRecord) -> RayBackend:
    """The attached backend that launches a submission's runs here, rebuilt from the record.
    The task runtime_env is left out: the tasks inherit the driver job's (the user's
    ``ray_runtime_env``, given to Ray Jobs as submitted, not as the record redacts it)."""
    ex = rec.execution
    assert ex is not None  # the submitter wrote the launch record before submitting us
    skip = {"ray_address", "ray_runtime_env", "ray_detached"}
    opts: dict[str, Any] = {k: v for k, v in ex.options.items() if k not in skip}
    opts["ray_detached"] = False
    hw = None
    if ex.hardware:
        hw = HardwareClass(
            name=ex.hardware, ray=dict(ex.hardware_request), expect=dict(ex.hardware_expect)
        )
    return RayBackend(store, ex.resources, opts, hw)


def launch(store: Store, backend: RayBackend, recs: list[RunRecord]) -> list[str]:
    """Launch the runs not over and not cancelled yet; returns their ids."""
    todo = []
    for r in recs:
        if r.state.is_terminal():
            continue
        req = cancel_request(r)
        if req is not None:
            backend.record_cancel(r, "before its Ray task was launched", by=req.get("by"))
            say(f"run {r.run_id}: cancelled before launch on request of {req.get('by')}")
            continue
        todo.append(r)
    if not todo:
        return []
    specs = [
        JobSpec(r.run_id, r.entrypoint.kind if r.entrypoint else "function", "", "") for r in todo
    ]
    infos = backend.launch(specs)
    own = [{k: v for k, v in info.items() if k not in SUBMITTER_KEYS} for info in infos]
    store.write_versions(  # one write for the whole call (a pack for many runs)
        [
            (r.run_id, "dispatch", {"execution": {"scheduler": o}})
            for r, o in zip(todo, own, strict=True)
        ],
        role="backend",
    )
    say(f"launched {len(todo)} Ray task(s) as Ray job {infos[0].get('ray_job_id')}")
    return [r.run_id for r in todo]


def watch(store: Store, backend: RayBackend, run_ids: list[str]) -> None:
    """Until every task is over: verdicts for tasks that died, cancels on request."""
    mtimes: dict[str, int] = {}
    while True:
        held = {rid: driver.held_ref(rid) for rid in run_ids}
        held = {rid: ref for rid, ref in held.items() if ref is not None}
        if not held:
            return
        refs = list(held.values())
        ready, _ = ray.wait(refs, num_returns=1, timeout=POLL_S, fetch_local=False)
        if ready:
            ready, _ = ray.wait(refs, num_returns=len(refs), timeout=0, fetch_local=False)
            done = {ref.hex() for ref in ready}
            recs = [store.load(rid, problems=[]) for rid, ref in held.items() if ref.hex() in done]
            for run_id, patch in backend.check_held(recs).items():
                store.write_version(run_id, "verdict", patch, role="backend")
                say(
                    f"run {run_id}: {patch['state']} ({patch['failure']['cause']}), Ray says "
                    f"{patch.get('execution', {}).get('scheduler', {}).get('ray_outcome')}"
                )
        for rid in held:
            if driver.held_ref(rid) is not None:
                carry_out_cancel(store, backend, rid, mtimes)


def carry_out_cancel(
    store: Store, backend: RayBackend, run_id: str, mtimes: dict[str, int]
) -> None:
    """Cancel the run if someone asked for it since the driver last looked (a new version in
    the run's directory changes its mtime: one stat per run and poll)."""
    try:
        m = os.stat(layout.run_dir(store.root, run_id)).st_mtime_ns
    except OSError:
        return
    if mtimes.get(run_id) == m:
        return
    mtimes[run_id] = m
    rec = store.load(run_id, problems=[])
    req = cancel_request(rec)
    if req is None or rec.state.is_terminal():
        return
    backend.cancel(rec, by=req.get("by"))
    say(f"run {run_id}: cancelled with ray.cancel(force=True) on request of {req.get('by')}")


def record_stopped(store: Store, run_ids: list[str], sid: str, signum: int) -> None:
    """The driver was told to stop: Ray ends its tasks with it. Record its open runs as killed."""
    for rid in run_ids:
        try:
            rec = store.load(rid, problems=[])
            if rec.state.is_terminal():
                continue
            failure = Failure(
                cause=FailureCause.KILLED,
                type="DriverStopped",
                message=(
                    f"the runrec driver (Ray job {sid}, pid {os.getpid()} on "
                    f"{socket.gethostname()}) received signal {signum} (`ray job stop`, `ray "
                    f"stop` or a node drain) while the run was {rec.state.value}; Ray ends a "
                    "driver's tasks with it"
                ),
                signal=signum,
                source="backend",
            )
            store.write_version(rid, "end", end_patch(failure, source="backend"), role="backend")
        except RunrecError:
            continue
        finally:
            driver.forget(rid)  # nothing left for the submitter-side exit record


def record_launch_failure(store: Store, run_ids: list[str], exc: Exception) -> None:
    """Ray refused the tasks (the options were checked by the submitter: rare): say so."""
    for rid in run_ids:
        if store.load(rid, problems=[]).state.is_terminal():
            continue
        failure = Failure(
            cause=FailureCause.INFRASTRUCTURE,
            type="LaunchError",
            message=f"the runrec driver could not launch the run's Ray task: {exc}",
            source="backend",
        )
        store.write_version(rid, "end", end_patch(failure, source="backend"), role="backend")


def _stop(signum: int, frame: Any) -> None:
    raise SystemExit(128 + signum)


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) < 2:
        print(f"usage: python -m {jobs.DRIVER_MODULE} STORE RUN_ID...", file=sys.stderr)
        return 2
    store, run_ids = Store(args[0]), args[1:]
    sid = jobs.submission_id(run_ids)
    got: list[int] = []

    def stop(signum: int, frame: Any) -> None:
        got.append(signum)
        _stop(signum, frame)

    t0 = time.monotonic()
    recs = [store.load(r, problems=[]) for r in run_ids]
    backend = backend_for_runs(store, recs[0])
    backend.owner_name = f"the runrec driver (Ray job {sid})"
    # connect first: ray.init installs a SIGTERM handler of its own, which this one replaces
    driver.connect(None, backend.options.get("ray_namespace"))
    signal.signal(signal.SIGTERM, stop)
    launched: list[str] = []
    try:
        try:
            launched = launch(store, backend, recs)
        except RunrecError as exc:
            record_launch_failure(store, run_ids, exc)
            say(f"could not launch: {exc}")
            return 1
        watch(store, backend, launched)
    except SystemExit:
        if got:
            record_stopped(store, launched or run_ids, sid, got[0])
            say(f"stopped by signal {got[0]}; open runs recorded as killed")
        raise
    say(f"all {len(launched)} run(s) over after {time.monotonic() - t0:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
