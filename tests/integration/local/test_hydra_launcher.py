"""The Hydra launcher on the local backend, with real hydra-core: ``python app.py --multirun
hydra/launcher=runrec_local model=small,large lr=0.1,0.2,0.3`` in a subprocess is one runrec
sweep of 6 runs (one failing, recorded with its traceback), each with the composed config and
its provenance per key, the config files hashed, and Hydra's output directory; a job reruns by
run id with the same composed config."""

import os
import subprocess
import time

from helpers import run_cli, store_files_holding
from hydra_checks import (
    PROBE,
    b3,
    check_grid,
    check_rerun,
    make_app,
    multirun_argv,
    run_multirun,
    seen,
    sha256,
    sweep_records,
)

import runrec_cluster as rr

PASSWORD = "Hunter2Sekret9"  # a secret by its key (db.password)
TOKEN = "ghp_" + "Q7" * 18  # a secret by its shape (a GitHub token), under an ordinary key
OTHER = "ghp_" + "Z3" * 18


def test_multirun_grid_is_one_sweep_with_provenance_and_a_rerun(tmp_path, store):
    app = make_app(tmp_path)
    out = run_multirun(app, store, "runrec_local", "model=small,large", "lr=0.1,0.2,0.3")
    recs = check_grid(app, store, out, ["small", "large"], [0.1, 0.2, 0.3], "local")
    assert "runrec local sweep of 6 jobs" in out.stdout + out.stderr
    check_rerun(app, store, recs[4], "large", 0.2)


def test_a_bad_launcher_parameter_is_one_line_naming_it(tmp_path, store):
    app = make_app(tmp_path)
    out = run_multirun(app, store, "runrec_local", "lr=0.1", "hydra.launcher.stderr_to_stdout=true")
    assert out.returncode == 1
    assert "hydra.launcher.stderr_to_stdout=True is not supported" in out.stderr
    assert "Traceback" not in out.stderr
    assert not list(store.load_all())  # nothing was recorded, nothing ran


def test_secret_overrides_stay_out_of_the_store_and_a_rerun_asks_for_them(
    tmp_path, store, monkeypatch
):
    sdir = tmp_path / "private" / "secrets"
    monkeypatch.setenv("RUNREC_SECRETS_DIR", str(sdir))
    app = make_app(tmp_path, {"probe.py": PROBE})
    probe = tmp_path / "probe"
    probe.mkdir()
    out = run_multirun(
        app, store, "runrec_local", "lr=0.1,0.2", f"+db.password={PASSWORD}", f"+hub={TOKEN}",
        f"+out={probe}", script="probe.py",
    )  # fmt: skip
    assert out.returncode == 0, out.stdout + out.stderr
    assert PASSWORD not in out.stderr + out.stdout  # the launcher's job lines are redacted
    recs = sweep_records(store)
    assert [r.config["lr"].value for r in recs] == [0.1, 0.2]
    for rec in recs:
        assert rec.state == rr.RunState.SUCCEEDED, rec.failure
        assert rec.entrypoint.withheld == ["db.password", "hub"]
        assert rec.config["db.password"].value == "[redacted]"
        assert rec.config["hub"].value == "[redacted]"
        # the job received the real values (the task's own hashes, written outside the store)
        got = seen(probe, rec.run_id)
        assert (got["password"], got["hub"]) == (sha256(PASSWORD), sha256(TOKEN))
        hydra_dir = {a.name: a for a in rec.artifacts}["hydra"]
        assert hydra_dir.kept is None and "secrets" in hydra_dir.not_kept
        assert (
            PASSWORD
            in (
                app / "multirun" / "sweep" / str(rec.sweep_index) / ".hydra" / "overrides.yaml"
            ).read_text()
        )  # Hydra's own files: the user's
    # no file of the store holds a secret, raw or decompressed; the secrets files are gone
    assert store_files_holding(store.root, PASSWORD, TOKEN) == {}
    assert os.listdir(sdir) == []

    # a rerun without the values is refused, naming each key and both ways to give it
    before = set(store.run_ids())
    r = run_cli("rerun", recs[1].run_id, "--store", store.root, cwd=app)
    assert r.returncode == 1, r.stdout + r.stderr
    msg = " ".join(r.stderr.split())
    assert "held values that were kept out of the store (secrets)" in msg, msg
    assert "db.password: --set db.password=VALUE or $RUNREC_SECRET_DB_PASSWORD" in msg, msg
    assert "hub: --set hub=VALUE or $RUNREC_SECRET_HUB" in msg, msg
    assert "Traceback" not in r.stderr and set(store.run_ids()) == before

    # with one from the environment and one by --set, it runs with them
    env = {"RUNREC_SECRET_DB_PASSWORD": PASSWORD}
    r = run_cli(
        "rerun", recs[1].run_id, "--set", f"hub={OTHER}", "--wait", "--store", store.root,
        cwd=app, env=env,
    )  # fmt: skip
    assert r.returncode == 0, r.stdout + r.stderr
    note = " ".join(r.stderr.split())
    assert "db.password from $RUNREC_SECRET_DB_PASSWORD, hub from --set hub" in note, note
    assert "is runrec-cluster's own job function, not your code" in note, note
    assert "not importable" not in note, note
    (new_id,) = set(store.run_ids()) - before
    new = store.load(new_id)
    assert new.state == rr.RunState.SUCCEEDED and new.rerun_of == recs[1].run_id, new.failure
    got = seen(probe, new_id)
    assert (got["password"], got["hub"], got["lr"]) == (sha256(PASSWORD), sha256(OTHER), 0.2)
    assert store_files_holding(store.root, PASSWORD, TOKEN, OTHER) == {}
    assert os.listdir(sdir) == []


