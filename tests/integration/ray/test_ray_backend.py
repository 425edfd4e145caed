"""The Ray backend against the real local cluster (ray/up): tasks, sweeps, hardware classes,
and the verdict for tasks that die without finishing their record, seen by the submitting
process (it owns the ObjectRefs) and by another process (the Ray state API). The slow fault
runs start together up front (module fixture `early`)."""

import os
import signal
import subprocess
import sys
import textwrap
import time

import jobfns
import pytest
import rayfns
from helpers import run_cli, wait_for

import runrec_cluster as rr
from runrec_cluster.capture import proc
from runrec_cluster.errors import ConfigError

pytestmark = pytest.mark.usefixtures("ray_cluster")


# ray/up's oom-test node kills workers once the *host* uses 25% of its memory, so while the
# out-of-memory test runs, other tests' tasks must not land there: they ask for
# "runrec-general", which only the head and the GPU node offer.
GENERAL = {"runrec-general": 1}


def ray_ex(store, cwd, **kw):
    kw.setdefault("ray_resources", GENERAL)
    return rr.Executor(backend="ray", store=store, cwd=cwd, **kw)


def ray_task(rec):
    """Ray's own view of the run's task (newest attempt), from the state API."""
    from ray.util.state import list_tasks

    tid = rec.execution.scheduler["task_id"]
    rows = list_tasks(filters=[("task_id", "=", tid)], detail=True, raise_on_missing_output=False)
    return max(rows, key=lambda t: t.attempt_number) if rows else None


def ray_says(rec, word, timeout=30):
    """Wait until the state API reports the task FAILED with error_type ``word`` (or ``word``
    as the task state)."""

    def check():
        t = ray_task(rec)
        return t is not None and (t.state == word or (t.state == "FAILED" and t.error_type == word))

    return wait_for(f"Ray to report {word} for {rec.run_id}", check, timeout)


_DRIVER = textwrap.dedent(
    """
    import os, signal, sys, time
    import runrec_cluster as rr
    ex = rr.Executor(backend="ray", store=sys.argv[1], cwd=sys.argv[2], ray_resources={"runrec-general": 1},
                     ray_detached=False)
    h = ex.submit(time.sleep, 300)
    never = rr.Executor(backend="ray", store=sys.argv[1], cwd=sys.argv[2], ray_accelerator_type="H100",
                        ray_detached=False).submit(time.sleep, 1)
    print(h.run_id, never.run_id, flush=True)
    while h.state != rr.RunState.RUNNING:
        time.sleep(0.1)
    if sys.argv[3] == "die":
        os.kill(os.getpid(), signal.SIGKILL)
    """
)


# a Ray Client connection (ray://) needs a process of its own: this one is connected already
_CLIENT = textwrap.dedent(
    """
    import sys, time
    import runrec_cluster as rr
    ex = rr.Executor(backend="ray", store=sys.argv[1], cwd=sys.argv[2], ray_address="ray://127.0.0.1:10001",
                     ray_resources={"runrec-general": 1})
    # Ray starts a client server per connection; on a loaded 2-core machine that start can
    # time out ("Starting Ray client server failed"): that is Ray's, so try the connection again
    for attempt in range(3):
        try:
            h = ex.submit(divmod, 7, 2)
            break
        except rr.BackendError as exc:
            if "client server" not in str(exc) or attempt == 2:
                raise
            time.sleep(5)
    print(h.run_id, h.result(timeout=120), flush=True)
    """
)


