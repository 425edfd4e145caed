"""runrec mlflow-sync against a real `mlflow server` (sqlite backend, local artifact root in tmp,
127.0.0.1), started once for the module and stopped in finally; runs made by the local backend.

Checked through MlflowClient with the values the test itself gave the runs (lr, the config file
it wrote, the metrics its job function logs, the artifact bytes it knows, `git rev-parse HEAD`,
the host name), never with runrec's output.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request

import blake3
import cloudpickle
import mlflow_jobs
import pytest
from helpers import git, run_cli, wait_for
from mlflow.entities import ViewType
from mlflow.tracking import MlflowClient

import runrec_cluster as rr

cloudpickle.register_pickle_by_value(mlflow_jobs)

LRS = (0.1, 0.2, 0.3)
FAILING_LR = 0.3
LONG_NOTE = "n" * 7000  # over MLflow's 6,000-character param limit
OPTIMIZER = {"name": "adam", "beta": 0.9}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """A real MLflow tracking server: sqlite backend, artifacts under tmp; stopped in finally."""
    d = tmp_path_factory.mktemp("mlflow-server")
    port = free_port()
    uri = f"http://127.0.0.1:{port}"
    log = open(d / "server.log", "wb")
    cmd = [
        sys.executable,
        "-m",
        "mlflow",
        "server",
        "--backend-store-uri",
        f"sqlite:///{d / 'mlflow.db'}",
        "--artifacts-destination",
        str(d / "artifacts"),
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--workers",
        "1",
    ]
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:

        def up() -> bool:
            assert proc.poll() is None, (d / "server.log").read_text()[-3000:]
            try:
                with urllib.request.urlopen(uri + "/health", timeout=2) as f:
                    return f.status == 200
            except OSError:
                return False

        wait_for("the mlflow server to answer", up, timeout=180, every=0.5)
        yield uri
    finally:
        try:
            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait(timeout=30)
        except (ProcessLookupError, subprocess.TimeoutExpired):
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=30)
        log.close()


@pytest.fixture(scope="module")
def sweep(tmp_path_factory):
    """A dirty git checkout; a 3-run sweep on the local backend (lr 0.3 fails after logging),
    config from arguments, a default, a JSON config file and a value generated in the job."""
    work = tmp_path_factory.mktemp("work")
    git(work, "init", "-q", "-b", "main")
    (work / "train.py").write_text("print('train')\n")
    git(work, "add", ".")
    git(work, "commit", "-qm", "first")
    (work / "train.py").write_text("print('train, changed')\n")  # dirty
    cfg = work / "cfg.json"
    cfg.write_text(json.dumps({"optimizer": OPTIMIZER}))
    store = rr.Store(work / "store")
    store.ensure_writable()
    old = os.getcwd()
    os.chdir(work)
    try:
        ex = rr.Executor(backend="local", store=store)
        params = [
            {
                "lr": lr,
                "out": str(work / "out" / f"model-{lr}.json"),
                **({"fail": True, "note": LONG_NOTE} if lr == FAILING_LR else {}),
            }
            for lr in LRS
        ]
        hs = ex.map_array(
            mlflow_jobs.train, params, name="train", config_from=[rr.ConfigFile(str(cfg))]
        )
        for h in hs:
            try:
                h.result(timeout=300)
            except rr.JobFailed:
                pass
    finally:
        os.chdir(old)
    commit = subprocess.run(
        ["git", "rev-parse", "HEAD"], cwd=work, capture_output=True, text=True, check=True
    ).stdout.strip()
    return {
        "work": work,
        "store": store,
        "ids": {lr: h.run_id for lr, h in zip(LRS, hs, strict=True)},
        "params": dict(zip(LRS, params, strict=True)),
        "commit": commit,
        "cfg": str(cfg),
    }


def sync(store, uri, *args, cwd=None):
    root = store.root if isinstance(store, rr.Store) else str(store)
    return run_cli("mlflow-sync", "--store", root, "--tracking-uri", uri, *args, cwd=cwd)


def one_run(client, exp_id, run_id):
    runs = client.search_runs([exp_id], f"tags.`runrec.run_id` = '{run_id}'", ViewType.ALL)
    assert len(runs) == 1, f"{len(runs)} MLflow runs for runrec run {run_id}"
    return runs[0]


def all_runs(client, exp_id):
    return client.search_runs([exp_id], "", ViewType.ALL, max_results=1000)


def test_sync_runs_params_metrics_status_parent(server, sweep):
    out = sync(sweep["store"], server, "--experiment", "first")
    assert out.returncode == 0, out.stderr
    assert "3 created" in out.stdout and "0 updated" in out.stdout
    assert "cut to 6000 of 7000" in out.stdout  # what was truncated is said
    client = MlflowClient(server)
    exp = client.get_experiment_by_name("first")
    assert exp is not None
    parents = set()
    for lr, run_id in sweep["ids"].items():
        r = one_run(client, exp.experiment_id, run_id)
        given = sweep["params"][lr]
        p = r.data.params
        # params: the config, flattened, as str(value), as mlflow.log_params would write it
        assert p["lr"] == str(lr)
        assert p["out"] == given["out"]
        assert p["width"] == "64"  # the function's default
        assert p["seed"] == "1234"  # generated in the job
        assert p["optimizer.name"] == OPTIMIZER["name"]
        assert p["optimizer.beta"] == str(OPTIMIZER["beta"])
        t = r.data.tags
        assert t["runrec.config_source.lr"] == "given"
        assert t["runrec.config_source.width"] == "default"
        assert t["runrec.config_source.seed"] == "generated"
        assert t["runrec.config_source.optimizer.name"].startswith("file:")
        assert t["runrec.config_source.optimizer.name"].endswith("cfg.json")
        # metrics: the latest value and the whole history the job logged
        assert r.data.metrics["loss"] == pytest.approx(0.5 - lr)
        assert r.data.metrics["acc"] == pytest.approx(0.9 + lr)
        hist = client.get_metric_history(r.info.run_id, "loss")
        assert [m.value for m in sorted(hist, key=lambda m: m.step)] == pytest.approx(
            [1.0 - lr, 0.5 - lr]
        )
        assert t["runrec.metric.phase"] == "done"  # not a number: a tag
        # facts
        assert t["runrec.run_id"] == run_id
        assert t["runrec.code_commit"] == sweep["commit"]
        assert t["mlflow.source.git.commit"] == sweep["commit"]
        assert t["runrec.code_dirty"] == "true"
        assert t["runrec.node"] == socket.gethostname()
        assert t["runrec.backend"] == "local"
        assert t["runrec.retired"] == "false"
        with open(given["out"], "rb") as f:
            digest = "blake3:" + blake3.blake3(f.read()).hexdigest()
        assert t["runrec.artifact.model.digest"] == digest
        assert t["runrec.artifact.model.path"] == given["out"]
        if lr == FAILING_LR:
            assert r.info.status == "FAILED"
            assert t["runrec.state"] == "failed"
            assert t["runrec.cause"] == "code_error"
            assert p["note"] == LONG_NOTE[:6000]
            assert "7000" in t["runrec.truncated.note"]
        else:
            assert r.info.status == "FINISHED"
            assert t["runrec.state"] == "succeeded"
            assert "runrec.cause" not in t
        assert r.info.end_time is not None and r.info.start_time <= r.info.end_time
        parents.add(t["mlflow.parentRunId"])
    assert len(parents) == 1  # one parent run for the sweep
    parent = client.get_run(parents.pop())
    assert parent.data.tags["runrec.kind"] == "sweep"
    assert parent.data.tags["runrec.runs"] == str(len(LRS))
    assert parent.info.status == "FAILED"  # one of its runs failed
    assert parent.data.params["optimizer.name"] == "adam"  # shared by all runs
    assert "lr" not in parent.data.params  # varies
    assert len(all_runs(client, exp.experiment_id)) == len(LRS) + 1


def test_second_sync_updates_without_duplicating(server, sweep):
    client = MlflowClient(server)
    first = sync(sweep["store"], server, "--experiment", "twice", "--json")
    assert first.returncode == 0, first.stderr
    exp = client.get_experiment_by_name("twice")
    ids_before = {r.info.run_id for r in all_runs(client, exp.experiment_id)}
    assert len(ids_before) == len(LRS) + 1
    second = sync(sweep["store"], server, "--experiment", "twice", "--json")
    assert second.returncode == 0, second.stderr
    doc = json.loads(second.stdout)
    assert sorted(doc["unchanged"]) == sorted(sweep["ids"].values())
    assert doc["created"] == [] and doc["updated"] == []
    assert {r.info.run_id for r in all_runs(client, exp.experiment_id)} == ids_before
    for run_id in sweep["ids"].values():  # history not doubled either
        r = one_run(client, exp.experiment_id, run_id)
        assert len(client.get_metric_history(r.info.run_id, "loss")) == 2


def test_retired_run_gets_its_tags_updated(server, sweep, tmp_path):
    store = tmp_path / "store"
    shutil.copytree(sweep["store"].root, store, symlinks=True)
    client = MlflowClient(server)
    assert sync(store, server, "--experiment", "retire").returncode == 0
    exp = client.get_experiment_by_name("retire")
    count = len(all_runs(client, exp.experiment_id))
    target = sweep["ids"][0.1]
    r = run_cli(
        "retire",
        target,
        "--store",
        str(store),
        "--state",
        "invalidated",
        "--reason",
        "label leak found",
    )
    assert r.returncode == 0, r.stderr
    out = sync(store, server, "--experiment", "retire", "--json")
    assert out.returncode == 0, out.stderr
    assert target in json.loads(out.stdout)["updated"]
    t = one_run(client, exp.experiment_id, target).data.tags
    assert t["runrec.retired"] == "true"
    assert "label leak found" in t["runrec.trust"]
    assert t["runrec.artifact.model.trust"] == "suspect"  # made by a retired run
    other = one_run(client, exp.experiment_id, sweep["ids"][0.2]).data.tags
    assert other["runrec.retired"] == "false"
    assert len(all_runs(client, exp.experiment_id)) == count


def test_running_run_synced_running_then_finished(server, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    store = rr.Store(tmp_path / "store")
    store.ensure_writable()
    gate = tmp_path / "gate"
    h = rr.Executor(backend="local", store=store).submit(mlflow_jobs.slow, str(gate), name="slow")
    try:
        wait_for(
            "the job to log its first metric",
            lambda: "progress" in store.load(h.run_id).metrics,
            timeout=180,
        )
        assert sync(store, server, "--experiment", "live").returncode == 0
        client = MlflowClient(server)
        exp = client.get_experiment_by_name("live")
        r = one_run(client, exp.experiment_id, h.run_id)
        assert r.info.status == "RUNNING"  # the gate does not exist yet: it is running
        assert r.info.end_time is None
    finally:
        gate.write_text("go")
    assert h.result(timeout=180) == "ok"
    assert sync(store, server, "--experiment", "live").returncode == 0
    r2 = one_run(client, exp.experiment_id, h.run_id)
    assert r2.info.run_id == r.info.run_id
    assert r2.info.status == "FINISHED" and r2.info.end_time is not None
    hist = client.get_metric_history(r2.info.run_id, "progress")
    assert [m.value for m in sorted(hist, key=lambda m: m.step)] == [0.5, 1.0]
    assert len(all_runs(client, exp.experiment_id)) == 1


def test_copy_artifacts(server, sweep, tmp_path):
    out = sync(sweep["store"], server, "--experiment", "copies", "--copy-artifacts")
    assert out.returncode == 0, out.stderr
    assert f"{len(LRS)} artifacts uploaded" in out.stdout
    client = MlflowClient(server)
    exp = client.get_experiment_by_name("copies")
    lr = 0.2
    r = one_run(client, exp.experiment_id, sweep["ids"][lr])
    name = os.path.basename(sweep["params"][lr]["out"])
    got = client.download_artifacts(r.info.run_id, f"model/{name}", str(tmp_path))
    with open(got) as f:
        assert json.load(f) == {"lr": lr, "width": 64}
    again = sync(sweep["store"], server, "--experiment", "copies", "--copy-artifacts")
    assert "0 artifacts uploaded" in again.stdout


def test_errors_name_the_server_and_what_to_do(server, sweep):
    port = free_port()  # nothing listens there
    t0 = time.monotonic()
    out = sync(sweep["store"], f"http://127.0.0.1:{port}")
    assert out.returncode == 1
    assert f"http://127.0.0.1:{port}" in out.stderr and "cannot reach" in out.stderr
    assert "Traceback" not in out.stderr
    assert time.monotonic() - t0 < 120  # not the client's minutes of retries
    bad = sync(sweep["store"], f"127.0.0.1:{port}")
    assert bad.returncode == 2 and "http://" in bad.stderr
    where = sync(sweep["store"], server, "--where", "lr > 0.1")
    assert where.returncode == 2 and "config.lr" in where.stderr
    client = MlflowClient(server)
    client.delete_experiment(client.create_experiment("gone"))
    gone = sync(sweep["store"], server, "--experiment", "gone")
    assert gone.returncode == 1
    assert "deleted" in gone.stderr and "restore" in gone.stderr.lower()
    assert "Traceback" not in gone.stderr


def test_where_selects_runs(server, sweep):
    out = sync(sweep["store"], server, "--experiment", "some", "--where", 'state == "failed"')
    assert out.returncode == 0, out.stderr
    client = MlflowClient(server)
    exp = client.get_experiment_by_name("some")
    kinds = sorted(r.data.tags["runrec.kind"] for r in all_runs(client, exp.experiment_id))
    assert kinds == ["run", "sweep"]
    one_run(client, exp.experiment_id, sweep["ids"][FAILING_LR])
