"""The Slurm backend against the real local cluster: jobs, arrays, hardware classes, and the
scheduler's verdict for jobs killed from outside. Slow fault jobs start together up front."""

import os
import subprocess
import sys
import time

import jobfns
import pytest
from helpers import run_cli
from slurm_target import API, NODE_X, NODE_Y

import runrec_cluster as rr
from runrec_cluster.errors import BackendError

pytestmark = pytest.mark.usefixtures("slurm")
# what the scheduler's verdicts were read through: the way the session asks Slurm (slurm_target)
VIA = {"cli": "sacct", "pyslurm": "pyslurm"}[API]


def slurm_ex(store, **kw):
    kw.setdefault("timeout_min", 5)
    kw.setdefault("cpus", 1)
    kw.setdefault("mem_gb", 0.5)
    return rr.Executor(backend="slurm", store=store, **kw)


def wait_state(h, pred, timeout=60):
    t = time.monotonic() + timeout
    while time.monotonic() < t:
        rec = h.record()
        if pred(rec):
            return rec
        time.sleep(0.3)
    raise AssertionError(f"{h.run_id}: condition not met; last state {h.record().state}")


@pytest.fixture(scope="module")
def timeout_run(tmp_path_factory):
    """Started first: Slurm's minimum limit is 1 minute and it checks every ~30 s."""
    store = rr.Store(tmp_path_factory.mktemp("timeout") / "store")
    h = slurm_ex(store, timeout_min=1, slurm_constraint="hwclass-x").submit(jobfns.sleep_then, 300)
    return h


def test_function_job(store, project, timeout_run):
    h = slurm_ex(store).submit(jobfns.add, 2, b=3)
    assert h.result(timeout=120) == 5
    rec = h.record()
    sch = rec.execution.scheduler
    assert rec.execution.backend == "slurm" and sch["job_id"] and sch["partition"] == "debug"
    assert sch["batch_script"].startswith("sha256:") and b"#SBATCH" in store.get_blob(
        sch["batch_script"]
    )
    assert rec.node.scheduler_node in (NODE_X, NODE_Y) and rec.node.features
    assert rec.execution.resources.mem_gb == 0.5 and rec.state_source == "job"


def test_command_job(store, project):
    h = slurm_ex(store).submit_command(
        [sys.executable, "-c", "import sys; print('hi'); sys.exit(2)"]
    )
    rec = h.wait(timeout=120)
    assert (
        rec.state == rr.RunState.FAILED
        and rec.exit_code == 2
        and rec.failure.cause.value == "exit_code"
    )
    ok = slurm_ex(store).submit_command(["true"])
    assert ok.result(timeout=120) == 0


def test_array_sweep_of_8(store, project):
    hs = slurm_ex(store).map_array(jobfns.train, [{"lr": i / 10} for i in range(8)])
    assert [h.result(timeout=180)["lr"] for h in hs] == [i / 10 for i in range(8)]
    recs = [h.record() for h in hs]
    assert len({r.sweep_id for r in recs}) == 1 and sorted(r.sweep_index for r in recs) == list(
        range(8)
    )
    arrays = {r.execution.scheduler["array_job_id"] for r in recs}
    assert len(arrays) == 1, "one real Slurm array job"
    (array_id,) = arrays
    assert sorted(r.execution.scheduler["array_task_id"] for r in recs) == list(range(8))
    assert sorted(r.execution.scheduler["job_id"] for r in recs) == sorted(
        f"{array_id}_{i}" for i in range(8)
    )


def test_out_of_memory_is_the_schedulers_verdict(store, project):
    h = slurm_ex(store, mem_gb=0.1).submit(jobfns.allocate_mb, 600)
    rec = h.wait(timeout=120)
    assert rec.state == rr.RunState.FAILED and rec.failure.cause.value == "out_of_memory", (
        rec.failure
    )
    assert rec.failure.source == "scheduler" and rec.failure.via == VIA


def test_scancel_is_recorded_as_cancelled_by_whom(store, project):
    h = slurm_ex(store).submit(jobfns.sleep_then, 300)
    rec = wait_state(h, lambda r: r.state == rr.RunState.RUNNING)
    subprocess.run(["scancel", rec.execution.scheduler["job_id"]], check=True)
    rec = h.wait(timeout=60)
    assert rec.state == rr.RunState.CANCELLED and rec.failure.cause.value == "cancelled"
    import pwd

    assert rec.failure.by == pwd.getpwuid(os.getuid()).pw_name
    assert rec.failure.via == VIA


def test_node_failure(store, project):
    h = slurm_ex(store, slurm_constraint="hwclass-y", slurm_requeue=False).submit(
        jobfns.sleep_then, 300
    )
    rec = wait_state(h, lambda r: r.state == rr.RunState.RUNNING)
    assert rec.node.scheduler_node == NODE_Y
    try:
        subprocess.run(
            ["scontrol", "update", f"nodename={NODE_Y}", "state=down", "reason=runrec-test"],
            check=True,
        )
        rec = h.wait(timeout=60)
    finally:
        subprocess.run(
            ["scontrol", "update", f"nodename={NODE_Y}", "state=resume"], capture_output=True
        )
    assert rec.state == rr.RunState.FAILED and rec.failure.cause.value == "node_failure"


