"""Issue 13, repro 3 on Ray: a run cancelled with ray.cancel(force=True) after its user code
loaded the CUDA libraries (fake ones built here with `cc`) keeps them in its record, although
the worker (the job process, and with it the command, a child Ray kills too) dies at once and
no end version is written: the job recorded them as soon as they appeared (a ``libraries``
version). The test cancels right after that version is in, so that the kill comes as early as
it can while the fact is recordable; the ground truth is the user process's own
/proc/self/maps, the record is read after the kill."""

import json
import sys
import time

import pytest
from helpers import build_fake_libs, wait_for

import runrec_cluster as rr

pytestmark = pytest.mark.usefixtures("ray_cluster")

LIBS = ("libcudart.so.12.4.127", "libcudnn.so.9", "libnccl.so.2")


@pytest.fixture(scope="module")
def libdir(tmp_path_factory):
    d = tmp_path_factory.mktemp("fakecuda")
    build_fake_libs(d, LIBS)
    return d


def _code(libdir, truth) -> str:
    return (
        "import ctypes, json, os, time\n"
        "time.sleep(0.25)\n"
        f"for n in {list(LIBS)!r}:\n"
        f"    ctypes.CDLL(os.path.join({str(libdir)!r}, n))\n"
        "maps = [l.split(maxsplit=5)[5].strip() for l in open('/proc/self/maps') if len(l.split(maxsplit=5)) == 6]\n"
        f"mine = sorted({{p for p in maps if p.startswith({str(libdir)!r})}})\n"
        f"json.dump({{'pid': os.getpid(), 'libs': mine}}, open({str(truth)!r} + '.tmp', 'w'))\n"
        f"os.replace({str(truth)!r} + '.tmp', {str(truth)!r})\n"
        "time.sleep(300)\n"
    )


def _fn(code: str):
    def user_code():
        exec(code, {})

    return user_code


@pytest.mark.parametrize("entry", ["command", "function"])
def test_force_cancel_right_after_the_libraries_loaded(store, tmp_path, libdir, entry):
    truth = tmp_path / "truth.json"
    ex = rr.Executor(backend="ray", store=store, cwd=tmp_path, ray_resources={"runrec-general": 1})
    code = _code(libdir, truth)
    if entry == "command":
        h = ex.submit_command([sys.executable, "-c", code])
    else:
        h = ex.submit(_fn(code))
    wait_for("the user code to load the libraries", truth.exists, timeout=300, every=0.02)
    wait_for(
        "the job to record the libraries (a `libraries` version)",
        lambda: any(v.event == "libraries" for v in store.versions(h.run_id)),
        timeout=60,
        every=0.01,
    )
    h.cancel()  # this process owns the task: ray.cancel(force=True)
    h.wait(timeout=60)
    time.sleep(2)  # anything still written is in by now
    rec = store.load(h.run_id)
    # Usually the job dies with the worker and writes no end. Ray also kills the worker's
    # children: a command job may see its command die first and write its end in between;
    # either way the record must be cancelled and hold the libraries.
    ended = "end" in [v.event for v in store.versions(h.run_id)]
    assert rec.state == rr.RunState.CANCELLED, rec.failure
    facts = json.loads(truth.read_text())
    assert len(facts["libs"]) == len(LIBS), facts
    rt = rec.node.runtime
    assert rt is not None and rt.sampling is not None, rt
    assert set(facts["libs"]) <= set(rt.loaded_libraries), (facts, rt)
    assert (rt.cuda_runtime, rt.cudnn, rt.nccl) == ("12.4.127", "9", "2"), rt
    assert facts["pid"] in rt.sampling.pids and rt.sampling.unknown is None
    if not ended:  # only the snapshot is there, and it says so
        assert "recorded while the run went on" in rt.sampling.gap
