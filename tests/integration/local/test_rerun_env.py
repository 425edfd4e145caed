"""`runrec rerun --env recorded` on the local backend, with real venvs built by uv from the
package index: a run made with six==1.16.0, the current environment moved to six==1.17.0.

Ground truth is gathered by the job itself (where.py writes sys.executable, sys.prefix and
six.__version__ into a file) and by asking the environment's Python with importlib.metadata."""

import json
import os
import struct
import subprocess
import sys

import pytest
from envkit import dist_version, install, make_venv, new_id, project, runrec, where

import runrec_cluster as rr

OLD, NEW = "1.16.0", "1.17.0"


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """The original run (six 1.16.0), then the current environment moved to six 1.17.0."""
    base = tmp_path_factory.mktemp("envworld")
    py = make_venv(base / "venv", f"six=={OLD}")
    proj = project(base / "proj")
    store = str(base / "store")
    out = runrec(py, "submit", "--store", store, "--backend", "local", "--wait", "--",
                 "python", "where.py", cwd=proj)  # fmt: skip
    orig = new_id(out, "submitted run ")
    assert where(store, orig)["six"] == OLD
    install(py, f"six=={NEW}")
    assert dist_version(py, "six") == NEW
    return {"py": py, "proj": proj, "store": store, "orig": orig, "base": base}


def _diff(w, a, b):
    out = runrec(w["py"], "diff", a, b, "--json", "--store", w["store"], cwd=w["proj"])
    assert out.returncode == 0, out.stderr
    return {c["key"]: c for c in json.loads(out.stdout)["differences"]}


def _bits(x):
    return struct.pack("<d", x)


def test_recorded_env_reproduces_and_is_cached(world, tmp_path):
    w, envs = world, str(tmp_path / "envs")
    env = {"RUNREC_ENVS_DIR": envs}
    out = runrec(w["py"], "rerun", w["orig"], "--env", "recorded", "--check",
                 "--store", w["store"], cwd=w["proj"], env=env)  # fmt: skip
    rid = new_id(out)
    assert "verdict: reproduced: metrics bit-identical" in out.stdout
    assert "env: building the recorded environment" in out.stderr
    got = where(w["store"], rid)
    assert got["six"] == OLD and got["prefix"].startswith(envs)
    assert dist_version(got["executable"], "six") == OLD  # the env's own Python says so
    assert dist_version(w["py"], "six") == NEW  # the current environment is untouched
    st = rr.Store(w["store"])
    rec, orig = st.load(rid), st.load(w["orig"])
    assert rec.rerun.env.mode == "recorded" and rec.rerun.env.built is True
    assert rec.node.job_python == got["executable"] == rec.rerun.env.python
    assert _bits(rec.metrics["loss"]) == _bits(orig.metrics["loss"])
    assert rec.reproduction.verdict == "bit-identical" and rec.reproduction.of == w["orig"]
    ch = _diff(w, w["orig"], rid)
    assert ch["env"]["label"] == "intended" and ch["env"]["b"] == "recorded"
    assert not any(k.startswith("node.packages.") for k in ch)  # the node ran the recorded set

    # a second rerun reuses it: no install (the directory and its files are the same ones)
    env_dir = rec.rerun.env.dir
    site = os.path.join(env_dir, "lib", f"python{sys.version_info[0]}.{sys.version_info[1]}",
                        "site-packages")  # fmt: skip
    before = [(os.stat(p).st_ino, os.stat(p).st_mtime_ns) for p in (env_dir, site)]
    out = runrec(w["py"], "rerun", w["orig"], "--env", "recorded", "--wait",
                 "--store", w["store"], cwd=w["proj"], env=env)  # fmt: skip
    rid2 = new_id(out)
    assert "reusing the recorded environment" in out.stderr and "building" not in out.stderr
    assert [(os.stat(p).st_ino, os.stat(p).st_mtime_ns) for p in (env_dir, site)] == before
    rec2 = st.load(rid2)
    assert rec2.rerun.env.built is False and rec2.rerun.env.dir == env_dir
    assert where(w["store"], rid2)["prefix"] == env_dir
    assert [e for e in os.listdir(envs) if e.startswith(".tmp-")] == []

    out = runrec(w["py"], "ls", "--where", "reproduction == 'bit-identical'", "--json",
                 "--store", w["store"], cwd=w["proj"])  # fmt: skip
    assert [r["run_id"] for r in json.loads(out.stdout)] == [rid]


