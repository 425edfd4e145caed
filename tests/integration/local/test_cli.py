"""The real `runrec` command in subprocesses: exit codes, messages, no tracebacks."""

import json
import os
import sys

import jobfns
import jsonschema
import pytest
from helpers import run_cli

import runrec_cluster as rr
from runrec_cluster.record import SCHEMA_VERSION
from runrec_cluster.store import codec, layout


@pytest.fixture
def filled(store, repo, monkeypatch):
    monkeypatch.chdir(repo)
    (repo / "train.py").write_text("dirty\n")
    ex = rr.Executor(backend="local", store=store, name="cli")
    hs = ex.map_array(jobfns.train, [{"lr": 0.1}, {"lr": 0.2}])
    bad = ex.submit(jobfns.fail, "nope")
    for h in [*hs, bad]:
        h.wait(timeout=60)
    return store, hs, bad


def test_ls_show_export_json(filled):
    store, hs, bad = filled
    out = run_cli("ls", "--store", store.root)
    assert out.returncode == 0, out.stderr
    assert "succeeded" in out.stdout and "failed (code_error)" in out.stdout and "acc" in out.stdout
    js = json.loads(run_cli("ls", "--store", store.root, "--json", "--state", "failed").stdout)
    assert [r["run_id"] for r in js] == [bad.run_id]
    sw = hs[0].record().sweep_id
    assert (
        len(json.loads(run_cli("ls", "--store", store.root, "--json", "--sweep", sw[:12]).stdout))
        == 2
    )
    show = run_cli("show", "--store", store.root, bad.run_id[:14])
    assert show.returncode == 0 and "ValueError" in show.stdout and "Traceback" in show.stdout
    exp = run_cli("export", hs[0].run_id, "--store", store.root, "--format", "json")
    doc = json.loads(exp.stdout)
    assert doc["record"]["run_id"] == hs[0].run_id
    assert doc["inlined"]["code.patch"].startswith("diff --git")
    assert "msgspec" in doc["inlined"]["launch_env.packages"]
    assert doc["inlined"]["result"] == {"lr": 0.1, "acc": 0.9}
    assert [h["event"] for h in doc["history"]][0] == "launch"


def test_schema_validates_an_exported_record(filled):
    store, hs, _ = filled
    schema = json.loads(run_cli("schema").stdout)
    doc = json.loads(run_cli("export", hs[0].run_id, "--store", store.root).stdout)
    jsonschema.validate(doc["record"], schema)


def test_errors_are_clear_and_exit_codes_right(filled, tmp_path):
    store, hs, _ = filled
    r = run_cli("show", "--store", store.root, "zzzzzzzzzz")
    assert r.returncode == 1 and "no run id starts with" in r.stderr and "Traceback" not in r.stderr
    r = run_cli("show", "--store", store.root, "../etc")
    assert r.returncode == 1 and "not a run id" in r.stderr
    r = run_cli("ls", "--store", str(tmp_path / "nowhere"))
    assert r.returncode == 1 and "no store at" in r.stderr
    r = run_cli("ls", "--bogus-flag")
    assert r.returncode == 2
    r = run_cli("frobnicate")
    assert r.returncode == 2


def test_corrupt_and_truncated_files(filled):
    store, hs, bad = filled
    victim = store.version_files(hs[0].run_id)[0]
    os.chmod(victim, 0o644)
    with open(victim, "r+b") as f:
        f.truncate(10)
    garbage = store.version_files(hs[1].run_id)[-1]
    os.chmod(garbage, 0o644)
    with open(garbage, "wb") as f:
        f.write(os.urandom(300))
    r = run_cli("ls", "--store", store.root)
    assert r.returncode == 0
    assert victim in r.stderr and garbage in r.stderr and "warning" in r.stderr
    assert bad.run_id[:10] in r.stdout  # the rest is listed
    r = run_cli("show", "--store", store.root, hs[0].run_id)
    assert r.returncode == 1 and victim in r.stderr and "Traceback" not in r.stderr


def test_record_from_a_newer_schema_is_shown_with_a_warning(store):
    rid = layout.new_id()
    path = os.path.join(layout.run_dir(store.root, rid), layout.version_name(1, "abc"))
    os.makedirs(os.path.dirname(path))
    from datetime import UTC, datetime

    with open(path, "wb") as f:
        f.write(
            codec.encode(
                {
                    "schema_version": SCHEMA_VERSION + 1,
                    "run_id": rid,
                    "seq": 1,
                    "written_at": datetime.now(UTC),
                    "writer": {"host": "h", "pid": 1, "role": "future"},
                    "event": "launch",
                    "patch": {"run_id": rid, "name": "from-the-future", "quantum_field": [1, 2]},
                }
            )
        )
    r = run_cli("show", "--store", store.root, rid)
    assert r.returncode == 0 and "from-the-future" in r.stdout and "newer record schema" in r.stderr


def test_submit_command_from_the_cli(store, tmp_path):
    data = tmp_path / "d.txt"
    data.write_text("x")
    r = run_cli(
        "submit",
        "--store",
        store.root,
        "--input",
        str(data),
        "--tag",
        "a=b",
        "--wait",
        "--",
        sys.executable,
        "-c",
        "print(42)",
    )
    assert r.returncode == 0, r.stderr
    assert "submitted run" in r.stdout and "runrec show" in r.stdout
    rec = store.load(next(store.run_ids()))
    assert rec.exit_code == 0 and rec.inputs[0].path == str(data) and rec.tags == {"a": "b"}
    r = run_cli("logs", "--store", store.root, rec.run_id)
    assert "42" in r.stdout
    r = run_cli(
        "submit", "--store", store.root, "--wait", "--", sys.executable, "-c", "raise SystemExit(4)"
    )
    assert r.returncode == 1 and "exit_code" in r.stdout
    r = run_cli("submit", "--store", store.root, "--input", str(tmp_path / "missing"), "--", "true")
    assert r.returncode == 1 and "does not exist" in r.stderr


def test_demo_is_the_main_job(tmp_path):
    r = run_cli("demo", cwd=tmp_path, env={"RUNREC_STORE": ""})
    assert r.returncode == 0, r.stderr
    assert os.path.isdir(tmp_path / "runrec-store" / "runs")
    assert r.stdout.count("succeeded") == 4 and "val_acc" in r.stdout
    store = rr.Store(tmp_path / "runrec-store")
    recs = [store.load(i) for i in store.run_ids()]
    assert all(r.artifacts and r.inputs and r.metrics for r in recs)
    assert len({r.inputs[0].digest for r in recs}) == 1


def test_python_dash_m_and_version():
    r = run_cli("--version")
    assert r.returncode == 0 and rr.__version__ in r.stdout


def test_public_api_is_curated():
    assert sorted(rr.__all__) == sorted(
        [
            "SCHEMA_VERSION",
            "AmbiguousRunId",
            "Artifact",
            "BackendError",
            "ConfigEnv",
            "ConfigError",
            "ConfigFile",
            "CorruptRecord",
            "Dataset",
            "DatasetError",
            "Executor",
            "FailureCause",
            "JobFailed",
            "JobTimeout",
            "LineageError",
            "PromotionError",
            "RecordNotFound",
            "RerunError",
            "Run",
            "RunHandle",
            "RunRecord",
            "RunState",
            "RunrecError",
            "Store",
            "StoreError",
            "__version__",
            "current_run",
            "load",
            "query",
            "rerun",
            "rerun_sweep",
            "ExpressionError",
            "CriteriaSyntaxError",
            "Lineage",
            "annotate",
            "lineage",
            "promote",
            "retire",
            "verify",
        ]
    )
