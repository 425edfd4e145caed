"""The Hydra launcher tests' app, command and checks, shared by local, Slurm and Ray
(tests/integration/{local,slurm,ray}/test_hydra_*.py).

The app is tests/fixtures/hydra_app (conf/config.yaml with the config group model: small |
large; the task logs a loss and fails for model=large at lr >= 0.3), copied into a real git
repository and run as users do: ``python app.py --multirun hydra/launcher=runrec_<backend> ...``
in a subprocess. The ground truth is what the test passed on the command line and the files it
wrote; the expected loss is computed here from the values the test knows.
"""

import hashlib
import json
import os
import shutil
import subprocess
import sys

import blake3
import yaml
from helpers import git, run_cli

import runrec_cluster as rr

FIXTURE = os.path.join(os.path.dirname(__file__), "fixtures", "hydra_app")
REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MODELS = {"small": {"name": "small", "width": 64, "depth": 2}, "large": {"name": "large", "width": 512, "depth": 8}}  # fmt: skip
EPOCHS, BATCH = 3, 32  # conf/config.yaml


def make_app(tmp_path, extra=None):
    """The fixture app in a fresh git repository (outputs ignored), committed; ``extra``: more
    files (name -> text), e.g. another task script."""
    app = tmp_path / "hydra app"  # a space in the path, as users have
    shutil.copytree(FIXTURE, app)
    for name, text in (extra or {}).items():
        (app / name).write_text(text)
    (app / ".gitignore").write_text("multirun/\noutputs/\n__pycache__/\n")
    git(app, "init", "-q", "-b", "main")
    git(app, "add", ".")
    git(app, "commit", "-qm", "hydra app")
    return app


def multirun_argv(store, launcher, *overrides, script="app.py"):
    """``python SCRIPT --multirun hydra/launcher=LAUNCHER OVERRIDES``, with the store and a
    fixed sweep directory given as Hydra overrides, and its environment: PYTHONPATH names this
    checkout, so that the app (and the jobs it starts, which inherit it) import this
    runrec-cluster and its hydra_plugins package even where the venv holds another install."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (REPO_ROOT, env.get("PYTHONPATH")) if p)
    argv = [
        sys.executable, script, "--multirun", f"hydra/launcher={launcher}", *overrides,
        f"hydra.launcher.store={store.root}", "hydra.sweep.dir=multirun/sweep",
    ]  # fmt: skip
    return argv, env


def run_multirun(app, store, launcher, *overrides, timeout=600, script="app.py"):
    """The multirun (``multirun_argv``) as a subprocess, waited for."""
    argv, env = multirun_argv(store, launcher, *overrides, script=script)
    return subprocess.run(argv, cwd=app, env=env, capture_output=True, text=True, timeout=timeout)


def b3(path):
    with open(path, "rb") as f:
        return "blake3:" + blake3.blake3(f.read()).hexdigest()


def expected_loss(model, lr):
    return round(MODELS[model]["width"] * lr / (EPOCHS * BATCH), 6)


def sweep_records(store):
    """The records of the one sweep in ``store`` (asserted to be one), by sweep index."""
    recs = [r for r in store.load_all() if r.rerun_of is None]
    sweeps = {r.sweep_id for r in recs}
    assert len(sweeps) == 1 and None not in sweeps, f"expected one sweep, got {sweeps}"
    return sorted(recs, key=lambda r: r.sweep_index)


def check_job(app, rec, model, lr, num, fails):
    """One job's record against what the test passed: config with provenance per key, the
    config files' hashes, the output directory with Hydra's files, the outcome."""
    conf = os.path.realpath(app / "conf" / "config.yaml")
    group_file = os.path.realpath(app / "conf" / "model" / f"{model}.yaml")
    other = os.path.realpath(app / "conf" / "model" / ("large" if model == "small" else "small"))
    # the outcome first: a job that did not run as planned explains itself here
    expected = rr.RunState.FAILED if fails else rr.RunState.SUCCEEDED
    assert rec.state == expected, (num, rec.state, rec.state_source, rec.failure, rec.warnings)
    cfg = {k: (e.value, e.source) for k, e in rec.config.items()}
    assert cfg == {
        "lr": (lr, "given"),  # a command-line override
        "model.name": (model, f"group:model={model}"),  # the config group choice
        "model.width": (MODELS[model]["width"], f"group:model={model}"),
        "model.depth": (MODELS[model]["depth"], f"group:model={model}"),
        "epochs": (EPOCHS, f"file:{conf}"),  # a default from the named config file
        "data.batch_size": (BATCH, f"file:{conf}"),
        "data.path": ("/data/train", f"file:{conf}"),
    }, cfg
    inputs = {i.path: i for i in rec.inputs}
    assert inputs[conf].digest == b3(conf) and inputs[conf].role == "config"
    assert inputs[group_file].digest == b3(group_file) and inputs[group_file].role == "config"
    assert not any(p.startswith(other) for p in inputs), "the other group option was not used"
    arts = {a.name: a for a in rec.artifacts}
    out_dir = app / "multirun" / "sweep" / str(num)
    assert arts["hydra"].path == os.path.realpath(out_dir / ".hydra")
    for f in ("config.yaml", "hydra.yaml", "overrides.yaml"):
        assert (out_dir / ".hydra" / f).is_file(), f
    composed = yaml.safe_load((out_dir / ".hydra" / "config.yaml").read_text())
    assert composed["lr"] == lr and composed["model"] == MODELS[model]
    overrides = yaml.safe_load((out_dir / ".hydra" / "overrides.yaml").read_text())
    assert overrides == [f"model={model}", f"lr={lr}"]
    hydra_yaml = yaml.safe_load((out_dir / ".hydra" / "hydra.yaml").read_text())["hydra"]
    assert hydra_yaml["job"]["id"] == rec.run_id and hydra_yaml["job"]["num"] == num
    if fails:
        assert rec.state == rr.RunState.FAILED, rec.state
        assert rec.failure.cause.value == "code_error" and rec.failure.type == "FloatingPointError"
        assert f"loss diverged: model={model} lr={lr}" in rec.failure.message
        assert "in train" in rec.failure.traceback and "FloatingPointError" in rec.failure.traceback
        assert not (out_dir / "result.txt").exists()
    else:
        assert rec.state == rr.RunState.SUCCEEDED, (rec.state, rec.failure)
        assert rec.metrics["loss"] == expected_loss(model, lr)
        assert (out_dir / "result.txt").read_text().startswith(f"{model} {lr} ")


def check_grid(app, store, out, models, lrs, backend):
    """The whole multirun: one sweep of len(models) x len(lrs) runs in Hydra's job order, the
    large model at lr >= 0.3 failed, Hydra's exit code and message for it."""
    assert "sweep of" in out.stderr + out.stdout, out.stdout + out.stderr  # the launcher ran
    recs = sweep_records(store)
    grid = [(m, lr) for m in models for lr in lrs]  # Hydra's BasicSweeper order
    assert len(recs) == len(grid)
    failing = [(m, lr) for m, lr in grid if m == "large" and lr >= 0.3]
    for num, (rec, (model, lr)) in enumerate(zip(recs, grid, strict=True)):
        assert rec.sweep_index == num and rec.execution.backend == backend
        assert rec.entrypoint.function == "runrec_cluster.hydra.job:run_hydra_job"
        assert rec.name == "app"
        check_job(app, rec, model, lr, num, fails=(model, lr) in failing)
    if failing:
        assert out.returncode == 1, out.stdout + out.stderr
        m, lr = failing[0]
        assert f"Error executing job with overrides: ['model={m}', 'lr={lr}']" in out.stderr
    else:
        assert out.returncode == 0, out.stdout + out.stderr
    return recs


