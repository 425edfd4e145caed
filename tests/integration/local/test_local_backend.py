"""The local backend with real job processes (a fresh interpreter per job)."""

import os
import signal
import time

import jobfns
import pytest

import runrec_cluster as rr
from runrec_cluster.capture import proc


@pytest.fixture
def ex(store, repo, monkeypatch):
    monkeypatch.chdir(repo)
    return rr.Executor(backend="local", store=store, name="t")


def test_function_run_records_launch_and_node(ex, store, repo, tmp_path):
    data = tmp_path / "train.csv"
    data.write_text("a,b\n1,2\n")
    (repo / "train.py").write_text("print('dirty')\n")
    h = ex.submit(jobfns.add, 5, inputs=[rr.Dataset(data)], tags={"team": "x"})
    assert h.result(timeout=60) == 15
    rec = rr.load(store, h.run_id[:14])
    assert rec.state == rr.RunState.SUCCEEDED and rec.state_source == "job"
    assert rec.code.dirty and rec.code.patch_blob and rec.code.branch == "main"
    assert {k: (e.value, e.source) for k, e in rec.config.items()} == {
        "a": (5, "given"),
        "b": (10, "default"),
    }
    assert rec.inputs[0].path == str(data) and rec.inputs[0].digest.startswith("blake3:")
    assert rec.tags == {"team": "x"} and rec.entrypoint.function.endswith(":add")
    assert rec.launch_env.package_count > 10
    node = rec.node
    assert node.hostname and node.gpu_status and node.package_drift == {}
    assert rec.process.pid != os.getpid()  # ran in another process
    assert rec.submitted_at <= rec.started_at <= rec.ended_at


def test_generated_config_metrics_and_artifacts(ex, store, tmp_path):
    h = ex.submit(jobfns.train, 0.25)
    assert h.result(timeout=60) == {"lr": 0.25, "acc": 0.75}
    rec = h.record()
    assert rec.config["seed"].value == 1234 and rec.config["seed"].source == "generated"
    assert rec.metrics == {"acc": 0.75, "epochs_done": 3}
    h2 = ex.submit(jobfns.with_artifact, str(tmp_path / "m.bin"))
    h2.result(timeout=60)
    art = h2.record().artifacts[0]
    assert art.name == "model" and art.size == 1100 and art.digest.startswith("blake3:")


def test_failure_is_recorded_with_its_traceback(ex):
    h = ex.submit(jobfns.fail, "boom 42")
    with pytest.raises(rr.JobFailed) as e:
        h.result(timeout=60)
    assert "boom 42" in str(e.value)
    rec = h.record()
    assert rec.state == rr.RunState.FAILED and rec.failure.cause.value == "code_error"
    assert rec.failure.type == "ValueError" and "in inner" in rec.failure.traceback


def test_sweep_of_8(ex, store):
    hs = ex.map_array(jobfns.train, [{"lr": i / 10} for i in range(8)])
    assert [h.result(timeout=120)["acc"] for h in hs] == [round(1 - i / 10, 6) for i in range(8)]
    recs = [h.record() for h in hs]
    assert len({r.sweep_id for r in recs}) == 1 and recs[0].sweep_id
    assert sorted(r.sweep_index for r in recs) == list(range(8))
    assert len({r.run_id for r in recs}) == 8
    # shared parts are stored once: one call blob per run, one package list, one patch
    assert len({r.launch_env.packages_blob for r in recs}) == 1
    # ... and the sweep's shared launch context (code, environment, inputs) is one blob that
    # every launch version names; a reader sees whole records
    from runrec_cluster.record import CONTEXT_KEY
    from runrec_cluster.store import codec

    launches = [codec.decode(open(store.version_files(r.run_id)[0], "rb").read()) for r in recs]
    assert len({v["patch"][CONTEXT_KEY] for v in launches}) == 1
    assert all("code" not in v["patch"] and "config" in v["patch"] for v in launches)
    assert {r.code.commit for r in recs} == {recs[0].code.commit} and recs[0].code.commit
    assert {r.execution.log_dir for r in recs} == {store.log_dir(r.run_id) for r in recs}
    assert {r.entrypoint.call_blob for r in recs} != {None} and len(
        {r.entrypoint.call_blob for r in recs}
    ) == 8
    assert all(r.name == "t" and r.user and r.launch_env.python_version for r in recs)
    # a missing context blob is a named problem, never a crash
    from runrec_cluster.store import layout

    os.unlink(layout.blob_path(store.root, launches[0]["patch"][CONTEXT_KEY]))
    fresh = rr.Store(store.root)
    probs = []
    vs = fresh.versions(recs[0].run_id, probs)
    assert vs and probs and "shared launch context" in probs[0].message
    with pytest.raises(rr.errors.CorruptRecord, match="runrec fsck"):
        fresh.load(recs[0].run_id)


