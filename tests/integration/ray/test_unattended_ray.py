"""Issue 14 on the real Ray cluster (ray/up): detached runs finish their records with nobody
watching. Two submitting processes hand a sweep (succeeds, raises, worker crash, sleeps until
cancelled) to runrec drivers on the cluster: one exits right after submit, one is killed with
kill -9 right after submit. The test then reads only the raw record files (tests/rawstore.py:
zstd + msgpack, no runrec code) and Ray's own view (the state API's task state and
end_time_ms, the Jobs API's driver status), read by the test itself.

The only runrec command run before the verdicts is the cancel itself: `runrec cancel RUN` from
another process (a subprocess of the test), which asks the run's driver to ray.cancel it.
Two more cases are about the driver dying: `ray job stop` of a driver (it records its open run
as killed itself), and kill -9 of a driver (nobody writes; the next read, `runrec reconcile`
here, finds from the state API that the task's owner died: OWNER_DIED).

Everything is submitted at once (module fixture); each case is checked in its own test.
"""

import os
import signal
import statistics
import subprocess
import sys
import textwrap
import time
from datetime import UTC, datetime

import pytest
import rayfns
from helpers import run_cli, wait_for, write_figures
from rawstore import raw_verdict, raw_versions

import runrec_cluster as rr

pytestmark = pytest.mark.usefixtures("ray_cluster")

DASHBOARD = os.environ.get("RAY_DASHBOARD_URL", "http://127.0.0.1:8265")
CASES = ("ok", "raise", "crash", "sleep")
# kind -> (state, cause, who wrote it, what Ray says about the task)
EXPECTED = {
    "ok": ("succeeded", None, "job", "FINISHED"),
    "raise": ("failed", "code_error", "job", "TASK_EXECUTION_EXCEPTION"),  # the job re-raises
    "crash": ("failed", "worker_crashed", "backend", "WORKER_DIED"),
    "sleep": ("cancelled", "cancelled", "backend", "TASK_CANCELLED"),
}
CAUSE = {"ok": "succeeded", "raise": "raised", "crash": "worker_crash", "sleep": "cancel"}

_SUBMITTER = textwrap.dedent(
    """
    import os, signal, sys
    sys.path[:0] = sys.argv[3].split(os.pathsep)
    import cloudpickle, rayfns
    cloudpickle.register_pickle_by_value(rayfns)
    import runrec_cluster as rr
    ex = rr.Executor(backend="ray", store=sys.argv[1], cwd=sys.argv[2],
                     ray_resources={"runrec-general": 1})
    hs = ex.map_array(rayfns.case, [{"kind": k} for k in sys.argv[5].split(",")])
    print(" ".join(h.run_id for h in hs), flush=True)
    if sys.argv[4] == "kill":
        os.kill(os.getpid(), signal.SIGKILL)
    """
)


def ray_task(run_id):
    """Ray's view of the run's task (newest attempt), found by its name, or None."""
    from ray.util.state import list_tasks

    rows = list_tasks(
        address=DASHBOARD,
        filters=[("name", "=", f"runrec-{run_id}")],
        detail=True,
        raise_on_missing_output=False,
    )
    return max(rows, key=lambda t: t.attempt_number) if rows else None


def ray_job(run_id):
    """The runrec driver whose first run is ``run_id``: the Ray Jobs job submitted as
    ``runrec-<run id>`` (docs/ray.md), checked against its metadata."""
    from ray.util.state import list_jobs

    jobs = list_jobs(
        address=DASHBOARD,
        filters=[("submission_id", "=", f"runrec-{run_id}")],
        detail=True,
        raise_on_missing_output=False,
    )
    for j in jobs:
        if (j.metadata or {}).get("runrec_first_run") == run_id:
            return j
    return None


def raw_state(store, run_id):
    """The newest state in the raw version files (no fold: enough to see "running")."""
    states = [v["patch"]["state"] for v in raw_versions(store, run_id) if "state" in v["patch"]]
    return states[-1] if states else None


def ended(run_id):
    """Ray's task once it is over (FINISHED or FAILED, with its end time)."""
    t = ray_task(run_id)
    return t if t is not None and t.state in ("FINISHED", "FAILED") and t.end_time_ms else None


def rss_mb(pid):
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None


def _cost(first_runs):
    """RSS of the runrec drivers and of their Ray JobSupervisor actors, read from /proc."""
    from ray.util.state import list_actors

    drivers = [ray_job(r) for r in first_runs]
    sup = list_actors(
        address=DASHBOARD,
        filters=[("class_name", "=", "JobSupervisor"), ("state", "=", "ALIVE")],
        detail=True,
        raise_on_missing_output=False,
    )
    return {
        "driver_rss_mb": [rss_mb(int(j.driver_info.pid)) for j in drivers if j and j.driver_info],
        "supervisor_rss_mb": [rss_mb(int(a.pid)) for a in sup if a.pid],
        "processes_per_submission": 2,  # the driver and its JobSupervisor actor's worker
    }


