"""Issue 13, repro 10: config provenance beyond given/default/generated. Config files (hashed as
inputs, their keys marked file:<path>), declared environment variables (env:<NAME>) and a
Python command's parsed argparse options (argv / default), recorded without changes to the
script. Real files, real processes, the real `runrec` CLI; ground truth is what the test wrote
itself (the files, the environment), what the function received, and what each script's own
argparse parse gave (the script dumps ``vars(args)``)."""

from __future__ import annotations

import json
import sys
import tomllib
from pathlib import Path

import blake3
import pytest
from helpers import run_cli

import runrec_cluster as rr

# dest -> the key runrec records it under (the option's long name without dashes)
KEYS = {"lr": "lr", "epochs": "epochs", "batch_size": "batch-size", "config": "config"}
TRAIN = """
import argparse, json, sys, time, tomllib
p = argparse.ArgumentParser()
p.add_argument("--config", default=None)
p.add_argument("--lr", type=float, default=0.01)
p.add_argument("--epochs", type=int, default=10)
p.add_argument("--batch-size", type=int, default=32)
p.add_argument("--sleep", type=float, default=0.0)
known, _ = p.parse_known_args()
if known.config:  # the script takes its defaults from the config file
    with open(known.config, "rb") as f:
        p.set_defaults(**{k: v for k, v in tomllib.load(f).items() if not isinstance(v, dict)})
args = p.parse_args()
with open("truth.json", "w") as f:
    json.dump(vars(args), f)
time.sleep(args.sleep)
"""
CONFIG = 'epochs = 3\nname = "resnet"\n\n[data]\npath = "train.csv"\nshuffle = true\n'


def _digest(path) -> str:
    with open(path, "rb") as f:
        return "blake3:" + blake3.blake3(f.read()).hexdigest()


def _submit(store, cwd, *args, env=None):
    r = run_cli(
        "submit", "--store", store.root, "--backend", "local", "--wait", *args, cwd=cwd, env=env
    )
    runs = sorted(store.run_ids())
    return r, store.load(runs[-1])


def _config(rec):
    return {k: (e.value, e.source) for k, e in rec.config.items()}


def test_function_run_with_files_env_and_given(store, repo, monkeypatch):
    base = repo / "base.yaml"
    base.write_text("lr: 0.1\nepochs: 3\nmodel:\n  depth: 4\nnote: from-base\n")
    over = repo / "override.toml"
    over.write_text("epochs = 5\n\n[model]\nwidth = 8\n")
    monkeypatch.setenv("RR_TEST_LR", "0.25")

    def train(lr=0.01, epochs=1, batch=32, model=None, seed=0):
        return {"lr": lr, "epochs": epochs, "batch": batch, "model": model, "seed": seed}

    ex = rr.Executor(backend="local", store=store, cwd=repo)
    h = ex.submit(
        train,
        config_from=[
            rr.ConfigFile(base),
            rr.ConfigFile(over),
            rr.ConfigEnv("RR_TEST_LR", key="lr", type=float),
        ],
        batch=64,
    )
    got = h.result(timeout=180)
    # what the function received: default < files (later wins) < env < given
    assert got == {
        "lr": 0.25,
        "epochs": 5,
        "batch": 64,
        "model": {"depth": 4, "width": 8},
        "seed": 0,
    }
    rec = store.load(h.run_id)
    fb, fo = f"file:{base}", f"file:{over}"
    assert _config(rec) == {
        "lr": (0.25, "env:RR_TEST_LR"),
        "epochs": (5, fo),
        "model.depth": (4, fb),
        "model.width": (8, fo),
        "note": ("from-base", fb),
        "batch": (64, "given"),
        "seed": (0, "default"),
    }
    inputs = {i.path: i for i in rec.inputs}
    for f in (base, over):
        assert inputs[str(f)].digest == _digest(f) and inputs[str(f)].role == "config"
    show = run_cli("show", "--store", store.root, h.run_id)
    assert "lr = 0.25  (env:RR_TEST_LR)" in show.stdout
    assert f"model.depth = 4  ({fb})" in show.stdout