def test_requeue_keeps_the_run_id_and_counts_attempts(store, project):
    h = slurm_ex(store, slurm_requeue=True).submit(jobfns.sleep_unless_restarted, 300)
    rec = wait_state(h, lambda r: r.state == rr.RunState.RUNNING)
    assert rec.attempt == 1
    subprocess.run(["scontrol", "requeue", rec.execution.scheduler["job_id"]], check=True)
    rec = h.wait(timeout=180)
    assert rec.state == rr.RunState.SUCCEEDED and rec.attempt == 2
    assert h.result() == "restarted 1"
    assert len(list(store.run_ids())) == 1


def test_hardware_class_steers_and_is_checked(store, project):
    h = slurm_ex(store, hardware="cpu-y").submit(jobfns.add, 1)
    h.result(timeout=120)
    rec = h.record()
    assert rec.node.scheduler_node == NODE_Y and rec.execution.hardware == "cpu-y"
    assert rec.execution.hardware_match is True and rec.execution.hardware_mismatches == []
    g = slurm_ex(store, hardware="fakegpu").submit(jobfns.env_var, "CUDA_VISIBLE_DEVICES")
    assert g.result(timeout=120) == "0"
    assert g.record().node.scheduler_node == NODE_X and g.record().execution.hardware_match is True
    w = slurm_ex(store, hardware="wrong").submit(jobfns.add, 1)
    w.result(timeout=120)
    rec = w.record()
    assert (
        rec.execution.hardware_match is False
        and "node_features" in rec.execution.hardware_mismatches[0]
    )


def test_unknown_hardware_class_is_a_clear_error(store, project):
    with pytest.raises(
        rr.ConfigError, match="unknown hardware class 'h100'.*known: cpu-y, fakegpu, wrong"
    ):
        slurm_ex(store, hardware="h100")


def test_two_node_job_records_both_nodes(store, project):
    h = slurm_ex(store, nodes=2).submit(jobfns.rank_info)
    res = h.result(timeout=120)
    rec = h.record()
    assert res["rank"] == 0, "the result comes from rank 0"
    assert sorted(n.scheduler_node for n in rec.nodes) == [NODE_X, NODE_Y]
    assert sorted(n.rank for n in rec.nodes) == [0, 1]
    assert rec.metrics == {"rank0_only": 1.0}


def test_sbatch_refusal_is_recorded_and_clear(store, project):
    with pytest.raises(BackendError, match="sbatch refused"):
        slurm_ex(store, slurm_partition="no-such-partition").submit(jobfns.add, 1)
    rec = store.load(next(store.run_ids()))
    assert rec.state == rr.RunState.FAILED and rec.failure.cause.value == "infrastructure"


def test_cli_submit_ls_and_reconcile(store, project):
    r = run_cli(
        "submit",
        "--store",
        store.root,
        "--backend",
        "slurm",
        "--slurm-constraint",
        "hwclass-x",
        "--mem-gb",
        "0.1",
        "--",
        sys.executable,
        "-c",
        "b = bytearray(600 * 2**20); import time; time.sleep(5)",
    )
    assert r.returncode == 0, r.stderr
    run_id = r.stdout.split("submitted run ")[1].split()[0]
    h = rr.RunHandle(store, run_id)
    t = time.monotonic() + 120
    while time.monotonic() < t:
        out = run_cli("reconcile", "--store", store.root)
        assert out.returncode == 0, out.stderr
        if "out_of_memory" in out.stdout:
            break
        done = store.load(run_id)  # the job (its end trap) may have recorded it first
        if done.failure is not None and done.failure.cause.value == "out_of_memory":
            break
        time.sleep(2)
    rec = store.load(run_id)
    assert rec.state == rr.RunState.FAILED and rec.failure.cause.value == "out_of_memory"
    ls = run_cli("ls", "--store", store.root)
    assert rec.execution.scheduler["job_id"] in ls.stdout and "out_of_memory" in ls.stdout
    assert h.done()


def test_as_a_non_root_user(tmp_path_factory, project):
    if os.geteuid() != 0:
        pytest.skip("needs root to switch to runrec-user")
    import pwd

    try:
        pwd.getpwnam("runrec-user")
    except KeyError:
        pytest.fail("slurm/up should have created runrec-user")
    d = tmp_path_factory.mktemp("shared")
    os.chmod(d, 0o1777)
    for parent in (os.path.dirname(d), os.path.dirname(os.path.dirname(d))):
        # add read and search for others; never take bits away (a one-level --basetemp makes
        # the grandparent /tmp itself, whose 1777 MariaDB and every other user need)
        os.chmod(parent, os.stat(parent).st_mode & 0o7777 | 0o755)
    store = os.path.join(d, "store")
    code = (
        "import runrec_cluster as rr, getpass\n"
        f"ex = rr.Executor(backend='slurm', store={store!r}, timeout_min=5, mem_gb=0.5, cwd='/tmp')\n"
        "h = ex.submit_command(['id', '-un'])\n"
        "print(h.run_id, h.result(timeout=120), getpass.getuser())\n"
    )
    r = subprocess.run(
        ["su", "runrec-user", "-s", "/bin/sh", "-c", f'cd /tmp && {sys.executable} -c "$0"', code],
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert r.returncode == 0, r.stderr
    run_id, rc, user = r.stdout.split()
    rec = rr.Store(store).load(run_id)
    assert rec.user == "runrec-user" and rec.state == rr.RunState.SUCCEEDED and rc == "0"


def test_timeout_is_the_schedulers_verdict(timeout_run):
    rec = timeout_run.wait(timeout=240)
    assert rec.state == rr.RunState.FAILED and rec.failure.cause.value == "timeout", rec.failure
    assert rec.failure.source == "scheduler"