def test_a_config_file_edited_before_a_job_starts_is_recorded_as_the_job_saw_it(tmp_path, store):
    """Two jobs, one at a time: the first waits on a gate while the test edits conf/config.yaml
    (epochs 3 -> 5), so the second job starts after the edit. Its record says so: the file's
    hash at job start next to the submit's, the config as the job composed it, a warning."""
    app = make_app(tmp_path, {"probe.py": PROBE})
    probe, gate = tmp_path / "probe", tmp_path / "gate"
    probe.mkdir()
    conf = app / "conf" / "config.yaml"
    before = b3(conf)
    argv, env = multirun_argv(
        store, "runrec_local", "lr=0.1,0.2", "hydra.launcher.max_parallel=1", f"+out={probe}",
        f"+gate={gate}", script="probe.py",
    )  # fmt: skip
    proc = subprocess.Popen(argv, cwd=app, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 300
        while not any(p.name.startswith("started-") for p in probe.iterdir()):
            assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
            time.sleep(0.1)
        conf.write_text(conf.read_text().replace("epochs: 3", "epochs: 5"))
        after = b3(conf)
        assert after != before
        gate.touch()
        stdout, stderr = proc.communicate(timeout=600)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, stdout.decode() + stderr.decode()
    first, second = sweep_records(store)
    path = os.path.realpath(conf)
    source = f"file:{path}"
    # the first job started before the edit: as submitted
    assert seen(probe, first.run_id)["epochs"] == 3
    assert (first.config["epochs"].value, first.config["epochs"].source) == (3, source)
    assert [(i.digest, i.added_by) for i in first.inputs if i.path == path] == [(before, "submit")]
    assert first.warnings == []
    # the second started after it: the record says what the job composed, and why
    assert seen(probe, second.run_id)["epochs"] == 5
    assert (second.config["epochs"].value, second.config["epochs"].source) == (5, source)
    assert second.config["lr"].value == 0.2 and second.config["lr"].source == "given"
    refs = sorted((i.digest, i.added_by, i.role) for i in second.inputs if i.path == path)
    assert refs == sorted([(before, "submit", "config"), (after, "job", "config")])
    (warning,) = second.warnings
    assert f"{path} (at submit {before}; at job start {after})" in warning, warning
    assert f"epochs: 3 ({source}) -> 5 ({source})" in warning, warning
    assert "model" not in warning  # the group's file did not change
