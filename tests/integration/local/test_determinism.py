"""Determinism facts on the local backend: real job processes, the variables the test sets, a
library the user's code imports (a stand-in ``torch`` package on PYTHONPATH: the real one is
not installed here; runrec must read what the loaded module says and never import it), a
command run (what cannot be known), and ``runrec diff``'s determinism section. Ground truth:
what the job process itself reports (its return value) and the environment the test set."""

import json
import sys

import jobfns
from helpers import run_cli

import runrec_cluster as rr
from runrec_cluster.capture import determinism

FAKE_TORCH = """\
import types

__version__ = "0.0+fake"
backends = types.SimpleNamespace(
    cudnn=types.SimpleNamespace(deterministic=False, benchmark=True, allow_tf32=True),
    cuda=types.SimpleNamespace(matmul=types.SimpleNamespace(allow_tf32=False)),
)
_det = [False]


def use_deterministic_algorithms(mode, warn_only=False):
    _det[0] = bool(mode)


def are_deterministic_algorithms_enabled():
    return _det[0]


def is_deterministic_algorithms_warn_only_enabled():
    return False


def get_num_threads():
    return 5


def get_num_interop_threads():
    return 2
"""


def _fake_torch(tmp_path, monkeypatch):
    d = tmp_path / "site"
    (d / "torch").mkdir(parents=True)
    (d / "torch" / "__init__.py").write_text(FAKE_TORCH)
    monkeypatch.setenv("PYTHONPATH", str(d))
    return d


def _run(store, tmp_path, import_torch):
    h = rr.Executor(backend="local", store=store, cwd=tmp_path).submit(
        jobfns.determinism_job, import_torch
    )
    seen = h.result(timeout=120)
    return store.load(h.run_id), seen


def test_a_function_run_records_the_variables_and_the_loaded_library(store, tmp_path, monkeypatch):
    _fake_torch(tmp_path, monkeypatch)
    monkeypatch.setenv("OMP_NUM_THREADS", "3")
    monkeypatch.setenv("PYTHONHASHSEED", "0")
    monkeypatch.delenv("MKL_NUM_THREADS", raising=False)
    rec, seen = _run(store, tmp_path, True)
    d = rec.node.determinism
    assert d is not None and d.env_source == determinism.JOB_ENV
    assert d.env["OMP_NUM_THREADS"] == seen["OMP_NUM_THREADS"] == "3"
    assert d.env["PYTHONHASHSEED"] == seen["PYTHONHASHSEED"] == "0"
    assert d.env["MKL_NUM_THREADS"] is None
    assert d.settings["python.hash_randomization"] is seen["hash_randomization"] is False
    # what the user's code set on the loaded module, read at the end of the run
    assert d.settings["torch.backends.cudnn.deterministic"] is seen["cudnn.deterministic"]
    assert d.settings["torch.backends.cudnn.benchmark"] is True
    assert d.settings["torch.num_threads"] == seen["num_threads"] == 5
    assert d.settings["torch.deterministic_algorithms"] is False
    assert "torch" not in d.unknown

    plain, seen = _run(store, tmp_path, False)
    assert "torch" not in seen
    p = plain.node.determinism
    assert not any(k.startswith("torch.") for k in p.settings)
    assert p.unknown["torch"].startswith("torch not loaded")

    monkeypatch.setenv("OMP_NUM_THREADS", "7")
    other, _ = _run(store, tmp_path, True)
    r = run_cli("diff", rec.run_id, other.run_id, "--json", "--store", store.root)
    assert r.returncode == 0, r.stderr
    got = {x["key"]: x for x in json.loads(r.stdout)["differences"]}
    omp = got["determinism.env.OMP_NUM_THREADS"]
    assert (omp["a"], omp["b"], omp["label"], omp["section"]) == (
        "3",
        "7",
        "incidental",
        "determinism",
    )
    assert not any(k.startswith("determinism.torch") for k in got)  # the same settings
    r = run_cli("diff", rec.run_id, plain.run_id, "--store", store.root)
    row = next(ln for ln in r.stdout.splitlines() if "torch.backends.cudnn.deterministic" in ln)
    assert "unknown: torch not loaded" in row and "incidental" in row
    r = run_cli("show", rec.run_id, "--store", store.root)
    assert "determinism env: PYTHONHASHSEED=0, OMP_NUM_THREADS=3" in r.stdout


def test_a_command_run_records_its_environment_and_says_what_it_cannot_know(
    store, tmp_path, monkeypatch
):
    _fake_torch(tmp_path, monkeypatch)
    monkeypatch.setenv("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    h = rr.Executor(backend="local", store=store, cwd=tmp_path).submit_command(
        [sys.executable, "-c", "import torch; torch.use_deterministic_algorithms(True)"]
    )
    rec = h.wait(timeout=120)
    assert rec.state == rr.RunState.SUCCEEDED, rec.failure
    d = rec.node.determinism
    assert d.env_source == determinism.COMMAND_ENV
    assert d.env["CUBLAS_WORKSPACE_CONFIG"] == ":4096:8"
    assert d.settings == {}  # the command's process is not the job's: nothing is guessed
    assert set(d.unknown) == {"torch", "threadpoolctl", "python"}
    assert "the job cannot read" in d.unknown["torch"]