@pytest.fixture(scope="module")
def early(tmp_path_factory, ray_cluster):
    """Slow runs started first, checked by the tests below while the others run."""
    d = tmp_path_factory.mktemp("early")
    store = rr.Store(d / "store")
    return {
        "store": store,
        "oom": ray_ex(store, d, ray_resources={"oom-test": 1}).submit(rayfns.hog_memory),
        "timeout": ray_ex(store, d, timeout_min=0.05).submit(jobfns.sleep_then, 300),
        # only another process checks this one (in a store of its own, so that it sees no other)
        # (attached: a detached run's driver would give the verdict at once)
        "crash_elsewhere": ray_ex(rr.Store(d / "store2"), d, ray_detached=False).submit(
            rayfns.crash, 1
        ),
        # submitting processes that exit, and that are killed (-9), with runs open
        "drivers_store": rr.Store(d / "store3"),
        "client_store": rr.Store(d / "store4"),
        "client": subprocess.Popen(
            [sys.executable, "-c", _CLIENT, str(d / "store4"), str(d)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        ),
        "drivers": {
            mode: subprocess.Popen(
                [sys.executable, "-c", _DRIVER, str(d / "store3"), str(d), mode],
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
            for mode in ("exit", "die")
        },
    }


# -- runs that succeed -------------------------------------------------------------------------


def test_task_records_ray_ids_and_node_facts(store, tmp_path, ray_cluster, early):
    """Attached (the submitter is the driver); the detached ids: test_unattended_ray.py."""
    import ray

    h = ray_ex(store, tmp_path, ray_detached=False).submit(jobfns.add, 2, b=3)
    assert h.result(timeout=60) == 5
    rec = h.record()
    sch = rec.execution.scheduler
    assert rec.execution.backend == "ray" and rec.state_source == "job" and rec.attempt == 1
    # the submitter's part
    assert sch["ray_job_id"] == ray.get_runtime_context().get_job_id()
    assert (
        sch["object_ref"].startswith(sch["task_id"]) and sch["task_name"] == f"runrec-{rec.run_id}"
    )
    assert sch["dashboard_url"].startswith("http://") and sch["session_name"].startswith("session_")
    assert sch["driver_pid"] == os.getpid()
    # the task's own part
    assert sch["node_id"] in ray_cluster.values() and sch["node_ip"]
    assert sch["worker_pid"] == rec.process.pid != os.getpid() and sch["worker_id"]
    assert sch["attempt_number"] == 0 and sch["assigned_resources"] == {"CPU": 1.0, **GENERAL}
    # node facts: the Ray node id, its custom resources as features
    node = rec.node
    assert node.scheduler_node == sch["node_id"] and node.hostname and node.python_executable
    expected = {
        ray_cluster["head"]: ["hwclass-cpu", "runrec-general"],
        ray_cluster["gpu"]: ["accelerator_type:A100", "hwclass-a100", "runrec-general"],
        ray_cluster["oom"]: ["oom-test"],
    }[sch["node_id"]]
    assert node.features == expected
    # Ray agrees
    t = wait_for(
        "the task to be FINISHED in the state API",
        lambda: (x := ray_task(rec)) and x.state == "FINISHED" and x,
    )
    assert t.worker_pid == rec.process.pid and t.node_id == sch["node_id"]


def test_command_runs_in_a_task(store, tmp_path):
    out = tmp_path / "out.txt"
    ok = ray_ex(store, tmp_path).submit_command(["bash", "-c", f'echo "$RUNREC_RUN_ID" > {out}'])
    assert ok.result(timeout=60) == 0
    assert out.read_text().strip() == ok.run_id
    bad = ray_ex(store, tmp_path).submit_command(["bash", "-c", "exit 3"])
    rec = bad.wait(timeout=60)
    assert rec.state == rr.RunState.FAILED and rec.exit_code == 3
    assert rec.failure.cause.value == "exit_code" and rec.state_source == "job"


def test_function_runs_in_the_submit_directory(store, tmp_path):
    assert ray_ex(store, tmp_path).submit(rayfns.cwd).result(timeout=60) == str(tmp_path)


def test_sweep_of_8(store, tmp_path):
    hs = ray_ex(store, tmp_path).map_array(jobfns.train, [{"lr": i / 10} for i in range(8)])
    assert [h.result(timeout=120)["lr"] for h in hs] == [i / 10 for i in range(8)]
    recs = [h.record() for h in hs]
    assert len(recs) == 8 and len({r.sweep_id for r in recs}) == 1 and recs[0].sweep_id
    assert sorted(r.sweep_index for r in recs) == list(range(8))
    assert len({r.execution.scheduler["task_id"] for r in recs}) == 8, "one Ray task per element"
    assert len({r.execution.scheduler["ray_job_id"] for r in recs}) == 1
    assert all(
        r.metrics == {"acc": round(1 - r.sweep_index / 10, 6), "epochs_done": 3} for r in recs
    )


def test_ray_retry_is_a_new_attempt_of_the_same_run(store, tmp_path):
    h = ray_ex(store, tmp_path, ray_max_retries=1).submit(
        rayfns.crash_on_first_attempt, str(tmp_path / "marker")
    )
    assert h.result(timeout=60) == "second attempt"
    rec = h.record()
    assert rec.attempt == 2 and rec.execution.scheduler["attempt_number"] == 1
    assert rec.state == rr.RunState.SUCCEEDED and rec.failure is None
    assert len(list(store.run_ids())) == 1


# -- hardware classes --------------------------------------------------------------------------


def test_hardware_class_lands_on_the_a100_node(store, project, ray_cluster):
    h = ray_ex(store, project, hardware="a100", gpus=1).submit(
        jobfns.env_var, "CUDA_VISIBLE_DEVICES"
    )
    assert h.result(timeout=60) == "0", "num_gpus=1 gives the task the (fake) GPU"
    rec = h.record()
    assert rec.node.scheduler_node == ray_cluster["gpu"] and rec.execution.hardware == "a100"
    assert rec.execution.hardware_match is True and rec.execution.hardware_mismatches == []
    assert "hwclass-a100" in rec.node.features
    assigned = rec.execution.scheduler["assigned_resources"]
    assert (
        assigned["GPU"] == 1
        and assigned["hwclass-a100"] == 1
        and "accelerator_type:A100" in assigned
    )


def test_hardware_mismatch_is_recorded(store, project, ray_cluster):
    h = ray_ex(store, project, hardware="wrong").submit(jobfns.add, 1)
    assert h.result(timeout=60) == 11
    rec = h.record()
    assert rec.node.scheduler_node == ray_cluster["head"]
    assert rec.execution.hardware_match is False
    assert rec.execution.hardware_mismatches == [
        "node_features: expected ['hwclass-a100'], node has ['hwclass-cpu', 'runrec-general']"
    ]


def test_class_no_node_has_stays_pending_and_says_why(store, project):
    h = ray_ex(store, project, hardware="h100").submit(jobfns.add, 1)
    wait_for(
        "the runrec driver to launch the task",
        lambda: h.record().execution.scheduler.get("task_id"),
        timeout=60,
    )
    with pytest.raises(rr.JobTimeout) as info:
        h.wait(timeout=5)
    msg = str(info.value)
    assert "still submitted after 5 s" in msg and "pending" in msg and "infeasible" in msg, msg
    assert "accelerator_type:H100" in msg and "accelerator_type:A100" in msg, (
        "what is asked and what exists"
    )
    rec = h.record()
    assert rec.state == rr.RunState.SUBMITTED and rec.process is None
    h.cancel()
    rec = h.record()
    assert rec.state == rr.RunState.CANCELLED and rec.failure.cause.value == "cancelled"
    assert rec.failure.source == "backend" and rec.state_source == "backend"
    ray_says(rec, "TASK_CANCELLED")


# -- runs that die without finishing their record ----------------------------------------------


def test_worker_crash_seen_by_the_submitter(store, tmp_path):
    h = ray_ex(store, tmp_path).submit(rayfns.crash, 1)
    rec = h.wait(timeout=60)
    assert rec.state == rr.RunState.FAILED and rec.failure.cause.value == "worker_crashed", (
        rec.failure
    )
    assert rec.failure.type == "WORKER_DIED" and "WorkerCrashedError" in rec.failure.message
    assert rec.failure.source == "backend" and rec.state_source == "backend"
    assert rec.process is not None, "the job had started and recorded its worker"


def test_worker_crash_seen_by_another_process(early):
    """`runrec reconcile` does not hold the ObjectRef: it reads the task from the state API."""
    h = early["crash_elsewhere"]
    store = h.store
    rec0 = store.load(h.run_id)
    ray_says(rec0, "WORKER_DIED")
    assert not store.load(h.run_id).state.is_terminal(), "nobody has given a verdict yet"
    r = run_cli("reconcile", "--store", store.root, h.run_id)
    assert r.returncode == 0, r.stderr
    assert h.run_id in r.stdout and "worker_crashed" in r.stdout, r.stdout
    rec = store.load(h.run_id)
    assert rec.state == rr.RunState.FAILED and rec.failure.cause.value == "worker_crashed"
    assert rec.failure.source == "scheduler" and rec.state_source == "scheduler"
    assert (
        rec.failure.type == "WORKER_DIED" and "attempt 0: FAILED/WORKER_DIED" in rec.failure.message
    )
    assert rec.execution.scheduler["ray_outcome"] == "WORKER_DIED"
    ls = run_cli("ls", "--store", store.root)
    assert ls.returncode == 0 and "worker_crashed" in ls.stdout, ls.stdout


def test_cancel_a_running_function(store, tmp_path):
    h = ray_ex(store, tmp_path).submit(jobfns.sleep_then, 300)
    rec = wait_for("the run to start", lambda: (r := h.record()).state == rr.RunState.RUNNING and r)
    h.cancel()
    rec = h.record()
    assert rec.state == rr.RunState.CANCELLED and rec.failure.cause.value == "cancelled"
    assert rec.failure.by and "ray.cancel(force=True)" in rec.failure.message
    ray_says(rec, "TASK_CANCELLED")
    wait_for("the worker to be gone", lambda: proc.is_alive(rec.process) is False)


def test_cancel_a_running_command_ends_the_command(store, tmp_path):
    pidfile = tmp_path / "pid"
    h = ray_ex(store, tmp_path).submit_command(
        ["bash", "-c", f"echo $$ > {pidfile}; exec sleep 300"]
    )
    wait_for("the command to start", lambda: pidfile.exists() and pidfile.read_text().strip())
    cmd = proc.identity(int(pidfile.read_text()))
    h.cancel()
    rec = h.record()
    assert rec.state == rr.RunState.CANCELLED and rec.failure.source == "backend", rec.failure
    wait_for("the command to be gone", lambda: proc.is_alive(cmd) is False, timeout=15)
    time.sleep(1)
    assert h.record().state == rr.RunState.CANCELLED, "nothing overrides the cancel afterwards"


def test_cancel_from_another_process_kills_the_worker_and_its_command(store, tmp_path):
    """Attached: `runrec cancel` cannot ray.cancel a task it does not own: it kills the run's
    worker with a task pinned to the node; the command the worker ran goes with it. (A
    detached run's driver cancels it: test_unattended_ray.py.)"""
    pidfile = tmp_path / "pid"
    h = ray_ex(store, tmp_path, ray_detached=False).submit_command(
        ["bash", "-c", f"echo $$ > {pidfile}; exec sleep 300"]
    )
    wait_for("the command to start", lambda: pidfile.exists() and pidfile.read_text().strip())
    cmd = proc.identity(int(pidfile.read_text()))
    r = run_cli("cancel", "--store", store.root, h.run_id)
    assert r.returncode == 0, r.stderr
    assert "state: cancelled" in r.stdout, r.stdout
    rec = store.load(h.run_id)
    assert rec.failure.cause.value == "cancelled" and "SIGKILL" in rec.failure.message
    wait_for("the worker to be gone", lambda: proc.is_alive(rec.process) is False, timeout=15)
    wait_for("the command to be gone", lambda: proc.is_alive(cmd) is False, timeout=15)
    assert h.wait(timeout=10).state == rr.RunState.CANCELLED


def test_worker_killed_while_running_a_command(store, tmp_path):
    pidfile = tmp_path / "pid"
    h = ray_ex(store, tmp_path).submit_command(
        ["bash", "-c", f"echo $$ > {pidfile}; exec sleep 300"]
    )
    wait_for("the command to start", lambda: pidfile.exists() and pidfile.read_text().strip())
    cmd = proc.identity(int(pidfile.read_text()))
    os.kill(h.record().process.pid, signal.SIGKILL)
    rec = h.wait(timeout=60)
    assert rec.state == rr.RunState.FAILED and rec.failure.cause.value == "worker_crashed"
    wait_for("the orphaned command to be ended", lambda: proc.is_alive(cmd) is False, timeout=15)


def test_out_of_memory(early, ray_cluster):
    rec = early["oom"].wait(timeout=90)
    assert rec.state == rr.RunState.FAILED and rec.failure.cause.value == "out_of_memory", (
        rec.failure
    )
    assert rec.failure.type == "OUT_OF_MEMORY" and "low on memory" in rec.failure.message
    assert rec.failure.source == "backend"
    assert rec.node.scheduler_node == ray_cluster["oom"] and rec.node.features == ["oom-test"]


def test_our_timeout_is_the_jobs_verdict(early):
    h = early["timeout"]
    rec = h.wait(timeout=60)
    assert rec.state == rr.RunState.FAILED and rec.failure.cause.value == "timeout", rec.failure
    assert rec.failure.source == "job" and rec.state_source == "job"
    assert "time limit of 3 s" in rec.failure.message
    ray_says(rec, "WORKER_DIED")  # the watchdog ends the worker: Ray sees a crash...
    rec = h.wait(timeout=5)
    assert rec.failure.cause.value == "timeout" and rec.failure.source == "job", (
        "...which does not win"
    )
    events = [v.event for v in early["store"].versions(h.run_id, [])]
    assert "reconcile" not in events, events


# -- the submitting process ends ---------------------------------------------------------------


def test_runs_end_with_their_driver(early):
    """Ray ends a driver's tasks when it exits. A running function's worker gets SIGTERM and
    the job records it; a task that never started is recorded by the exiting submitter, or,
    after kill -9 of the submitter, by another process through the state API."""
    store = early["drivers_store"]
    procs = early["drivers"]
    outs = {mode: p.communicate(timeout=60) for mode, p in procs.items()}
    runs = {mode: out.splitlines()[0].split() for mode, (out, _) in outs.items()}
    assert procs["exit"].returncode == 0 and procs["die"].returncode == -signal.SIGKILL, outs
    err = outs["exit"][1]
    assert "still open when this process exited" in err and runs["exit"][1] in err, err
    # the exiting submitter records both its open runs (the running one's worker may record
    # its SIGTERM first: either way, killed, and said why)
    for run_id in runs["exit"]:
        rec = store.load(run_id)
        assert rec.state == rr.RunState.FAILED and rec.failure.cause.value == "killed", rec.failure
        assert "driver" in rec.failure.message and "SystemExit" not in rec.failure.message
    rec = store.load(runs["exit"][1])
    assert rec.failure.type == "DriverExited" and rec.failure.source == "backend", rec.failure
    # the killed submitter wrote nothing: the worker records its SIGTERM, and for the run that
    # never started the state API tells another process
    assert store.load(runs["die"][1]).state == rr.RunState.SUBMITTED

    def reconciled():
        r = run_cli("reconcile", "--store", store.root, *runs["die"])
        assert r.returncode == 0, r.stderr
        return all(store.load(x).state.is_terminal() for x in runs["die"])

    wait_for("reconcile to end the killed driver's runs", reconciled, timeout=60, every=0.5)
    for run_id in runs["die"]:
        rec = store.load(run_id)
        assert rec.state == rr.RunState.FAILED and rec.failure.cause.value == "killed", rec.failure
        assert "driver" in rec.failure.message and "SystemExit" not in rec.failure.message
    rec = store.load(runs["die"][1])
    assert rec.failure.type == "OWNER_DIED" and rec.failure.source == "scheduler"
    # before Ray marks it (15 s after the driver ended) it is still PENDING; after, WORKER_DIED
    assert "ended at" in rec.failure.message and "Ray ends a driver's tasks" in rec.failure.message


def test_ray_client_address(early):
    out, err = early["client"].communicate(timeout=120)
    assert early["client"].returncode == 0, err
    run_id, result = out.split(maxsplit=1)
    assert result.strip() == "[3, 1]"
    rec = early["client_store"].load(run_id)
    sch = rec.execution.scheduler
    assert sch["ray_address"] == "ray://127.0.0.1:10001" and sch["task_id"] and sch["node_id"]
    assert rec.state == rr.RunState.SUCCEEDED and rec.state_source == "job"


def test_a_node_that_cannot_read_the_store(store):
    """The task fails before `execute` can record anything (a store not mounted on the node):
    the submitter's verdict says so, with Ray's traceback, not a guess."""
    import ray

    from runrec_cluster.backends.ray import driver, states, task

    ref = driver.remote("entry", task.entry).remote(
        "/nonexistent/store", "01m8cbndfrs7655fpya89aym4p", None
    )
    ray.wait([ref], timeout=60)
    word, message, tb = driver.outcome(ref)
    assert word == "TASK_EXECUTION_EXCEPTION"
    assert message == (
        "the Ray task raised before the job recorded its end: runrec_cluster.errors.RecordNotFound: "
        "no run 01m8cbndfrs7655fpya89aym4p in store /nonexistent/store. List runs with `runrec ls`."
    )
    assert "/backends/ray/" in tb and '.py", line' in tb and "in entry" in tb and "\x1b[" not in tb
    rec = rr.RunRecord(run_id="01m8cbndfrs7655fpya89aym4p", state=rr.RunState.SUBMITTED)
    p = states.verdict(rec, word, message, source="backend", traceback=tb)
    assert (
        p["state"] == "failed"
        and p["failure"]["cause"] == "infrastructure"
        and p["failure"]["traceback"] == tb
    )


# -- configuration -----------------------------------------------------------------------------


def test_options_are_checked(store, tmp_path):
    with pytest.raises(ConfigError, match="unknown option.*ray_adress.*ray_address"):
        ray_ex(store, tmp_path, ray_adress="auto")
    with pytest.raises(ConfigError, match="nodes=2: a Ray run is one task"):
        ray_ex(store, tmp_path, nodes=2).submit(jobfns.add, 1)
    rec = store.load(next(store.run_ids()))
    assert rec.state == rr.RunState.FAILED and rec.failure.cause.value == "infrastructure"
    with pytest.raises(ConfigError, match="ray_scheduling_strategy='NEAREST'"):
        ray_ex(store, tmp_path, ray_scheduling_strategy="NEAREST").submit(jobfns.add, 1)
    with pytest.raises(ConfigError, match="ray_resources must map resource names to amounts"):
        ray_ex(store, tmp_path, ray_resources={"gpu": "one"}).submit(jobfns.add, 1)
    with pytest.raises(ConfigError, match="invalid Ray task options"):
        ray_ex(store, tmp_path, ray_resources={"CPU": 1}).submit(jobfns.add, 1)


def test_node_affinity_strategy(store, tmp_path, ray_cluster):
    h = ray_ex(
        store, tmp_path, ray_scheduling_strategy={"node_id": ray_cluster["gpu"], "soft": False}
    ).submit(jobfns.add, 1)
    assert h.result(timeout=60) == 11
    assert h.record().node.scheduler_node == ray_cluster["gpu"]
