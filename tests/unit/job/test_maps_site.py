"""The at-exit maps hook (job/maps_site.py) run for real in interpreters the test starts with it
on PYTHONPATH, as the job does, and RunLibs' early ``libraries`` versions on a real store and
real processes. Ground truth: what each process itself read of its own /proc/self/maps."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time

import pytest
from helpers import build_fake_libs

from runrec_cluster.capture import maps
from runrec_cluster.job import argparse_site, libs, maps_site
from runrec_cluster.record import NodeInfo
from runrec_cluster.store import layout

NAMES = ("libcudart.so.12.4.127", "libnccl.so.2")


@pytest.fixture(scope="module")
def fakelibs(tmp_path_factory):
    d = tmp_path_factory.mktemp("libs")
    build_fake_libs(d, NAMES)
    return d


def _loader(libdir, truth, tail=""):
    """Load the fake libraries, write the pid and the mapped paths (the process's own maps)."""
    return (
        "import ctypes, json, os, sys\n"
        f"for n in {list(NAMES)!r}:\n"
        f"    ctypes.CDLL(os.path.join({str(libdir)!r}, n))\n"
        "mine = sorted({l.split(maxsplit=5)[5].strip() for l in open('/proc/self/maps')\n"
        f"        if len(l.split(maxsplit=5)) == 6 and l.split(maxsplit=5)[5].startswith({str(libdir)!r})}})\n"
        f"json.dump({{'pid': os.getpid(), 'libs': mine}}, open({str(truth)!r}, 'w'))\n" + tail
    )


def _hook_env(tmp_path, *, extra_path=None):
    """A private directory holding the hook as sitecustomize.py, as RunLibs.prepare_command."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    if extra_path:
        env["PYTHONPATH"] = str(extra_path)
    r = libs.RunLibs(NodeInfo(hostname="h"))
    r.prepare_command(env)
    assert r.exit_dir and env[maps_site.ENV_DIR] == r.exit_dir
    return r, env


def test_markers_and_header_match_the_readers():
    assert maps_site.MARKERS == maps.LIB_MARKERS
    assert maps_site.HEADER == maps.EXIT_MAPS_HEADER


@pytest.mark.parametrize(
    "tail,rc",
    [("", 0), ("sys.exit(3)\n", 3), ("raise ValueError('boom')\n", 1)],
    ids=["exit0", "sys.exit", "uncaught"],
)
def test_a_python_process_reports_its_maps_at_exit(fakelibs, tmp_path, tail, rc):
    r, env = _hook_env(tmp_path)
    truth = tmp_path / "truth.json"
    p = subprocess.run([sys.executable, "-c", _loader(fakelibs, truth, tail)], env=env)
    assert p.returncode == rc
    facts = json.loads(truth.read_text())
    got = maps.read_exit_maps(r.exit_dir)
    assert [e.pid for e in got] == [facts["pid"]]
    assert set(facts["libs"]) == set(got[0].libs) and len(facts["libs"]) == len(NAMES)
    assert oct(os.stat(os.path.join(r.exit_dir, f"{facts['pid']}.maps")).st_mode & 0o777) == "0o600"
    r.stop()
    assert not os.path.exists(env[maps_site.ENV_DIR])


def test_without_cuda_libraries_only_the_command_itself_writes(tmp_path):
    """The job's direct child writes its (empty) file: its end was seen; a grandchild that
    mapped nothing writes none. The hook's directory is off sys.path, as without it."""
    r, env = _hook_env(tmp_path)
    code = (
        "import json, os, subprocess, sys\n"
        "subprocess.run([sys.executable, '-c', 'pass'], check=True)\n"
        "print(json.dumps({'pid': os.getpid(), 'path': sys.path}))\n"
    )
    with_hook = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True)
    plain = {k: v for k, v in env.items() if k not in ("PYTHONPATH", maps_site.ENV_DIR)}
    without = subprocess.run([sys.executable, "-c", code], env=plain, capture_output=True)
    assert with_hook.returncode == 0 and with_hook.stderr == b""
    mine = json.loads(with_hook.stdout)
    assert mine["path"] == json.loads(without.stdout)["path"]  # its dir left sys.path
    got = maps.read_exit_maps(r.exit_dir)
    assert [(e.pid, e.libs) for e in got] == [(mine["pid"], frozenset())]
    r.stop()


