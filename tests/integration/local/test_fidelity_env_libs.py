"""Issue 13, repros 2 and 3 on the local backend, with real processes.

Repro 2: a command run records the interpreter the command actually runs (another `python3`
first on PATH, a shebang script, a non-Python program), its version and its packages; the
ground truth is what the test gets by running that interpreter itself.

Repro 3: fake `libcudart.so.12.4.127`, `libcudnn.so.9` and `libnccl.so.2`, built here with
`cc`, loaded by the user's code with ctypes, reach the record for a command and a function that
succeed, fail, are killed by runrec's time limit, or are cancelled. The user's code itself
writes down its pid and what its own /proc/self/maps showed: the ground truth."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import pytest
from helpers import build_fake_libs, run_cli

import runrec_cluster as rr
from runrec_cluster.capture import proc

LIBS = {"libcudart.so.12.4.127": "12.4.127", "libcudnn.so.9": "9", "libnccl.so.2": "2"}
TRUTH_SCRIPT = (
    "import json, platform, sys\n"
    "from importlib import metadata\n"
    "print(json.dumps({'executable': sys.executable, 'version': platform.python_version(),\n"
    "  'packages': {d.metadata['Name']: d.version for d in metadata.distributions()}}))\n"
)


@pytest.fixture(scope="module")
def libdir(tmp_path_factory):
    """The three fake CUDA libraries, compiled here (cc is installed by scripts/test-all)."""
    d = tmp_path_factory.mktemp("fakecuda")
    build_fake_libs(d, LIBS)
    return d


@pytest.fixture
def isolated(tmp_path, monkeypatch):
    """The interpreter cache in this test's directory (the job inherits the variable)."""
    monkeypatch.setenv("RUNREC_CACHE_DIR", str(tmp_path / "cache"))
    return tmp_path


