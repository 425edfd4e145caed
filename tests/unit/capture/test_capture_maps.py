"""capture.maps: parsing /proc/PID/maps lines, versions from library names, the process tree
of a command, and the sampler on real processes that load a library built here with cc."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import pytest
from helpers import build_fake_libs

from runrec_cluster.capture import maps
from runrec_cluster.capture.node import runtime_libs


def test_mapped_path_parsing():
    line = "7f00-7f01 r-xp 00000000 08:01 1234    /opt/my libs/libcudart.so.12.4.127\n"
    assert maps.mapped_path(line) == "/opt/my libs/libcudart.so.12.4.127"
    assert maps.mapped_path("7f00-7f01 rw-p 00000000 00:00 0 \n") is None
    assert maps.mapped_path("7f00-7f01 rw-p 00000000 00:00 0    [heap]\n") is None
    deleted = "7f00-7f01 r-xp 0 08:01 9 /tmp/libnccl.so.2 (deleted)\n"
    assert maps.mapped_path(deleted) == "/tmp/libnccl.so.2 (deleted)"
    lines = [
        line,
        deleted,
        "7f06-7f07 r-xp 0 08:01 4 /usr/lib/libc.so.6\n",
        "7f08-7f09 r-xp 0 08:01 5 /usr/lib/libcudnn_ops.so.9.1.0\n",
        "garbage\n",
    ]
    assert maps.libraries_in(lines) == {
        "/opt/my libs/libcudart.so.12.4.127",
        "/tmp/libnccl.so.2 (deleted)",
        "/usr/lib/libcudnn_ops.so.9.1.0",
    }


def test_versions_from_names():
    vals, src = maps.versions(
        [
            "/a/libcudart.so.12.4.127",
            "/a/libcudnn.so.9",
            "/a/libnccl.so.2",
            "/a/libcudnn_ops.so.9.1",
        ]
    )
    assert vals == {"cuda_runtime": "12.4.127", "cudnn": "9", "nccl": "2"}
    assert src["cudnn"] == "mapped library /a/libcudnn.so.9"
    # two runtimes in one tree: both, never one picked
    vals, _ = maps.versions(["/x/libcudart.so.12.4.127", "/y/libcudart.so.11.8.89"])
    assert vals["cuda_runtime"] == "11.8.89, 12.4.127"
    assert maps.versions(["/x/libcudart.so"])[0] == {}


def test_runtime_libs_of_a_maps_file(tmp_path):
    f = tmp_path / "maps"
    f.write_text(
        "7f00-7f01 r-xp 0 08:01 1 /usr/local/cuda/lib64/libcudart.so.12.4.127\n"
        "7f02-7f03 r-xp 0 08:01 2 /opt/lib/libcudnn.so.9\n"
    )
    r = runtime_libs(str(f))
    assert (r.cuda_runtime, r.cudnn, r.nccl) == ("12.4.127", "9", None)
    assert r.sampling is not None and r.sampling.method == str(f)


@pytest.fixture(scope="module")
def fakelib(tmp_path_factory):
    d = tmp_path_factory.mktemp("lib")
    build_fake_libs(d, ["libcudart.so.12.4.127"])
    return d / "libcudart.so.12.4.127"


def _tree(fakelib, tmp_path):
    """sh (session leader) -> python that loads the library and writes its pid, then sleeps."""
    pidfile = tmp_path / "pid"
    code = (
        f"import ctypes, os, time; ctypes.CDLL({str(fakelib)!r}); "
        f"open({str(pidfile)!r}, 'w').write(str(os.getpid())); time.sleep(30)"
    )
    p = subprocess.Popen(
        ["/bin/sh", "-c", f'{sys.executable} -c "{code}"; true'], start_new_session=True
    )
    end = time.monotonic() + 30
    while not (pidfile.exists() and pidfile.read_text()) and time.monotonic() < end:
        time.sleep(0.05)
    return p, int(pidfile.read_text())


def test_process_tree_and_sampler(fakelib, tmp_path):
    p, child = _tree(fakelib, tmp_path)
    try:
        # ground truth of the parent link, from /proc itself
        with open(f"/proc/{child}/stat") as f:
            assert int(f.read().rsplit(")", 1)[1].split()[1]) == p.pid
        assert maps.process_tree(p.pid)[:1] == [p.pid] and child in maps.process_tree(p.pid)
        assert maps.read_maps(child) == {str(fakelib)}
        s = maps.MapsSampler(p.pid, method="test").start()
        time.sleep(0.4)
        s.sample()
    finally:
        os.killpg(p.pid, 9)
        p.wait()
    s.stop(final=True)  # after the tree is gone: the union is kept
    rt = s.runtime()
    assert rt.cuda_runtime == "12.4.127" and rt.loaded_libraries == [str(fakelib)]
    assert {p.pid, child} <= set(rt.sampling.pids)
    assert len(rt.sampling.times) >= 4 and rt.sampling.unknown is None


def test_sampler_of_a_process_that_ended_first():
    p = subprocess.Popen(["/bin/true"], start_new_session=True)
    p.wait()
    s = maps.MapsSampler(p.pid, method="test")
    s.stop(final=True)
    rt = s.runtime()
    assert rt.loaded_libraries == [] and rt.sampling.pids == []
    assert rt.sampling.unknown