def test_children_report_too_and_the_sitecustomize_behind_still_runs(fakelibs, tmp_path):
    """argparse capture's sitecustomize first (as the job puts it), the hook next, then the
    user's own sitecustomize: all three run; a Python grandchild reports its maps too."""
    user = tmp_path / "user"
    user.mkdir()
    (user / "sitecustomize.py").write_text(
        "import os\nopen(os.environ['USER_SITE_MARK'] + str(os.getpid()), 'w').close()\n"
    )
    r, env = _hook_env(tmp_path, extra_path=user)
    argv_dir = tmp_path / "argv"
    argv_dir.mkdir()
    shutil.copyfile(argparse_site.__file__, argv_dir / "sitecustomize.py")
    env["PYTHONPATH"] = f"{argv_dir}{os.pathsep}{env['PYTHONPATH']}"
    env[argparse_site.ENV_PATH] = str(argv_dir / "argv.json")
    env[argparse_site.ENV_PPID] = str(os.getpid())
    env["USER_SITE_MARK"] = str(tmp_path / "mark-")
    truth = tmp_path / "truth.json"
    child = tmp_path / "child.py"
    child.write_text(_loader(fakelibs, truth))
    parent = (
        "import argparse, subprocess, sys\n"
        "p = argparse.ArgumentParser(); p.add_argument('--lr', type=float, default=0.1)\n"
        "p.parse_args()\n"
        f"subprocess.run([sys.executable, {str(child)!r}], check=True)\n"
    )
    p = subprocess.run([sys.executable, "-c", parent, "--lr", "0.5"], env=env)
    assert p.returncode == 0
    facts = json.loads(truth.read_text())
    got = {e.pid: e.libs for e in maps.read_exit_maps(r.exit_dir)}
    assert len(got) == 2 and set(got.pop(facts["pid"])) == set(facts["libs"])
    assert list(got.values()) == [frozenset()]  # the command itself mapped none
    doc = json.loads((argv_dir / "argv.json").read_text())
    assert {o["key"]: o["value"] for o in doc["options"]} == {"lr": 0.5}
    assert len(list(tmp_path.glob("mark-*"))) == 2  # the user's sitecustomize, in both
    r.stop()


def test_a_broken_hook_directory_is_silent(fakelibs, tmp_path):
    r, env = _hook_env(tmp_path)
    os.chmod(r.exit_dir, 0o500)  # cannot write there
    try:
        truth = tmp_path / "truth.json"
        p = subprocess.run(
            [sys.executable, "-c", _loader(fakelibs, truth)], env=env, capture_output=True
        )
        assert p.returncode == 0 and p.stderr == b""
    finally:
        os.chmod(r.exit_dir, 0o700)
        r.stop()


def test_off_switch(tmp_path):
    env = {libs.ENV_HOOK_OFF: "0"}
    r = libs.RunLibs(NodeInfo(hostname="h"))
    r.prepare_command(env)
    assert r.exit_dir is None and "PYTHONPATH" not in env and maps_site.ENV_DIR not in env


# -- RunLibs: early versions, the gap note ------------------------------------------------------


def _libraries_versions(store, run_id):
    return [v for v in store.versions(run_id) if v.event == "libraries"]


def _new_run(store):
    rid = layout.new_id()
    store.write_version(rid, "launch", {"run_id": rid, "state": "submitted", "attempt": 1})
    return rid


def _wait(fn, timeout=30):
    end = time.monotonic() + timeout
    while not fn():
        assert time.monotonic() < end, "timed out"
        time.sleep(0.05)


def test_early_versions_once_per_growth_and_the_end_wins(store, fakelibs, tmp_path):
    run_id = _new_run(store)
    code = (
        "import ctypes, time\n"
        f"ctypes.CDLL({str(fakelibs / NAMES[0])!r}); time.sleep(0.8)\n"
        f"ctypes.CDLL({str(fakelibs / NAMES[1])!r}); time.sleep(30)\n"
    )
    p = subprocess.Popen([sys.executable, "-c", code], start_new_session=True)
    r = libs.RunLibs(NodeInfo(hostname="h"), early=(store, run_id))
    try:
        r.start_command(p.pid)
        _wait(lambda: len(_libraries_versions(store, run_id)) >= 2)
        early = _libraries_versions(store, run_id)
        first = early[0].patch["nodes"][0]["runtime"]
        assert first["loaded_libraries"] == [str(fakelibs / NAMES[0])]
        assert "recorded while the run went on" in first["sampling"]["gap"]
        assert first["sampling"]["times"] and p.pid in first["sampling"]["pids"]
        end = r.end_fields()  # while it still runs: a final sample, no gap
    finally:
        os.killpg(p.pid, 9)
        p.wait()
        r.stop()
    store.write_version(run_id, "end", end, role="job")
    time.sleep(0.3)
    assert len(_libraries_versions(store, run_id)) == 2  # none after the end, one per growth
    rt = store.load(run_id).nodes[0].runtime
    assert rt.loaded_libraries == sorted(str(fakelibs / n) for n in NAMES)
    assert rt.sampling.gap is None and rt.sampling.unknown is None