@pytest.fixture(scope="module")
def venv2(tmp_path_factory):
    """A second real Python environment (Debian's python3, not the test venv) with one
    distribution of its own; its facts as that interpreter itself reports them."""
    base = "/usr/bin/python3"
    assert os.path.exists(base)
    d = tmp_path_factory.mktemp("venv2") / "env"
    subprocess.run([base, "-m", "venv", "--without-pip", str(d)], check=True)
    sp = subprocess.run(
        [str(d / "bin" / "python3"), "-c", "import site; print(site.getsitepackages()[0])"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout.strip()
    info = os.path.join(sp, "Fake_Pkg_D13-1.2.3.dist-info")
    os.makedirs(info)
    with open(os.path.join(info, "METADATA"), "w") as f:
        f.write("Metadata-Version: 2.1\nName: Fake_Pkg_D13\nVersion: 1.2.3\n")
    truth = subprocess.run(
        [str(d / "bin" / "python3"), "-c", TRUTH_SCRIPT],
        check=True,
        capture_output=True,
        cwd=d,  # not a checkout: -c puts the working directory on sys.path
    )
    facts = json.loads(truth.stdout)
    assert facts["packages"] == {"Fake_Pkg_D13": "1.2.3"}, facts
    return d, facts


def _norm(name: str) -> str:
    return name.lower().replace("_", "-").replace(".", "-")


def _packages(store, blob):
    return store.get_obj(blob, dict[str, str])


# -- repro 2: the command's interpreter ------------------------------------------------------


def test_repro2_as_in_the_issue_other_python3_first_on_path(store, isolated, venv2, monkeypatch):
    env_dir, truth = venv2
    monkeypatch.setenv("PATH", f"{env_dir / 'bin'}{os.pathsep}{os.environ['PATH']}")
    r = run_cli(
        "submit",
        "--store",
        store.root,
        "--backend",
        "local",
        "--wait",
        "--",
        "python3",
        "-c",
        "import sys; print(sys.executable)",
        cwd=isolated,
    )
    assert r.returncode == 0, r.stderr
    rec = store.load(next(iter(store.run_ids())))
    with open(os.path.join(rec.execution.log_dir, "stdout.txt")) as f:
        printed = f.read().strip()
    assert printed == truth["executable"]  # the command itself ran that interpreter
    want_pkgs = {_norm(k): v for k, v in truth["packages"].items()}
    for side in (rec.launch_env.interpreter, rec.node.interpreter):
        assert side.argv0 == "python3" and side.via == "PATH"
        assert side.path == str(env_dir / "bin" / "python3")
        assert side.python_executable == truth["executable"]
        assert side.python_version == truth["version"]
        assert side.package_count == 1 and _packages(store, side.packages_blob) == want_pkgs
    n = rec.node
    assert (n.python_executable, n.python_version) == (truth["executable"], truth["version"])
    assert _packages(store, n.packages_blob) == want_pkgs
    assert n.package_drift == {}  # like with like: the same command's interpreter both sides
    assert n.job_python == sys.executable or os.path.samefile(n.job_python, sys.executable)
    assert "msgspec" not in _packages(store, n.packages_blob)  # not runrec's environment
    shown = run_cli("show", "--store", store.root, rec.run_id)
    assert f"python3 -> {env_dir / 'bin' / 'python3'} (PATH)" in shown.stdout, shown.stdout


def test_shebang_script_and_env_lookup(store, isolated, venv2, monkeypatch):
    env_dir, truth = venv2
    monkeypatch.setenv("PATH", f"{env_dir / 'bin'}{os.pathsep}{os.environ['PATH']}")
    script = isolated / "train.py"
    script.write_text("#!/usr/bin/env python3\nimport sys\nprint(sys.executable)\n")
    os.chmod(script, 0o755)
    h = rr.Executor("local", store=store, cwd=isolated).submit_command(["./train.py"])
    rec = h.wait(timeout=120)
    assert rec.state == rr.RunState.SUCCEEDED, rec.failure
    with open(os.path.join(rec.execution.log_dir, "stdout.txt")) as f:
        assert f.read().strip() == truth["executable"]
    i = rec.node.interpreter
    assert (i.argv0, i.via, i.path) == ("./train.py", "shebang", str(env_dir / "bin" / "python3"))
    assert i.python_version == truth["version"] and i.package_count == 1
    assert rec.launch_env.interpreter.path == i.path


def test_non_python_command_records_the_program(store, isolated):
    h = rr.Executor("local", store=store, cwd=isolated).submit_command(["/bin/sh", "-c", "exit 0"])
    rec = h.wait(timeout=120)
    assert rec.state == rr.RunState.SUCCEEDED
    i = rec.node.interpreter
    assert i.path == "/bin/sh" and i.via == "path"
    assert i.python_version is None and i.packages_blob is None
    assert i.unknown == "not a Python interpreter: /bin/sh"
    assert rec.node.python_executable == "" and rec.node.packages_blob is None
    assert rec.node.job_python  # runrec's own job Python is still named
    shown = run_cli("show", "--store", store.root, rec.run_id).stdout
    assert "not a Python interpreter: /bin/sh" in shown
    assert "package drift: not compared" in shown


# -- repro 3: loaded libraries, every outcome --------------------------------------------------


def _loader(libdir, truth_file, tail: str) -> str:
    """Python source: load the fake libraries, write the pid and the mapped paths (ground
    truth, from the process's own maps), then ``tail``."""
    return (
        "import ctypes, json, os, sys, time\n"
        f"for n in {sorted(LIBS)!r}:\n"
        f"    ctypes.CDLL(os.path.join({str(libdir)!r}, n))\n"
        "maps = [l.split(maxsplit=5)[5].strip() for l in open('/proc/self/maps') if len(l.split(maxsplit=5)) == 6]\n"
        f"mine = sorted({{p for p in maps if p.startswith({str(libdir)!r})}})\n"
        f"open({str(truth_file)!r}, 'w').write(json.dumps({{'pid': os.getpid(), 'libs': mine}}))\n"
        + tail
    )


def _check_libs(rec, truth_file):
    truth = json.loads(truth_file.read_text())
    assert len(truth["libs"]) == 3, truth  # the user's process really mapped the three
    rt = rec.node.runtime
    assert rt is not None, f"no runtime libraries recorded ({rec.state}, {rec.failure})"
    assert (rt.cuda_runtime, rt.cudnn, rt.nccl) == ("12.4.127", "9", "2"), rt
    assert set(truth["libs"]) <= set(rt.loaded_libraries), (truth, rt.loaded_libraries)
    assert truth["pid"] in rt.sampling.pids, (truth["pid"], rt.sampling)
    assert rt.sampling.method and rt.sampling.times and rt.sampling.unknown is None
    return rt


@pytest.mark.parametrize(
    "outcome,tail,state",
    [
        ("succeeded", "time.sleep(1.5)\n", "succeeded"),
        ("failed", "time.sleep(1.5)\nsys.exit(3)\n", "failed"),
        ("timeout", "time.sleep(120)\n", "failed"),
    ],
)
def test_command_libraries_every_outcome(store, isolated, libdir, outcome, tail, state):
    truth = isolated / "truth.json"
    ex = rr.Executor(
        "local", store=store, cwd=isolated, timeout_min=(4 / 60 if outcome == "timeout" else None)
    )
    h = ex.submit_command([sys.executable, "-c", _loader(libdir, truth, tail)])
    rec = h.wait(timeout=180)
    assert rec.state.value == state, rec.failure
    if outcome == "timeout":
        assert rec.failure.cause.value == "timeout", rec.failure
    if outcome == "failed":
        assert rec.exit_code == 3
    rt = _check_libs(rec, truth)
    assert "process tree" in rt.sampling.method


def test_command_libraries_of_a_grandchild_through_sh(store, isolated, libdir):
    """`/bin/sh -c "python ..."`: the libraries are the grandchild's, found by the tree walk."""
    truth = isolated / "truth.json"
    code = _loader(libdir, truth, "time.sleep(1.5)\n")
    script = isolated / "load.py"
    script.write_text(code)
    cmd = f"{sys.executable} {script}; true"  # `; true`: sh cannot exec it in place
    h = rr.Executor("local", store=store, cwd=isolated).submit_command(["/bin/sh", "-c", cmd])
    rec = h.wait(timeout=120)
    assert rec.state == rr.RunState.SUCCEEDED, rec.failure
    rt = _check_libs(rec, truth)
    assert len(rt.sampling.pids) >= 2  # sh and its child


def test_command_libraries_when_cancelled(store, isolated, libdir):
    truth = isolated / "truth.json"
    h = rr.Executor("local", store=store, cwd=isolated).submit_command(
        [sys.executable, "-c", _loader(libdir, truth, "time.sleep(120)\n")]
    )
    _wait_for(lambda: truth.exists() and truth.read_text())
    h.cancel()
    rec = _settled(store, h.run_id)
    assert rec.state == rr.RunState.CANCELLED, rec.failure
    _check_libs(rec, truth)


def _fn(libdir: str, truth_file: str, mode: str):
    def load_libs():
        import ctypes
        import json
        import os
        import time

        for n in sorted(LIBS_NAMES):
            ctypes.CDLL(os.path.join(libdir, n))
        with open("/proc/self/maps") as f:
            maps = [ln.split(maxsplit=5)[5].strip() for ln in f if len(ln.split(maxsplit=5)) == 6]
        mine = sorted({p for p in maps if p.startswith(libdir)})
        with open(truth_file, "w") as f:
            f.write(json.dumps({"pid": os.getpid(), "libs": mine}))
        if mode == "raise":
            raise RuntimeError("the model diverged")
        if mode in ("sleep", "cancel"):
            time.sleep(120)
        return 7

    LIBS_NAMES = list(LIBS)
    return load_libs


@pytest.mark.parametrize(
    "mode,state,cause",
    [
        ("return", "succeeded", None),
        ("raise", "failed", "code_error"),
        ("sleep", "failed", "timeout"),
    ],
)
def test_function_libraries_every_outcome(store, isolated, libdir, mode, state, cause):
    truth = isolated / "truth.json"
    ex = rr.Executor(
        "local", store=store, cwd=isolated, timeout_min=(4 / 60 if mode == "sleep" else None)
    )
    h = ex.submit(_fn(str(libdir), str(truth), mode))
    rec = h.wait(timeout=180)
    assert rec.state.value == state, rec.failure
    assert (rec.failure.cause.value if rec.failure else None) == cause
    rt = _check_libs(rec, truth)
    assert rec.node.interpreter.via == "function"
    assert rec.node.interpreter.path == rec.node.job_python
    assert "job process" in rt.sampling.method


def test_function_libraries_when_cancelled(store, isolated, libdir):
    truth = isolated / "truth.json"
    h = rr.Executor("local", store=store, cwd=isolated).submit(
        _fn(str(libdir), str(truth), "cancel")
    )
    _wait_for(lambda: truth.exists() and truth.read_text())
    h.cancel()
    rec = _settled(store, h.run_id)
    assert rec.state == rr.RunState.CANCELLED, rec.failure
    _check_libs(rec, truth)


def _wait_for(fn, timeout=60):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if fn():
            return
        time.sleep(0.1)
    raise AssertionError("timed out waiting for the user's code to load the libraries")


def _settled(store, run_id, timeout=60):
    rec = store.load(run_id)
    end = time.monotonic() + timeout
    while proc.is_alive(rec.process) and time.monotonic() < end:
        time.sleep(0.1)
    time.sleep(0.5)  # the supervisor's record of the job's end is in by now
    return store.load(run_id)
