"""CUDA-side libraries as loaded, read from ``/proc/PID/maps``: the parsing (one pid or many),
the process tree of a command (its descendants and its session), and ``MapsSampler``, the
thread that samples that tree while the user's code runs and keeps the union.

A library a process mapped is seen only while that process lives: a command's maps are gone
once it exited. So the sampler reads them at the start, shortly after (``SAMPLE_AT``), then
every ``PERIOD_S`` seconds, and once more whenever the job is about to end the command (a
forwarded cancel, runrec's own time limit). What it read, when, and from which pids is
recorded with the libraries (``RuntimeLibs.sampling``).
"""

from __future__ import annotations

import os
import re
import threading
import time
from collections.abc import Iterable
from datetime import UTC, datetime

from runrec_cluster.record import LibSampling, RuntimeLibs

# the file names worth keeping (CUDA runtime and driver, cuDNN, NCCL, NVML)
LIB_MARKERS = ("libcuda", "libcudnn", "libnccl", "libnvidia-ml")
LIB_RES = {
    "cuda_runtime": re.compile(r"^libcudart\.so\.([\d.]*\d)"),
    "cudnn": re.compile(r"^libcudnn\.so\.([\d.]*\d)"),
    "nccl": re.compile(r"^libnccl\.so\.([\d.]*\d)"),
}
SAMPLE_AT = (0.0, 0.05, 0.2, 0.5, 1.0, 2.0, 5.0, 10.0)  # seconds after the start
PERIOD_S = 15.0  # then every this many seconds
MAX_PIDS = 10_000  # pids remembered in the record (a fork bomb must not grow it without end)
MAX_TIMES = 32  # sample times remembered: the first len(SAMPLE_AT), then the latest ones


def mapped_path(line: str) -> str | None:
    """The file a ``/proc/PID/maps`` line maps, or None (anonymous, [heap], [stack]...).

    ``address perms offset dev inode pathname``: the path is everything after the fifth field
    (it may hold spaces); a deleted file ends in `` (deleted)``, which is kept."""
    parts = line.rstrip("\n").split(maxsplit=5)
    if len(parts) < 6 or not parts[5].startswith("/"):
        return None
    return parts[5]


def is_cuda_library(path: str) -> bool:
    """Whether ``path`` is a library worth recording (``LIB_MARKERS`` in its file name)."""
    name = os.path.basename(path)
    return any(name.startswith(k) for k in LIB_MARKERS)


def libraries_in(lines: Iterable[str]) -> set[str]:
    """The CUDA-side libraries mapped in the lines of one maps file."""
    out = set()
    for line in lines:
        p = mapped_path(line)
        if p is not None and is_cuda_library(p):
            out.add(p)
    return out


def read_maps(pid: int | str) -> set[str] | None:
    """The CUDA-side libraries mapped by process ``pid`` ("self" for this one); None when its
    maps cannot be read (gone, or another user's)."""
    try:
        with open(f"/proc/{pid}/maps", encoding="utf-8", errors="replace") as f:
            return libraries_in(f)
    except OSError:
        return None


def versions(paths: Iterable[str]) -> tuple[dict[str, str], dict[str, str]]:
    """({cuda_runtime|cudnn|nccl: version}, {same key: where it came from}) from the file names
    of mapped libraries: ``libcudart.so.12.4.127`` is 12.4.127, ``libcudnn.so.9`` is 9. Two
    versions of one library in the tree are both given ("11.8.89, 12.4.127"), never one
    picked."""
    found: dict[str, dict[str, str]] = {}
    for path in sorted(paths):
        name = os.path.basename(path.removesuffix(" (deleted)"))
        for key, rx in LIB_RES.items():
            m = rx.match(name)
            if m:
                found.setdefault(key, {}).setdefault(m.group(1), path)
    vals = {k: ", ".join(sorted(v, key=_version_key)) for k, v in found.items()}
    src = {
        k: "mapped library " + ", ".join(v[x] for x in sorted(v, key=_version_key))
        for k, v in found.items()
    }
    return vals, src


def _version_key(v: str) -> tuple[int, ...]:
    return tuple(int(x) for x in v.split(".") if x.isdigit())


