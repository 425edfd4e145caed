"""Issue 13, repro 3, where sampling every so often misses: a command that loads its libraries
and exits between two samples, and a run killed without warning (no end version). Real
processes on the local backend; fake CUDA libraries built here with `cc`; the ground truth is
what the user's process read of its own /proc/self/maps, or the C program's own exit code.

- a short Python command reports its own maps at exit (job/maps_site.py), also with argparse
  capture off, and the record says so (`sampling.method`), with no gap;
- a short program that is not Python (a C program under `sh -c`) cannot: the record says what
  it could not see (`sampling.gap`), never a silent "no CUDA libraries"; so does a Python
  command with the hook turned off (`RUNREC_MAPS_HOOK=0`);
- a function whose job process is killed with SIGKILL keeps the libraries that had appeared
  (the early `libraries` version), and a run killed before any appeared says why none are
  recorded."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time

import pytest
from helpers import build_fake_libs, run_cli

import runrec_cluster as rr
from runrec_cluster.capture import proc
from runrec_cluster.job import libs as joblibs

LIBS = {"libcudart.so.12.4.127": "12.4.127", "libcudnn.so.9": "9", "libnccl.so.2": "2"}
GAP_RE = r"the command's process \(\d+\) (was last sampled|had ended by its first sample).*not seen"


@pytest.fixture(scope="module")
def libdir(tmp_path_factory):
    d = tmp_path_factory.mktemp("fakecuda")
    build_fake_libs(d, LIBS)
    cc = shutil.which("cc") or shutil.which("gcc")
    (d / "load.c").write_text(
        "#include <dlfcn.h>\n#include <stdio.h>\n"
        "int main(int argc, char **argv) {\n"
        "  for (int i = 1; i < argc; i++)\n"
        '    if (!dlopen(argv[i], RTLD_NOW)) { fprintf(stderr, "%s\\n", dlerror()); return 1; }\n'
        "  return 0;\n}\n"
    )
    subprocess.run([cc, "-o", str(d / "load"), str(d / "load.c"), "-ldl"], check=True)
    return d


@pytest.fixture
def isolated(tmp_path, monkeypatch):
    monkeypatch.setenv("RUNREC_CACHE_DIR", str(tmp_path / "cache"))
    return tmp_path


def _short_loader(libdir, truth) -> str:
    """Python source: wait past the 0.2 s sample, load the libraries, write the ground truth
    (pid, its own maps) and exit at once, before the 0.5 s sample."""
    return (
        "import ctypes, json, os, time\n"
        "time.sleep(0.25)\n"
        f"for n in {sorted(LIBS)!r}:\n"
        f"    ctypes.CDLL(os.path.join({str(libdir)!r}, n))\n"
        "maps = [l.split(maxsplit=5)[5].strip() for l in open('/proc/self/maps') if len(l.split(maxsplit=5)) == 6]\n"
        f"mine = sorted({{p for p in maps if p.startswith({str(libdir)!r})}})\n"
        f"json.dump({{'pid': os.getpid(), 'libs': mine}}, open({str(truth)!r}, 'w'))\n"
    )


@pytest.mark.parametrize("off", ["capture_args=False", "RUNREC_CAPTURE_ARGPARSE=0"])
def test_short_python_command_with_argparse_capture_off(store, isolated, libdir, monkeypatch, off):
    truth = isolated / "truth.json"
    kw = {}
    if off == "capture_args=False":
        kw["capture_args"] = False
    else:
        monkeypatch.setenv("RUNREC_CAPTURE_ARGPARSE", "0")
    code = (
        _short_loader(libdir, truth) + "import argparse; argparse.ArgumentParser().parse_args()\n"
    )
    h = rr.Executor("local", store=store, cwd=isolated).submit_command(
        [sys.executable, "-c", code], **kw
    )
    rec = h.wait(timeout=120)
    assert rec.state == rr.RunState.SUCCEEDED, rec.failure
    facts = json.loads(truth.read_text())
    assert len(facts["libs"]) == 3, facts
    rt = rec.node.runtime
    assert (rt.cuda_runtime, rt.cudnn, rt.nccl) == ("12.4.127", "9", "2"), rt
    assert set(facts["libs"]) <= set(rt.loaded_libraries)
    s = rt.sampling
    assert facts["pid"] in s.pids and s.times and s.unknown is None
    assert "/proc/self/maps of 1 Python process at exit" in s.method, s.method
    assert s.gap is None, s.gap  # its own maps at exit cover its end
    assert not any(e.source in ("argv", "default") for e in rec.config.values())  # capture off


@pytest.mark.parametrize("wait", ["", "sleep 0.3; "], ids=["at-once", "after-0.3s"])
def test_short_c_program_under_sh_records_the_gap(store, isolated, libdir, wait):
    """Not Python: no maps at exit. The program dlopens the fake library and exits at once,
    right away (before the first sample, or just after) or after the 0.2 s sample."""
    lib = str(libdir / "libcudart.so.12.4.127")
    cmd = f"{wait}{libdir / 'load'} {lib}; exit $?"  # `; exit`: sh stays the command's process
    truth = subprocess.run(["/bin/sh", "-c", cmd], capture_output=True)  # the test's own run
    assert truth.returncode == 0, truth.stderr  # it really loads the library
    h = rr.Executor("local", store=store, cwd=isolated).submit_command(["/bin/sh", "-c", cmd])
    rec = h.wait(timeout=120)
    assert rec.state == rr.RunState.SUCCEEDED, rec.failure
    rt = rec.node.runtime
    s = rt.sampling
    if lib in rt.loaded_libraries:  # a sample happened to see it: then it is right
        assert rt.cuda_runtime == "12.4.127"
        return
    assert rt.cuda_runtime is None
    # never a silent "no CUDA libraries": why the set may be incomplete is recorded
    assert s.gap or s.unknown, s
    if s.unknown:
        assert wait == "" and not s.pids, s  # nothing sampled at all: it ended first
        assert "ended before the first sample" in s.unknown, s.unknown
    else:
        assert re.search(GAP_RE, s.gap), s.gap
        assert s.unknown is None
        shown = run_cli("show", "--store", store.root, rec.run_id).stdout
        assert "may be incomplete" in shown, shown


def test_hook_off_a_short_python_command_records_the_gap(store, isolated, libdir, monkeypatch):
    monkeypatch.setenv(joblibs.ENV_HOOK_OFF, "0")
    truth = isolated / "truth.json"
    h = rr.Executor("local", store=store, cwd=isolated).submit_command(
        [sys.executable, "-c", _short_loader(libdir, truth)]
    )
    rec = h.wait(timeout=120)
    assert rec.state == rr.RunState.SUCCEEDED, rec.failure
    facts = json.loads(truth.read_text())
    s = rec.node.runtime.sampling
    assert "at exit" not in s.method
    if set(facts["libs"]) <= set(rec.node.runtime.loaded_libraries):
        return  # a loaded machine: the 0.5 s sample came before it exited
    assert s.gap and re.search(GAP_RE, s.gap), s


def _fn(libdir: str, truth_file: str, load: bool):
    def user_code():
        import ctypes
        import json
        import os
        import time

        if load:
            for n in sorted(names):
                ctypes.CDLL(os.path.join(libdir, n))
        with open(truth_file + ".tmp", "w") as f:
            f.write(json.dumps({"pid": os.getpid()}))
        os.replace(truth_file + ".tmp", truth_file)
        time.sleep(300)

    names = list(LIBS)
    return user_code


@pytest.mark.parametrize("load", [True, False], ids=["libraries-loaded", "none-loaded"])
def test_function_job_killed_without_warning_keeps_its_libraries(store, isolated, libdir, load):
    """SIGKILL to the job process (as Slurm after KillWait, or ray.cancel(force=True)): no
    finally runs, no end version is written by the job."""
    truth = isolated / "truth.json"
    h = rr.Executor("local", store=store, cwd=isolated).submit(_fn(str(libdir), str(truth), load))
    end = time.monotonic() + 120
    while not truth.exists() and time.monotonic() < end:
        time.sleep(0.1)
    pid = json.loads(truth.read_text())["pid"]
    time.sleep(1.5)  # past the samples at 0.5 and 1 s
    os.kill(pid, signal.SIGKILL)
    rec = _settled(store, h.run_id)
    assert rec.state == rr.RunState.FAILED, rec.state
    rt = rec.node.runtime
    assert rt is not None and rt.sampling is not None
    events = [v.event for v in store.versions(h.run_id)]
    if not load:
        assert "libraries" not in events, events  # nothing appeared: nothing written
        assert rt.loaded_libraries == [] and rt.sampling.unknown == joblibs.NOT_YET
        return
    assert 1 <= events.count("libraries") <= joblibs.EARLY_VERSIONS, events  # once per growth
    assert (rt.cuda_runtime, rt.cudnn, rt.nccl) == ("12.4.127", "9", "2"), rt
    assert pid in rt.sampling.pids and rt.sampling.times and rt.sampling.unknown is None
    assert "recorded while the run went on" in rt.sampling.gap


def _settled(store, run_id, timeout=60):
    rec = store.load(run_id)
    end = time.monotonic() + timeout
    while (proc.is_alive(rec.process) or not rec.state.is_terminal()) and time.monotonic() < end:
        time.sleep(0.2)
        rec = store.load(run_id)
    time.sleep(0.5)
    return store.load(run_id)
