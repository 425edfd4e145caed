"""The Hydra launcher on the local backend, with real hydra-core: ``python app.py --multirun
hydra/launcher=runrec_local model=small,large lr=0.1,0.2,0.3`` in a subprocess is one runrec
sweep of 6 runs (one failing, recorded with its traceback), each with the composed config and
its provenance per key, the config files hashed, and Hydra's output directory; a job reruns by
run id with the same composed config."""

from hydra_checks import check_grid, check_rerun, make_app, run_multirun


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