def _stat_fields(pid: str) -> tuple[int, int] | None:
    """(ppid, session) of ``pid`` from /proc/PID/stat, or None."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            data = f.read()
    except OSError:
        return None
    rest = data[data.rfind(b")") + 2 :].split()  # the name may hold spaces and parentheses
    try:
        return int(rest[1]), int(rest[3])
    except (IndexError, ValueError):
        return None


def process_tree(root: int, *, session: bool = True) -> list[int]:
    """``root`` and every live descendant (by parent pid), and, when ``session``, every process
    of the session ``root`` leads (a command runs in its own session: a daemonized grandchild
    whose parent exited is still found). Sorted, ``root`` first."""
    children: dict[int, list[int]] = {}
    in_session: list[int] = []
    try:
        names = os.listdir("/proc")
    except OSError:
        return [root]
    for name in names:
        if not name.isdigit():
            continue
        f = _stat_fields(name)
        if f is None:
            continue
        pid = int(name)
        children.setdefault(f[0], []).append(pid)
        if session and f[1] == root and pid != root:
            in_session.append(pid)
    out = {root}
    todo = [root]
    while todo:
        for c in children.get(todo.pop(), ()):
            if c not in out:
                out.add(c)
                todo.append(c)
    out.update(in_session)
    return [root] + sorted(out - {root})


class MapsSampler:
    """Samples the CUDA-side libraries mapped by a process tree while it runs, in a daemon
    thread (``SAMPLE_AT``, then every ``PERIOD_S``), and keeps the union.

    ``root``: the command's pid (its session is searched too), or this process's own pid for a
    function run (``session=False``: its children only). ``sample()`` may be called from any
    thread (a cancel, the watchdog) to take one more before the tree is ended; ``stop()`` ends
    the thread; ``runtime()`` gives the union as ``RuntimeLibs``. ``cpu_s`` is the CPU time the
    samples cost (thread time, for the benchmark)."""

    def __init__(self, root: int, *, method: str, session: bool = True) -> None:
        self.root, self.method, self.session = root, method, session
        self.libs: set[str] = set()
        self.pids: set[int] = set()
        self.times: list[datetime] = []
        self.cpu_s = 0.0
        self.unreadable = ""
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="runrec-maps", daemon=True)

    def start(self) -> MapsSampler:
        self._thread.start()
        return self

    def stop(self, *, final: bool = True) -> None:
        """End the sampling thread; ``final``: take one last sample first (what is still alive
        of the tree: a command's daemonized workers, a function's own process)."""
        self._stop.set()
        if self._thread.is_alive() and self._thread is not threading.current_thread():
            self._thread.join(5.0)
        if final:
            self.sample()

    def sample(self) -> None:
        """Read the maps of every process of the tree now and add them to the union."""
        t0 = time.thread_time()
        pids = process_tree(self.root, session=self.session)
        found: set[str] = set()
        read: list[int] = []
        for pid in pids:
            libs = read_maps(pid)
            if libs is None:
                if pid == self.root and not self.unreadable:
                    self.unreadable = _why_unreadable(pid)
                continue
            read.append(pid)
            found |= libs
        with self._lock:
            self.libs |= found
            if len(self.pids) < MAX_PIDS:
                self.pids.update(read[: MAX_PIDS - len(self.pids)])
            self.times.append(datetime.now(UTC))
            if len(self.times) > MAX_TIMES:  # a long run: keep the start and the latest
                del self.times[len(SAMPLE_AT)]
            self.cpu_s += time.thread_time() - t0

    def _loop(self) -> None:
        start = time.monotonic()
        for at in SAMPLE_AT:
            if self._stop.wait(max(0.0, start + at - time.monotonic())):
                return
            self.sample()
        while not self._stop.wait(PERIOD_S):
            self.sample()

    def runtime(self, base: RuntimeLibs | None = None) -> RuntimeLibs:
        """The union so far as ``RuntimeLibs`` (with ``sampling``); values ``base`` already has
        (asked of a framework in the process: torch, cupy) are kept."""
        with self._lock:
            libs, pids, times = set(self.libs), sorted(self.pids), list(self.times)
        return merge_runtime(
            base,
            libs,
            LibSampling(
                method=self.method,
                times=times,
                pids=pids,
                unknown=None
                if pids
                else (
                    self.unreadable
                    or "no process of the tree was alive "
                    "when sampled (it ended before the first sample)"
                ),
            ),
        )


def merge_runtime(base: RuntimeLibs | None, libs: set[str], sampling: LibSampling) -> RuntimeLibs:
    """``base`` with the libraries ``libs`` added: versions from their names where ``base`` has
    none, ``loaded_libraries`` the union, ``sampling`` set."""
    base = base or RuntimeLibs()
    vals, src = versions(libs)
    sources = dict(base.sources)
    picked = {}
    for key in LIB_RES:
        mine = getattr(base, key)
        if mine is None and key in vals:
            picked[key] = vals[key]
            sources[key] = src[key]
        else:
            picked[key] = mine
    return RuntimeLibs(
        cuda_runtime=picked["cuda_runtime"],
        cudnn=picked["cudnn"],
        nccl=picked["nccl"],
        frameworks=dict(base.frameworks),
        sources=sources,
        loaded_libraries=sorted(set(base.loaded_libraries) | libs),
        sampling=sampling,
    )


def _why_unreadable(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/maps", encoding="utf-8", errors="replace") as f:
            f.readline()
    except OSError as exc:
        return f"cannot read /proc/{pid}/maps: {exc.strerror or exc}"
    return ""
