"""CUDA-side libraries as loaded, read from ``/proc/PID/maps``: the parsing (one pid or many),
the process tree of a command (its descendants and its session), and ``MapsSampler``, the
thread that samples that tree while the user's code runs and keeps the union.

A library a process mapped is seen only while that process lives: a command's maps are gone
once it exited. So the sampler reads them at the start, shortly after (``SAMPLE_AT``), then
every ``PERIOD_S`` seconds, and once more whenever the job is about to end the command (a
forwarded cancel, runrec's own time limit). What it read, when, and from which pids is
recorded with the libraries (``RuntimeLibs.sampling``). A process that ended between two
samples may have loaded more: a Python command's own interpreter writes its maps as it exits
(``job/maps_site.py``, read back by ``read_exit_maps``), and where nothing covers the end the
record says so (``LibSampling.gap``). ``on_grow`` lets the job record the libraries as soon as
they appear, so that a run killed without warning still has them.
"""

from __future__ import annotations

import itertools
import os
import re
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime

from runrec_cluster.record import LibSampling, RuntimeLibs

# the file names worth keeping (CUDA runtime and driver, cuDNN, NCCL, NVML)
LIB_MARKERS = ("libcuda", "libcudnn", "libnccl", "libnvidia-ml")
LIB_RES = {
    "cuda_runtime": re.compile(r"^libcudart\.so\.([\d.]*\d)"),
    "cudnn": re.compile(r"^libcudnn\.so\.([\d.]*\d)"),
    "nccl": re.compile(r"^libnccl\.so\.([\d.]*\d)"),
}
# seconds after the start: dense while a program typically loads its libraries (a run killed
# without warning keeps what the last sample before the kill saw: ``job.libs``)
SAMPLE_AT = (0.0, 0.05, 0.1, 0.2, 0.3, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0, 5.0, 7.5, 10.0)
PERIOD_S = 15.0  # then every this many seconds
WAKE_DELAY_S = 0.005  # a sample asked for by wake() (a library being loaded) waits this long
MAX_PIDS = 10_000  # pids remembered in the record (a fork bomb must not grow it without end)
MAX_TIMES = 32  # sample times remembered: the first len(SAMPLE_AT), then the latest ones
EXIT_MAPS_HEADER = "runrec-maps 1"  # first line of an at-exit maps file: "runrec-maps 1 PID TIME"
MAX_EXIT_FILES = 256  # at-exit maps files read per run
MAX_EXIT_BYTES = 1 << 20  # a larger one is not read


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
    maps cannot be read (gone, or another user's) or are empty (a zombie: it has exited, its
    maps are gone with its memory)."""
    try:
        with open(f"/proc/{pid}/maps", encoding="utf-8", errors="replace") as f:
            first = f.readline()
            if not first:
                return None
            return libraries_in(itertools.chain((first,), f))
    except OSError:
        return None


def read_exit_maps(folder: str) -> list[ExitMaps]:
    """The at-exit maps files in ``folder`` (``PID.maps``, written by ``job/maps_site.py``:
    a header line ``runrec-maps 1 PID UNIX_TIME``, then the process's CUDA-side lines of its
    own ``/proc/self/maps``); files that do not read as such are skipped."""
    try:
        names = sorted(n for n in os.listdir(folder) if n.endswith(".maps"))
    except OSError:
        return []
    out = []
    for name in names[:MAX_EXIT_FILES]:
        try:
            path = os.path.join(folder, name)
            if os.path.getsize(path) > MAX_EXIT_BYTES:
                continue
            with open(path, encoding="utf-8", errors="replace") as f:
                head = f.readline().split()
                if head[:2] != EXIT_MAPS_HEADER.split() or len(head) != 4:
                    continue
                pid, at = int(head[2]), datetime.fromtimestamp(float(head[3]), UTC)
                out.append(ExitMaps(pid=pid, at=at, libs=frozenset(libraries_in(f))))
        except (OSError, ValueError, OverflowError):
            continue
    return out


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


@dataclass(frozen=True)
class ExitMaps:
    """What one process wrote of its own ``/proc/self/maps`` as it exited (a Python command's
    at-exit hook, ``job/maps_site.py``): its pid, when, and the libraries."""

    pid: int
    at: datetime
    libs: frozenset[str]


class MapsSampler:
    """Samples the CUDA-side libraries mapped by a process tree while it runs, in a daemon
    thread (``SAMPLE_AT``, then every ``PERIOD_S``), and keeps the union.

    ``root``: the command's pid (its session is searched too), or this process's own pid for a
    function run (``session=False``: its children only). ``sample()`` may be called from any
    thread (a cancel, the watchdog) to take one more before the tree is ended; ``stop()`` ends
    the thread; ``runtime()`` gives the union as ``RuntimeLibs``. ``cpu_s`` is the CPU time the
    samples cost (thread time, for the benchmark). ``on_grow(libs)`` is called in the thread,
    after a sample of its own that found more libraries than before (the union so far)."""

    def __init__(
        self,
        root: int,
        *,
        method: str,
        session: bool = True,
        on_grow: Callable[[set[str]], None] | None = None,
    ) -> None:
        self.root, self.method, self.session, self.on_grow = root, method, session, on_grow
        self.libs: set[str] = set()
        self.pids: set[int] = set()
        self.times: list[datetime] = []
        self.cpu_s = 0.0
        self.unreadable = ""
        self.started = time.monotonic()
        self.root_read_at: float | None = None  # last sample that read the root's maps
        self.root_gone_at: float | None = None  # first sample after that which could not
        self._told = 0  # the union's size on_grow was last told
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._kick = threading.Event()  # set by stop() and wake()
        self._thread = threading.Thread(target=self._loop, name="runrec-maps", daemon=True)

    def start(self) -> MapsSampler:
        self.started = time.monotonic()
        self._thread.start()
        return self

    def stop(self, *, final: bool = True) -> None:
        """End the sampling thread (waiting for a sample or an ``on_grow`` under way); ``final``:
        take one last sample first (what is still alive of the tree: a command's daemonized
        workers, a function's own process)."""
        self._stop.set()
        self._kick.set()
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
        root_ok = False
        for pid in pids:
            libs = read_maps(pid)
            if libs is None:
                if pid == self.root and not self.unreadable:
                    self.unreadable = _why_unreadable(pid)
                continue
            root_ok = root_ok or pid == self.root
            read.append(pid)
            found |= libs
        at = time.monotonic()
        with self._lock:
            self.libs |= found
            if len(self.pids) < MAX_PIDS:
                self.pids.update(read[: MAX_PIDS - len(self.pids)])
            self.times.append(datetime.now(UTC))
            if len(self.times) > MAX_TIMES:  # a long run: keep the start and the latest
                del self.times[len(SAMPLE_AT)]
            if root_ok:
                self.root_read_at, self.root_gone_at = at, None
            elif self.root_gone_at is None:
                self.root_gone_at = at
            self.cpu_s += time.thread_time() - t0

    def union(self) -> set[str]:
        """The libraries seen so far."""
        with self._lock:
            return set(self.libs)

    def wake(self) -> None:
        """Take a sample soon (``WAKE_DELAY_S``), out of schedule: a library is being loaded
        (any thread; the schedule goes on)."""
        self._kick.set()

    def _loop(self) -> None:
        at = self.started
        for step in itertools.chain(SAMPLE_AT, itertools.repeat(None)):
            at = self.started + step if step is not None else at + PERIOD_S
            while (left := at - time.monotonic()) > 0:
                if not self._kick.wait(left):
                    break  # the scheduled time
                self._kick.clear()
                if self._stop.is_set() or self._stop.wait(WAKE_DELAY_S):
                    return
                self._sample_and_tell()  # woken: a library is being loaded
            if self._stop.is_set():
                return
            self._sample_and_tell()

    def _sample_and_tell(self) -> None:
        self.sample()
        if self.on_grow is None:
            return
        with self._lock:
            libs = set(self.libs) if len(self.libs) > self._told else None
            self._told = len(self.libs)
        if libs:
            try:
                self.on_grow(libs)
            except Exception:  # a failed early record never stops the sampling
                pass

    def gap(self, exit_pids: Iterable[int] = ()) -> str | None:
        """Why the union may miss libraries of the root process although it was sampled: it
        ended between two samples (and ``exit_pids``, the processes that gave their own maps
        at exit, do not hold it); None when nothing is missed that way."""
        with self._lock:
            read, gone = self.root_read_at, self.root_gone_at
        if gone is None or self.root in set(exit_pids):
            return None
        end = gone - self.started
        who = f"the command's process ({self.root})"  # a function's never ends first
        if read is None:
            return (
                f"{who} had ended by its first sample ({end:.2f} s after the start): "
                "libraries it loaded are not seen"
            )
        return (
            f"{who} was last sampled {read - self.started:.2f} s after the start and had "
            f"ended by the next sample at {end:.2f} s: libraries it loaded in between are not "
            "seen (it left no maps of its own at exit: not a Python program, killed, or "
            "runrec's at-exit hook off)"
        )

    def runtime(
        self,
        base: RuntimeLibs | None = None,
        exits: Iterable[ExitMaps] = (),
        gap: str | None = None,
    ) -> RuntimeLibs:
        """The union so far as ``RuntimeLibs`` (with ``sampling``); values ``base`` already has
        (asked of a framework in the process: torch, cupy) are kept. ``exits``: the maps
        processes wrote of themselves at exit, added to the union; ``gap``: the note to record
        (default: ``gap()``, the root ended after its last sample)."""
        exits = list(exits)
        with self._lock:
            libs, pids, times = set(self.libs), set(self.pids), list(self.times)
        method = self.method
        if exits:
            for e in exits:
                libs |= e.libs
                pids.add(e.pid)
                times.append(e.at)
            times.sort()
            n = len({e.pid for e in exits})
            method += f"; + /proc/self/maps of {n} Python process{'es' if n > 1 else ''} at exit"
        return merge_runtime(
            base,
            libs,
            LibSampling(
                method=method,
                times=times,
                pids=sorted(pids),
                unknown=None
                if pids
                else (
                    self.unreadable
                    or "no process of the tree was alive when sampled: it ended before the "
                    "first sample and left no maps of its own at exit (not a Python program, "
                    "killed, or runrec's at-exit hook off)"
                ),
                gap=(gap or self.gap(e.pid for e in exits)) if pids else None,
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
    except FileNotFoundError:
        return ""  # gone: said as such (``MapsSampler.runtime``)
    except OSError as exc:
        return f"cannot read /proc/{pid}/maps: {exc.strerror or exc}"
    return ""