def test_job_versions_name_one_node_context_and_keep_only_their_own_facts(ex, store, tmp_path):
    """The job side of a sweep stores the node's facts shared by its runs (hardware, how the
    libraries were sampled, the determinism variables and notes) once per node, as context
    blobs its versions name; inline stay only each run's own (sampling times and pids, capture
    times, variables). A reader sees the whole facts: the pids are the jobs' own (each job
    writes its pid to a file: the ground truth)."""
    from runrec_cluster.record import CONTEXT_KEY
    from runrec_cluster.store import codec

    paths = [str(tmp_path / f"pid{i}") for i in range(4)]
    hs = ex.map_array(jobfns.write_pid_and_sleep, [{"path": p, "seconds": 0} for p in paths])
    for h in hs:
        h.wait(timeout=120)
    job = [
        codec.decode(open(f, "rb").read())
        for h in hs
        for f in store.version_files(h.run_id)
        if codec.decode(open(f, "rb").read())["writer"]["role"] == "job"
    ]
    assert {v["event"] for v in job} >= {"start", "end"}
    contexts = {v["patch"][CONTEXT_KEY] for v in job if "nodes" in v["patch"]}
    assert 1 <= len(contexts) <= 2, contexts  # the start's and the end's share, for 4 runs
    for v in job:
        for own in v["patch"].get("nodes", []):
            assert set(own) <= {"captured_at", "env_vars", "runtime", "determinism"}, own
            assert set(own.get("runtime", {}).get("sampling", {})) <= {"times", "pids", "gap"}
            assert set(own.get("determinism", {})) <= {"captured_at"}
    for h, p in zip(hs, paths, strict=True):
        node = h.record().nodes[0]
        with open(p) as f:
            pid = int(f.read())
        assert pid in node.runtime.sampling.pids and node.runtime.sampling.method
        assert node.runtime.sampling.times and node.determinism.env_source
        assert "PYTHONHASHSEED" in node.determinism.env and node.cpu_count == os.cpu_count()


def test_command_job_records_exit_code(ex, store, tmp_path):
    script = tmp_path / "t.py"
    script.write_text(
        "import runrec_cluster as rr, sys\nrr.current_run().log_metrics({'loss': 0.5})\nsys.exit(3)\n"
    )
    import sys

    h = ex.submit_command([sys.executable, str(script), "--lr", "0.1", "--token", "abc"])
    rec = h.wait(timeout=60)
    assert (
        rec.state == rr.RunState.FAILED
        and rec.exit_code == 3
        and rec.failure.cause.value == "exit_code"
    )
    assert rec.metrics == {"loss": 0.5} and rec.config["lr"].value == 0.1
    assert "abc" not in rec.entrypoint.argv and rec.config["token"].value == "[redacted]"
    ok = ex.submit_command([sys.executable, "-c", "print('hi')"])
    assert ok.result(timeout=60) == 0


def test_current_run_is_none_outside_a_job():
    assert rr.current_run() is None


def test_kill_9_of_the_job_is_recorded_by_the_supervisor(ex, tmp_path):
    pidfile = tmp_path / "pid"
    h = ex.submit(jobfns.write_pid_and_sleep, str(pidfile), 60)
    _wait_for(lambda: pidfile.exists() and pidfile.read_text())
    os.kill(int(pidfile.read_text()), signal.SIGKILL)
    rec = h.wait(timeout=30)
    assert (
        rec.state == rr.RunState.FAILED
        and rec.failure.cause.value == "killed"
        and rec.failure.signal == 9
    )
    assert rec.failure.source == "backend"


def test_kill_9_of_job_and_supervisor_is_inferred_by_the_next_reader(ex, store, tmp_path):
    pidfile = tmp_path / "pid"
    h = ex.submit(jobfns.write_pid_and_sleep, str(pidfile), 60)
    _wait_for(lambda: pidfile.exists() and pidfile.read_text())
    sup = store.load(h.run_id).execution.scheduler["supervisor"]["pid"]
    os.kill(sup, signal.SIGKILL)
    os.kill(int(pidfile.read_text()), signal.SIGKILL)
    time.sleep(0.3)
    from helpers import run_cli

    out = run_cli("ls", "--store", store.root)
    assert out.returncode == 0 and "killed" in out.stdout
    rec = store.load(h.run_id)
    assert (
        rec.state == rr.RunState.FAILED
        and rec.failure.cause.value == "killed"
        and rec.failure.source == "inferred"
    )