def check_rerun(app, store, rec, model, lr):
    """``runrec rerun RUN --wait`` of one job (a real CLI process): it succeeds with the same
    composed config (values and provenance) and writes a new output directory next to the
    original's, leaving the original's untouched."""
    num = rec.sweep_index
    out_dir = app / "multirun" / "sweep" / str(num)
    before = (out_dir / ".hydra" / "hydra.yaml").read_bytes()
    env = {"PYTHONPATH": os.pathsep.join(p for p in (REPO_ROOT, os.environ.get("PYTHONPATH")) if p)}
    out = run_cli("rerun", rec.run_id, "--wait", "--store", store.root, cwd=app, env=env)
    assert out.returncode == 0, out.stdout + out.stderr
    new_id = out.stdout.split("submitted rerun ")[1].split()[0]
    new = store.load(new_id)
    assert new.rerun_of == rec.run_id and new.state == rr.RunState.SUCCEEDED, new.failure
    assert {k: (e.value, e.source) for k, e in new.config.items()} == {
        k: (e.value, e.source) for k, e in rec.config.items()
    }
    assert [(i.path, i.digest) for i in new.inputs] == [(i.path, i.digest) for i in rec.inputs]
    assert new.metrics["loss"] == expected_loss(model, lr)
    rerun_dir = app / "multirun" / "sweep" / f"{num}-rerun-{new_id}"
    assert {a.name: a.path for a in new.artifacts}["hydra"] == os.path.realpath(
        rerun_dir / ".hydra"
    )
    composed = yaml.safe_load((rerun_dir / ".hydra" / "config.yaml").read_text())
    assert composed == yaml.safe_load((out_dir / ".hydra" / "config.yaml").read_text())
    assert (out_dir / ".hydra" / "hydra.yaml").read_bytes() == before  # the original's kept
    return new


# A task that reports what it received, outside the store: ``+out=DIR`` (a directory the test
# made), the sha256 of ``db.password`` and ``hub`` when given, and ``epochs``; with
# ``+gate=PATH`` it first says it started and waits for PATH to exist.
PROBE = """
import hashlib
import json
import os
import time

import hydra

import runrec_cluster as rr


def sha(value):
    return None if value is None else hashlib.sha256(str(value).encode()).hexdigest()


@hydra.main(version_base="1.3", config_path="conf", config_name="config")
def probe(cfg):
    rid = rr.current_run().run_id
    if cfg.get("gate"):
        open(os.path.join(cfg.out, f"started-{rid}"), "w").close()
        deadline = time.monotonic() + 600
        while not os.path.exists(cfg.gate) and time.monotonic() < deadline:
            time.sleep(0.1)
    seen = {
        "lr": cfg.lr,
        "epochs": cfg.epochs,
        "password": sha(cfg.get("db", {}).get("password")),
        "hub": sha(cfg.get("hub")),
    }
    with open(os.path.join(cfg.out, f"seen-{rid}.json"), "w") as f:
        json.dump(seen, f)


if __name__ == "__main__":
    probe()
"""


def sha256(text):
    return hashlib.sha256(text.encode()).hexdigest()


def seen(out_dir, run_id):
    """What the probe task of run ``run_id`` received (written outside the store)."""
    with open(os.path.join(out_dir, f"seen-{run_id}.json")) as f:
        return json.load(f)