def test_no_early_version_without_cuda_libraries(store):
    run_id = _new_run(store)
    p = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    r = libs.RunLibs(NodeInfo(hostname="h"), early=(store, run_id))
    try:
        r.start_command(p.pid)
        time.sleep(1.2)  # samples at 0, 0.05, 0.2, 0.5, 1 s
        assert len(r.sampler.times) >= 4
    finally:
        p.kill()
        p.wait()
        r.stop()
    assert _libraries_versions(store, run_id) == []


def test_early_versions_are_bounded(store, monkeypatch):
    run_id = _new_run(store)
    r = libs.RunLibs(NodeInfo(hostname="h"), early=(store, run_id))
    r.sampler = maps.MapsSampler(os.getpid(), method="test", session=False)
    for i in range(libs.EARLY_VERSIONS + 3):
        r._grew({f"/x/libcudart.so.{i}"} | {f"/x/libnccl.so.{j}" for j in range(i)})
    r._grew({"/x/libcudart.so.0"})  # not a growth
    assert len(_libraries_versions(store, run_id)) == libs.EARLY_VERSIONS


def test_gap_of_a_process_that_exits_between_samples(fakelibs, tmp_path):
    """A program that is not Python (no at-exit maps): it loads the library after the 0.2 s
    sample and exits before the 0.5 s one; the record says what it could not see."""
    prog = tmp_path / "load"
    src = tmp_path / "load.c"
    src.write_text(
        "#include <dlfcn.h>\n#include <unistd.h>\n"
        "int main(int c, char **v) { usleep(300000); return dlopen(v[1], RTLD_NOW) ? 0 : 1; }\n"
    )
    subprocess.run(["cc", "-o", str(prog), str(src), "-ldl"], check=True)
    p = subprocess.Popen([str(prog), str(fakelibs / NAMES[0])], start_new_session=True)
    s = maps.MapsSampler(p.pid, method="test").start()
    assert p.wait() == 0
    s.stop(final=True)
    rt = s.runtime()
    assert rt.loaded_libraries == [] and rt.sampling.unknown is None
    assert rt.sampling.gap and f"process ({p.pid})" in rt.sampling.gap
    assert "not seen" in rt.sampling.gap
    # its own maps at exit, had it been Python, close the gap
    e = maps.ExitMaps(pid=p.pid, at=rt.sampling.times[-1], libs=frozenset({"/x/libcudart.so.1"}))
    closed = s.runtime(exits=[e])
    assert closed.sampling.gap is None and closed.cuda_runtime == "1"
    assert "at exit" in closed.sampling.method


def test_a_wake_takes_a_sample_out_of_schedule(monkeypatch):
    monkeypatch.setattr(maps, "SAMPLE_AT", (0.0, 600.0))  # nothing else scheduled for 10 min
    s = maps.MapsSampler(os.getpid(), method="test", session=False).start()
    try:
        _wait(lambda: len(s.times) == 1)
        s.wake()
        _wait(lambda: len(s.times) == 2)
    finally:
        s.stop(final=False)


def test_a_ctypes_load_in_a_function_run_wakes_its_sampler(store, fakelibs, monkeypatch):
    import ctypes

    woken = []
    r = libs.RunLibs(NodeInfo(hostname="h"))
    r.start_function()
    try:
        monkeypatch.setattr(r.sampler, "wake", lambda: woken.append(1))
        ctypes.CDLL(str(fakelibs / NAMES[0]))  # the "ctypes.dlopen" audit event
        assert woken
    finally:
        r.stop()
    woken.clear()
    ctypes.CDLL(str(fakelibs / NAMES[0]))
    assert woken == []  # the run ended: the hook is idle


def test_sigterm_with_a_handler_set_takes_a_snapshot_then_calls_it(store, fakelibs):
    """As under submitit (its handler only logs; Slurm's SIGKILL follows) or Ray."""
    import ctypes
    import signal

    run_id = _new_run(store)
    called = []
    old = signal.signal(signal.SIGTERM, lambda signum, frame: called.append(signum))
    r = libs.RunLibs(NodeInfo(hostname="h"), early=(store, run_id))
    try:
        r.start_function()
        restore = libs.record_on_sigterm(store, run_id, r)
        ctypes.CDLL(str(fakelibs / NAMES[1]))
        os.kill(os.getpid(), signal.SIGTERM)
        _wait(lambda: called)
        restore()
        assert called == [signal.SIGTERM]

        # the snapshot writes what is new at once, unless the sampler's thread (woken by the
        # dlopen) is writing that same version at this moment: then that write lands instead,
        # within milliseconds, long before a SIGKILL could follow (KillWait)
        def recorded():
            got = _libraries_versions(store, run_id)
            return (
                got
                and str(fakelibs / NAMES[1])
                in (got[-1].patch["nodes"][0]["runtime"]["loaded_libraries"])
            )

        _wait(recorded, timeout=5)
    finally:
        r.stop()
        signal.signal(signal.SIGTERM, old)