def test_pid_reuse_is_not_mistaken_for_the_job():
    me = proc.identity()
    assert proc.is_alive(me)
    fake = rr.record.Process(
        host=me.host, pid=me.pid, start_ticks=me.start_ticks + 1, boot_id=me.boot_id
    )
    assert proc.is_alive(fake) is False
    other_host = rr.record.Process(host="elsewhere", pid=1, start_ticks=1, boot_id="x")
    assert proc.is_alive(other_host) is None


def test_timeout_is_enforced_and_recorded(store, repo, monkeypatch):
    monkeypatch.chdir(repo)
    ex = rr.Executor(backend="local", store=store, timeout_min=0.02)  # 1.2 s
    h = ex.submit(jobfns.sleep_then, 30)
    rec = h.wait(timeout=30)
    assert rec.state == rr.RunState.FAILED and rec.failure.cause.value == "timeout"


def test_cancel(ex, tmp_path):
    pidfile = tmp_path / "pid"
    h = ex.submit(jobfns.write_pid_and_sleep, str(pidfile), 60)
    _wait_for(lambda: pidfile.exists() and pidfile.read_text() and h.record().process)
    h.cancel()
    rec = h.wait(timeout=30)
    assert rec.state == rr.RunState.CANCELLED
    _wait_for(lambda: not proc.is_alive(rec.process))


def test_missing_dataset_is_refused_before_anything_is_written(ex, store, tmp_path):
    before = list(store.run_ids())
    with pytest.raises(rr.DatasetError, match="does not exist"):
        ex.submit(jobfns.add, 1, inputs=[rr.Dataset(tmp_path / "missing.csv")])
    assert list(store.run_ids()) == before


def test_unserializable_config_is_refused_naming_the_key(ex, store):
    with pytest.raises(rr.ConfigError, match="'b'"):
        ex.submit(jobfns.add, 1, b=object())
    assert list(store.run_ids()) == []


def test_bad_options_and_resources(store):
    with pytest.raises(rr.ConfigError, match="slurm_partition"):
        rr.Executor(backend="local", store=store, slurm_partition="x")
    with pytest.raises(rr.ConfigError, match="unknown backend"):
        rr.Executor(backend="kubernetes", store=store)
    with pytest.raises(rr.ConfigError, match="cpus"):
        rr.Executor(backend="local", store=store, cpus=-1)


def test_unwritable_store_fails_when_the_executor_is_made(tmp_path):
    f = tmp_path / "file"
    f.write_text("")
    with pytest.raises(rr.StoreError):
        rr.Executor(backend="local", store=f / "store")
    if os.geteuid() != 0:
        ro = tmp_path / "ro"
        ro.mkdir()
        os.chmod(ro, 0o555)
        with pytest.raises(rr.StoreError, match="not writable|cannot create"):
            rr.Executor(backend="local", store=ro / "store")


def test_pickled_result_round_trips(ex):
    assert ex.submit(jobfns.returns_object).result(timeout=60).x == 5


def _wait_for(cond, timeout=30):
    t = time.monotonic() + timeout
    while time.monotonic() < t:
        if cond():
            return
        time.sleep(0.05)
    raise AssertionError("condition not met in time")


def test_hardware_class_expectation_is_checked_locally(store, tmp_path, monkeypatch):
    proj = tmp_path / "proj"
    proj.mkdir()
    (proj / "pyproject.toml").write_text(
        '[tool.runrec.hardware.here]\nexpect = { cpu_model = "" }\n'
        '[tool.runrec.hardware.bigiron]\nexpect = { gpu_name = "H100" }\n'
    )
    monkeypatch.chdir(proj)
    ok = rr.Executor(backend="local", store=store, hardware="here").submit(jobfns.add, 1)
    ok.result(timeout=60)
    assert ok.record().execution.hardware_match is True
    bad = rr.Executor(backend="local", store=store, hardware="bigiron").submit(jobfns.add, 1)
    bad.result(timeout=60)
    rec = bad.record()
    assert rec.execution.hardware == "bigiron" and rec.execution.hardware_match is False
    assert "gpu_name" in rec.execution.hardware_mismatches[0]