def test_command_run_records_argparse_options_with_provenance(store, repo):
    (repo / "train.py").write_text(TRAIN)
    cfg = repo / "f.toml"
    cfg.write_text(CONFIG)
    r, rec = _submit(
        store, repo, "--config", "f.toml", "--", sys.executable, "train.py", "--lr", "0.1"
    )
    assert r.returncode == 0, (r.stdout, r.stderr)
    truth = json.loads((repo / "truth.json").read_text())
    src = f"file:{cfg}"
    conf = _config(rec)
    # the script did not read the file (no --config): its own defaults are what it used
    assert truth["epochs"] == 10
    for dest, key in KEYS.items():
        source = "argv" if dest == "lr" else "default"
        assert conf[key] == (truth[dest], source), key
    assert conf["sleep"] == (0.0, "default")
    # the file's other keys, as the test wrote them
    parsed = tomllib.loads(CONFIG)
    assert conf["name"] == (parsed["name"], src)
    assert conf["data.path"] == (parsed["data"]["path"], src)
    assert conf["data.shuffle"] == (True, src)
    (ref,) = rec.inputs
    assert ref.path == str(cfg) and ref.digest == _digest(cfg) and ref.role == "config"
    show = run_cli("show", "--store", store.root, rec.run_id)
    assert "lr = 0.1  (argv)" in show.stdout and "batch-size = 32  (default)" in show.stdout
    assert f"data.path = 'train.csv'  ({src})" in show.stdout
    df = rr.query(store, columns=["run_id", "config.lr", "config.epochs"])
    assert df["config.lr"].tolist() == [0.1] and df["config.epochs"].tolist() == [10]


def test_a_default_taken_from_the_config_file_keeps_its_provenance(store, repo):
    (repo / "train.py").write_text(TRAIN)
    cfg = repo / "f.toml"
    cfg.write_text(CONFIG)
    r, rec = _submit(
        store,
        repo,
        "--config",
        "f.toml",
        "--",
        sys.executable,
        "train.py",
        "--config",
        "f.toml",
        "--batch-size",
        "16",
    )
    assert r.returncode == 0, (r.stdout, r.stderr)
    truth = json.loads((repo / "truth.json").read_text())
    conf = _config(rec)
    assert truth["epochs"] == 3  # the script's default came from the file
    assert conf["epochs"] == (3, f"file:{cfg}")
    assert conf["batch-size"] == (truth["batch_size"], "argv") == (16, "argv")
    assert conf["config"] == ("f.toml", "argv")
    assert conf["lr"] == (truth["lr"], "default")


@pytest.mark.parametrize("how", ["option", "env"])
def test_capture_off_records_no_argv_entries(store, repo, how):
    (repo / "train.py").write_text(TRAIN)
    args = ["--no-capture-args"] if how == "option" else []
    env = {"RUNREC_CAPTURE_ARGPARSE": "0"} if how == "env" else None
    r, rec = _submit(store, repo, *args, "--", sys.executable, "train.py", "--lr", "0.1", env=env)
    assert r.returncode == 0, (r.stdout, r.stderr)
    assert (repo / "truth.json").exists()  # the script ran and parsed
    assert rec.entrypoint.capture_args is False
    assert _config(rec) == {"lr": (0.1, "given")}  # only what the command line says


def test_a_script_without_argparse_records_none_and_works(store, repo):
    (repo / "plain.py").write_text("import sys\nprint('args', sys.argv[1:])\n")
    r, rec = _submit(store, repo, "--", sys.executable, "plain.py", "--lr", "0.1", "--fast")
    assert r.returncode == 0, (r.stdout, r.stderr)
    assert rec.state.value == "succeeded"
    assert _config(rec) == {"lr": (0.1, "given"), "fast": (True, "given")}
    log = run_cli("logs", "--store", store.root, rec.run_id)
    assert "args ['--lr', '0.1', '--fast']" in log.stdout