def test_current_env_shows_the_upgrade_incidental_and_with_intended(world, tmp_path):
    w = world
    env = {"RUNREC_ENVS_DIR": str(tmp_path / "envs")}
    out = runrec(w["py"], "rerun", w["orig"], "--env", "current", "--wait",
                 "--store", w["store"], cwd=w["proj"], env=env)  # fmt: skip
    cur = new_id(out)
    assert where(w["store"], cur)["six"] == NEW
    ch = _diff(w, w["orig"], cur)
    six = ch["node.packages.six"]
    assert (six["a"], six["b"], six["label"]) == (OLD, NEW, "incidental")
    assert ch["env"]["label"] == "intended" and ch["env"]["b"] == "current"
    text = runrec(w["py"], "diff", w["orig"], cur, "--store", w["store"], cwd=w["proj"]).stdout
    assert "six 1.16.0->1.17.0" in text and "incidental" in text

    out = runrec(w["py"], "rerun", w["orig"], "--with", f"six=={NEW}", "--wait",
                 "--store", w["store"], cwd=w["proj"], env=env)  # fmt: skip
    assert f"intended: packages.six: {OLD} -> {NEW}" in out.stdout
    wid = new_id(out)
    got = where(w["store"], wid)
    assert got["six"] == NEW and dist_version(got["executable"], "six") == NEW
    assert got["prefix"].startswith(str(tmp_path / "envs"))
    ch = _diff(w, w["orig"], wid)
    six = ch["node.packages.six"]
    assert (six["a"], six["b"], six["label"]) == (OLD, NEW, "intended")
    assert rr.Store(w["store"]).load(wid).rerun.env.changed == {"six": NEW}


def test_a_distribution_not_on_the_index_refuses(tmp_path):
    local = tmp_path / "localpkg"
    (local / "src" / "rrenvlocal").mkdir(parents=True)
    (local / "src" / "rrenvlocal" / "__init__.py").write_text("X = 1\n")
    (local / "pyproject.toml").write_text(
        '[project]\nname = "rr-env-local-only"\nversion = "0.1.0"\n'
        '[build-system]\nrequires = ["setuptools>=68"]\nbuild-backend = "setuptools.build_meta"\n'
    )
    py = make_venv(tmp_path / "venv", f"six=={OLD}", str(local))
    proj = project(tmp_path / "proj")
    store = str(tmp_path / "store")
    out = runrec(py, "submit", "--store", store, "--backend", "local", "--wait", "--",
                 "python", "where.py", cwd=proj)  # fmt: skip
    orig = new_id(out, "submitted run ")
    n_runs = len(os.listdir(os.path.join(store, "runs")))
    out = runrec(py, "rerun", orig, "--env", "recorded", "--store", store, cwd=proj)
    assert out.returncode == 1
    assert "rr-env-local-only==0.1.0" in out.stderr and "--allow-missing" in out.stderr
    assert "Traceback" not in out.stderr
    assert len(os.listdir(os.path.join(store, "runs"))) == n_runs  # nothing submitted
    out = runrec(py, "rerun", orig, "--env", "recorded", "--allow-missing", "--wait",
                 "--store", store, cwd=proj)  # fmt: skip
    rid = new_id(out)
    assert "left out (--allow-missing): rr-env-local-only==0.1.0" in out.stderr
    rec = rr.Store(store).load(rid)
    assert rec.rerun.env.missing == {"rr-env-local-only": "0.1.0"}
    exe = where(store, rid)["executable"]
    gone = subprocess.run([exe, "-c", "import rrenvlocal"], capture_output=True)
    assert gone.returncode != 0  # really not there
    assert dist_version(exe, "six") == OLD


def test_concurrent_builders_share_one_environment(world, tmp_path):
    w, envs = world, str(tmp_path / "envs")
    e = dict(os.environ, RUNREC_ENVS_DIR=envs)
    e["PATH"] = os.path.dirname(w["py"]) + os.pathsep + e["PATH"]
    args = [w["py"], "-m", "runrec_cluster", "rerun", w["orig"], "--env", "recorded", "--wait",
            "--store", w["store"]]  # fmt: skip
    procs = [
        subprocess.Popen(
            args, cwd=w["proj"], env=e, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )  # fmt: skip
        for _ in range(2)
    ]
    outs = [p.communicate(timeout=600) for p in procs]
    assert all(p.returncode == 0 for p in procs), outs
    ids = [o[0].split("submitted rerun ")[1].split()[0] for o in outs]
    recs = [rr.Store(w["store"]).load(i) for i in ids]
    assert sorted(r.rerun.env.built for r in recs) == [False, True]
    assert recs[0].rerun.env.dir == recs[1].rerun.env.dir
    assert [d for d in os.listdir(envs) if not d.startswith(".")] == [
        os.path.basename(recs[0].rerun.env.dir)
    ]
    assert [d for d in os.listdir(envs) if d.startswith(".tmp-")] == []
    assert all(where(w["store"], i)["six"] == OLD for i in ids)


def test_with_needs_an_exact_pin_and_env_recorded(world):
    w = world
    out = runrec(w["py"], "rerun", w["orig"], "--with", "six>=1", "--store", w["store"],
                 cwd=w["proj"])  # fmt: skip
    assert out.returncode == 1 and "NAME==VERSION" in out.stderr
    out = runrec(w["py"], "rerun", w["orig"], "--env", "current", "--with", "six==1.17.0",
                 "--store", w["store"], cwd=w["proj"])  # fmt: skip
    assert out.returncode == 2 and "--env recorded" in out.stderr