@pytest.fixture(scope="module")
def unattended(tmp_path_factory, ray_cluster):
    d = tmp_path_factory.mktemp("unattended")
    store = str(d / "store")
    try:
        yield from _unattended(d, store)
    finally:
        _stop_drivers(store)


def _unattended(d, store):
    here = os.path.dirname(__file__)
    paths = os.pathsep.join([here, os.path.dirname(os.path.dirname(here))])
    procs = {
        mode: subprocess.Popen(
            [sys.executable, "-c", _SUBMITTER, store, str(d), paths, mode, ",".join(CASES)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for mode in ("exit", "kill")
    }
    # the driver-death cases, submitted from this process (it reads only files and Ray after)
    ex = rr.Executor(backend="ray", store=store, cwd=d, ray_resources={"runrec-general": 1})
    stop = ex.submit(rayfns.case, kind="sleep").run_id
    never = (
        rr.Executor(backend="ray", store=store, cwd=d, ray_accelerator_type="H100")
        .submit(rayfns.case, kind="ok")
        .run_id
    )
    outs = {mode: p.communicate(timeout=120) for mode, p in procs.items()}
    runs = {}
    for mode, (out, err) in outs.items():
        assert out.strip(), f"submitter {mode} printed no run ids: {err[-2000:]}"
        runs[mode] = dict(zip(CASES, out.split(), strict=True))
    sleepers = [runs[m]["sleep"] for m in runs] + [stop]
    for rid in sleepers:
        wait_for(f"run {rid} to be running", lambda r=rid: raw_state(store, r) == "running", 120)
    cost = _cost([runs["exit"]["ok"], runs["kill"]["ok"], stop, never])
    cancels = [
        subprocess.Popen(
            [sys.executable, "-m", "runrec_cluster", "cancel", "--store", store, runs[m]["sleep"]],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for m in runs
    ]
    from ray.job_submission import JobSubmissionClient

    stop_job = ray_job(stop)
    JobSubmissionClient(DASHBOARD).stop_job(stop_job.submission_id)
    # kill -9 the driver of the run that can never start, once Ray has its task
    wait_for("the pending task in the state API", lambda: ray_task(never), 60)
    crashed = wait_for(
        "the driver's pid", lambda: (j := ray_job(never)) and j.driver_info and j, 60
    )
    os.kill(int(crashed.driver_info.pid), signal.SIGKILL)
    cancel_out = [c.communicate(timeout=120) + (c.returncode,) for c in cancels]
    yield {
        "store": store,
        "procs": procs,
        "outs": outs,
        "runs": runs,
        "stop": stop,
        "stop_job": stop_job,
        "never": never,
        "crashed_job": crashed,
        "cancel_out": cancel_out,
        "cost": cost,
    }


def _stop_drivers(store):
    """Stop any runrec driver of this store still running (none, when every test passed)."""
    from ray.job_submission import JobSubmissionClient
    from ray.util.state import list_jobs

    client = JobSubmissionClient(DASHBOARD)
    for j in list_jobs(
        address=DASHBOARD,
        filters=[("status", "=", "RUNNING")],
        detail=True,
        limit=10000,
        raise_on_missing_output=False,
    ):
        if (j.metadata or {}).get("runrec_store") == store:
            client.stop_job(j.submission_id)


def test_submitters_exit_and_are_killed_right_after_submit(unattended):
    procs = unattended["procs"]
    assert procs["exit"].returncode == 0, unattended["outs"]["exit"][1][-2000:]
    assert procs["kill"].returncode == -signal.SIGKILL
    assert "still open when this process exited" not in unattended["outs"]["exit"][1]
    for out, err, rc in unattended["cancel_out"]:
        assert rc == 0 and "state: cancelled" in out, (out, err)


@pytest.mark.parametrize("kind", CASES)
@pytest.mark.parametrize("mode", ["exit", "kill"])
def test_final_state_and_cause_in_the_raw_files(unattended, mode, kind):
    store, rid = unattended["store"], unattended["runs"][mode][kind]
    state, cause, source, ray_word = EXPECTED[kind]
    t = wait_for(f"Ray to end the task of {kind}", lambda: ended(rid), 120)
    assert ray_word in (t.state, t.error_type), (t.state, t.error_type)
    v = wait_for(f"the verdict of {kind} in the files", lambda: raw_verdict(store, rid), 60)
    assert (v["state"], v["cause"], v["source"]) == (state, cause, source), v["failure"]
    if kind == "crash":
        assert v["failure"]["type"] == "WORKER_DIED" and "runrec driver" in v["failure"]["message"]
    if kind == "sleep":
        assert "ray.cancel(force=True)" in v["failure"]["message"] and v["failure"]["by"]
    if kind == "raise":
        assert "bad value, on purpose" in v["failure"]["message"]


def test_drivers_exit_when_their_runs_are_over(unattended):
    for mode in ("exit", "kill"):
        first = unattended["runs"][mode]["ok"]

        def over(first=first):
            j = ray_job(first)
            return j is not None and str(j.status).endswith("SUCCEEDED") and j

        j = wait_for(f"the {mode} submitter's driver to exit", over, 120)
        assert j.entrypoint.startswith("python -m runrec_cluster.backends.ray.jobdriver ")


def test_ray_job_stop_records_the_open_run_as_killed(unattended):
    store, rid = unattended["store"], unattended["stop"]
    v = wait_for("the stopped driver's run to end", lambda: raw_verdict(store, rid), 60)
    assert (v["state"], v["cause"]) == ("failed", "killed"), v["failure"]
    # the driver records DriverStopped; Ray then SIGTERMs the worker, which records its signal
    assert v["failure"]["type"] in ("DriverStopped", "Signal"), v["failure"]
    types = {
        (x["patch"].get("failure") or {}).get("type")
        for x in raw_versions(store, rid)
        if x["patch"].get("state") == "failed"
    }
    assert "DriverStopped" in types, types
    # Ray marks the job STOPPED only once its supervisor has seen the driver process exit,
    # which can trail the driver's own record by seconds under load: wait for Ray's word.
    j = wait_for(
        "Ray to report the stopped driver's job",
        lambda: (j := ray_job(rid)) is not None and str(j.status).split(".")[-1] != "RUNNING" and j,
        60,
        every=0.5,
    )
    assert str(j.status).endswith("STOPPED"), j.status


def test_driver_killed_next_read_gives_owner_died(unattended):
    """Nobody writes when the driver is killed -9: the next read (here `runrec reconcile`)
    finds from the state API that the pending task's owner died."""
    store, rid = unattended["store"], unattended["never"]
    assert raw_verdict(store, rid) is None

    def reconciled():
        r = run_cli("reconcile", "--store", store, rid)
        assert r.returncode == 0, r.stderr
        return raw_verdict(store, rid)

    v = wait_for("reconcile to end the run", reconciled, 90, every=1)
    assert (v["state"], v["cause"], v["source"]) == ("failed", "killed", "scheduler"), v
    assert v["failure"]["type"] == "OWNER_DIED"


def test_delays_and_cost(unattended):
    """Per cause: seconds from Ray's end_time_ms of the task to the verdict's written_at."""
    store = unattended["store"]
    delays: dict[str, list[float]] = {}
    for mode in ("exit", "kill"):
        for kind in CASES:
            rid = unattended["runs"][mode][kind]
            t = wait_for("Ray's end", lambda r=rid: ended(r), 60)
            v = wait_for("the verdict", lambda r=rid: raw_verdict(store, r), 60)
            end = datetime.fromtimestamp(t.end_time_ms / 1000, UTC)
            delays.setdefault(CAUSE[kind], []).append(
                round((v["written_at"] - end).total_seconds(), 3)
            )
    t = wait_for("Ray's end of the stopped task", lambda: ended(unattended["stop"]), 60)
    v = raw_verdict(store, unattended["stop"])
    end = datetime.fromtimestamp(t.end_time_ms / 1000, UTC)
    delays["driver_stopped"] = [round((v["written_at"] - end).total_seconds(), 3)]
    summary = {
        c: {"median": statistics.median(xs), "worst": max(xs), "n": len(xs)}
        for c, xs in delays.items()
    }
    write_figures(
        "unattended_ray",
        "Ray, detached (runrec driver as a Ray Job): seconds from the state API's end_time_ms of "
        "the task to the verdict version's written_at, submitter exited or killed -9 right "
        "after submit; RSS of each runrec driver and JobSupervisor actor (MiB)",
        delays=delays,
        summary=summary,
        measured_at=time.strftime("%Y-%m-%dT%H:%M:%S"),
        **unattended["cost"],
    )
    assert all(abs(x) < 600 for xs in delays.values() for x in xs), delays


def test_cli_submit_returns_at_once_and_says_what_next(tmp_path):
    store = str(tmp_path / "store")
    r = run_cli("submit", "--store", store, "--backend", "ray", "--", "bash", "-c", "sleep 2")
    assert r.returncode == 0, r.stderr
    run_id = r.stdout.split("submitted run ", 1)[1].split()[0]
    assert raw_verdict(store, run_id) is None, "returned before the run ended"
    short = run_id[:12]
    for line in (f"runrec wait {short}", f"runrec show {short}", f"runrec cancel {short}"):
        assert line in r.stdout, r.stdout
    assert f"ray job logs runrec-{run_id} --address http" in r.stdout, r.stdout
    w = run_cli("wait", "--store", store, short, "--timeout", "120")
    assert w.returncode == 0 and f"run {run_id} succeeded" in w.stdout, (w.stdout, w.stderr)
    assert raw_verdict(store, run_id)["state"] == "succeeded"