def test_a_run_stopped_by_its_time_limit_keeps_its_parsed_options(store, repo, tmp_path):
    (repo / "train.py").write_text(TRAIN)
    tmpdir = tmp_path / "node-tmp"  # the job's temporary directory, to look at afterwards
    tmpdir.mkdir()
    r, rec = _submit(
        store,
        repo,
        "--timeout-min",
        "0.05",
        "--",
        sys.executable,
        "train.py",
        "--lr",
        "0.2",
        "--sleep",
        "120",
        env={"TMPDIR": str(tmpdir)},
    )
    assert r.returncode == 1
    assert rec.failure is not None and rec.failure.cause.value == "timeout"
    truth = json.loads((repo / "truth.json").read_text())
    conf = _config(rec)
    assert conf["lr"] == (0.2, "argv") and conf["sleep"] == (120.0, "argv")
    assert conf["epochs"] == (truth["epochs"], "default")
    # runrec's time limit ends the job at once: what it leaves holds no option value
    assert list(tmpdir.glob("runrec-argv-*"))  # the job's capture directory was there
    left = [p for p in tmpdir.rglob("*") if p.is_file()]
    assert {p.name for p in left} <= {"sitecustomize.py"}


def test_env_source_and_secret_redaction_from_the_cli(store, repo):
    (repo / "plain.py").write_text("print('ok')\n")
    env = {"RR_TEST_DB_URL": "postgresql://bob:Hunter2Hunter2@db/x", "RR_TEST_WARMUP": "100"}
    r, rec = _submit(
        store,
        repo,
        "--config-env",
        "db=RR_TEST_DB_URL",
        "--config-env",
        "warmup=RR_TEST_WARMUP",
        "--",
        sys.executable,
        "plain.py",
        env=env,
    )
    assert r.returncode == 0, (r.stdout, r.stderr)
    conf = _config(rec)
    assert conf["warmup"] == (100, "env:RR_TEST_WARMUP")
    assert conf["db"][1] == "env:RR_TEST_DB_URL" and "Hunter2Hunter2" not in conf["db"][0]
    files = [p for p in Path(store.root).rglob("*") if p.is_file()]
    assert files and not [p for p in files if b"Hunter2Hunter2" in p.read_bytes()]


def test_a_bad_config_file_is_a_clear_error_and_nothing_runs(store, repo):
    (repo / "bad.toml").write_text("lr = 0.1\nepochs = = 3\n")
    r = run_cli("submit", "--store", store.root, "--config", "bad.toml", "--", "true", cwd=repo)
    assert r.returncode == 1
    assert "config file bad.toml is not valid TOML at line 2" in r.stderr
    assert "Traceback" not in r.stderr
    assert list(store.run_ids()) == []
    r = run_cli("submit", "--store", store.root, "--config", "missing.yaml", "--", "true", cwd=repo)
    assert r.returncode == 1 and "missing.yaml does not exist" in r.stderr
    assert list(store.run_ids()) == []


def test_rerun_set_of_an_argparse_default_reaches_the_script(store, repo):
    (repo / "train.py").write_text(TRAIN)
    r, rec = _submit(store, repo, "--", sys.executable, "train.py", "--lr", "0.1")
    assert r.returncode == 0, (r.stdout, r.stderr)
    assert _config(rec)["epochs"] == (10, "default")
    r = run_cli("rerun", "--store", store.root, rec.run_id, "--set", "epochs=4", "--wait", cwd=repo)
    assert r.returncode == 0, (r.stdout, r.stderr)
    (new,) = [store.load(i) for i in store.run_ids() if i != rec.run_id]
    truth = json.loads((Path(new.entrypoint.cwd) / "truth.json").read_text())
    assert truth["epochs"] == 4  # the script saw it: --epochs 4 was added to its command line
    assert new.entrypoint.argv[-2:] == ["--epochs", "4"]
    assert _config(new)["epochs"] == (4, "argv")
    assert _config(new)["lr"] == (0.1, "argv")
