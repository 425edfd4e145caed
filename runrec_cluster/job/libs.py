"""The libraries the user's code loaded, for every outcome: ``RunLibs`` samples the process
tree that runs it (``capture.maps.MapsSampler``) and gives the ``nodes`` patch that carries them
to whichever version ends the run: the end a command or a function writes (succeeded, failed,
raised), the watchdog's (runrec's time limit), a cancel's (the forwarded signal, or SIGTERM to
a function's job process), a rank's own version on ranks above 0.

Two things cover what sampling every so often would miss:

- a run killed without warning (Slurm's SIGKILL after a time limit or a cancel, which
  submitit's SIGTERM handler lets through; ``ray.cancel(force=True)``; a node's OOM killer)
  writes no end: whenever the sampled set grows, the job writes it at once in a ``libraries``
  version (``EARLY_VERSIONS`` at most per run, none while no CUDA-side library appears), with
  ``sampling.gap`` saying it is a snapshot; the end version replaces it with the whole set.
  To see a growth soon: a function run's sampler is woken by a ``ctypes.dlopen`` in its
  process (an audit hook), a SIGTERM that submitit's or Ray's handler receives takes a sample
  first (``record_on_sigterm``);
- a command that loads its libraries and exits between two samples: a Python command reports
  its own maps at exit (``job/maps_site.py`` as its ``sitecustomize``, every Python process of
  the command), merged into the end version; where nothing covers the end of the command's
  process, ``sampling.gap`` says so.

Off switch of the at-exit hook: ``RUNREC_MAPS_HOOK=0`` in the job's environment (the samples
and the early versions stay).
"""

from __future__ import annotations

import os
import shutil
import signal
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Mapping
from typing import Any

import msgspec.structs

from runrec_cluster.capture import determinism
from runrec_cluster.capture import node as nodecap
from runrec_cluster.capture.maps import ExitMaps, MapsSampler, read_exit_maps, read_maps
from runrec_cluster.job import maps_site
from runrec_cluster.record import Determinism, LibSampling, NodeInfo, RuntimeLibs, to_patch
from runrec_cluster.store import Store

COMMAND_METHOD = "/proc/PID/maps of the command's process tree (its descendants and session)"
FUNCTION_METHOD = (
    "/proc/PID/maps of the job process and its children (sampled while it ran; last in a finally)"
)
ENV_HOOK_OFF = "RUNREC_MAPS_HOOK"  # "0": no at-exit maps hook in a Python command
EARLY_VERSIONS = 5  # at most this many ``libraries`` versions per run while it runs
# what the start version says until the libraries are recorded (a run killed before any
# CUDA-side library appeared, or before its code started, keeps it)
NOT_YET = (
    "not recorded yet: the job records the libraries as soon as they appear and when the "
    "user's code ends; a run that ended with this note was stopped before that (killed, or "
    "its code never started), and no CUDA-side library had appeared in its samples"
)
_END_WAIT_S = 10.0  # how long the end waits for an early version being written


def hook_enabled(environ: Mapping[str, str] | None = None) -> bool:
    """Whether a Python command reports its maps at exit (not when ``RUNREC_MAPS_HOOK=0``)."""
    env = os.environ if environ is None else environ
    return env.get(ENV_HOOK_OFF, "").strip().lower() not in ("0", "false", "no", "off")


def not_yet() -> RuntimeLibs:
    """The ``runtime`` of a start version: nothing recorded yet, and why (``NOT_YET``)."""
    return RuntimeLibs(sampling=LibSampling(unknown=NOT_YET))


class RunLibs:
    """The loaded libraries of one run's user code on this node (``node``: the start's facts).
    ``early=(store, run_id)``: record them as soon as they appear (``EARLY_VERSIONS``)."""

    def __init__(
        self,
        node: NodeInfo,
        node_patch: Callable[[NodeInfo], dict[str, Any]] | None = None,
        early: tuple[Store, str] | None = None,
    ) -> None:
        self.node = node
        # how a node entry goes into a patch (``job.execute.node_patch``: its shared facts as
        # the start's context blob, the runtime inline); default: the whole entry inline
        self.node_patch = node_patch or (lambda n: to_patch(nodes=[n]))
        self.sampler: MapsSampler | None = None
        self.function = False
        self.not_sampled = "the user's code did not start"
        self.exit_dir: str | None = None  # where a Python command writes its maps at exit
        self.command_env: Mapping[str, str] | None = None  # the environment a command got
        self.baseline: frozenset[str] = frozenset()  # mapped before the user's code started
        # early versions: a Store of their own (its journal is not shared with other threads)
        self._early = (Store(early[0].root, fsync=early[0].fsync), early[1]) if early else None
        self._early_left = EARLY_VERSIONS
        self._early_size = 0  # libraries (beyond the baseline) the last early version held
        self._ended = False
        self._lock = threading.RLock()  # RLock: a signal handler may end the run meanwhile
        self._writing = threading.RLock()  # held while an early version is written

    def prepare_command(self, env: dict[str, str]) -> None:
        """Before the command starts: put the at-exit maps hook (``job/maps_site.py``) first on
        its ``PYTHONPATH`` in ``env``, unless off (``RUNREC_MAPS_HOOK=0``) or impossible (no
        writable temporary directory: the run goes on without it). Call it before any other
        ``sitecustomize`` is put first (argparse capture's chains to this one)."""
        self.command_env = env  # its determinism variables, read at the end
        if not hook_enabled(env):
            return
        try:
            d = tempfile.mkdtemp(prefix="runrec-maps-")  # mode 0700
            shutil.copyfile(maps_site.__file__, os.path.join(d, "sitecustomize.py"))
        except OSError:
            return
        self.exit_dir = d
        old = env.get("PYTHONPATH")
        env["PYTHONPATH"] = d + (os.pathsep + old if old else "")
        env[maps_site.ENV_DIR] = d
        env[maps_site.ENV_PPID] = str(os.getpid())

    def start_command(self, pid: int) -> None:
        """Sample the command's process tree (``pid`` leads its own session) from now on."""
        self.sampler = MapsSampler(
            pid, method=COMMAND_METHOD, session=True, on_grow=self._grew
        ).start()

    def start_function(self) -> None:
        """Sample this process (which runs the function) and its children from now on; what
        it had mapped already (runrec's own NVML) starts no early version."""
        self.function = True
        self.baseline = frozenset(read_maps("self") or ())
        self.sampler = MapsSampler(
            os.getpid(), method=FUNCTION_METHOD, session=False, on_grow=self._grew
        ).start()
        _wake_on_dlopen(self.sampler)  # a sample right after a ctypes load

    def sample(self) -> None:
        """One more sample now (the tree is about to be ended: a cancel, the time limit)."""
        if self.sampler is not None:
            self.sampler.sample()

    def snapshot(self) -> None:
        """One more sample now, and an early version at once if it found more (a kill may
        follow without warning: Slurm's SIGKILL after SIGTERM and KillWait)."""
        if self.sampler is not None:
            self.sampler.sample()
            self._grew(self.sampler.union())

    def runtime(self, *, final: bool = True, gap: str | None = None) -> RuntimeLibs:
        """The union of the samples and of the maps processes wrote at exit (``final``: the
        thread stopped after one last sample, the at-exit files removed); for a function run's
        end, values its frameworks (torch, cupy) report come first. ``gap``: the note to record
        instead of the sampler's own."""
        with self._lock:
            base = None
            if self.function and final:  # not in the sampler's thread: the user's code may be
                vals, src, frameworks = nodecap.framework_libs()  # importing torch meanwhile
                base = RuntimeLibs(
                    cuda_runtime=vals.get("cuda_runtime"),
                    cudnn=vals.get("cudnn"),
                    nccl=vals.get("nccl"),
                    frameworks=frameworks,
                    sources=src,
                )
            if self.sampler is None:
                return RuntimeLibs(sampling=LibSampling(unknown=self.not_sampled))
            if final:
                self.sampler.stop(final=True)
            exits: list[ExitMaps] = read_exit_maps(self.exit_dir) if self.exit_dir else []
            if final:
                self._remove_exit_dir()
            return self.sampler.runtime(base, exits, gap)

    def end_fields(self, *, final: bool = True) -> dict[str, Any]:
        """``{"nodes": [this node with its runtime libraries]}`` for a version's patch (the list
        item replaces the start's by rank, hostname and scheduler node). Once called, no early
        version is written any more (one under way is waited for: the end comes after it)."""
        self._ended = True
        got = self._writing.acquire(timeout=_END_WAIT_S)
        try:
            runtime = self.runtime(final=final)
        except Exception as exc:  # never lose the outcome for its libraries
            runtime = RuntimeLibs(
                sampling=LibSampling(unknown=f"sampling failed: {type(exc).__name__}: {exc}")
            )
        finally:
            if got:
                self._writing.release()
        return self.node_patch(
            msgspec.structs.replace(self.node, runtime=runtime, determinism=self.determinism())
        )

    def determinism(self) -> Determinism | None:
        """The determinism facts of the user's code (``capture.determinism``): this process's
        for a function, the command's environment for a command; None when it never started."""
        try:
            if self.function:
                return determinism.capture(os.environ, command=False)
            if self.command_env is not None:
                return determinism.capture(self.command_env, command=True)
        except Exception as exc:  # never lose the outcome for these facts
            return Determinism(unknown={"all": f"capture failed: {type(exc).__name__}: {exc}"})
        return None

    def _grew(self, libs: set[str]) -> None:
        """In the sampler's thread: the sampled set grew; beyond what the job process had
        mapped before the user's code started, write it now (``EARLY_VERSIONS`` at most)."""
        size = len(libs - self.baseline)
        if self._early is None or self._ended or size <= self._early_size:
            return
        if self._early_left <= 0 or not self._writing.acquire(blocking=False):
            return
        try:
            if self._ended or self.sampler is None:
                return
            t = time.monotonic() - self.sampler.started
            note = (
                f"recorded while the run went on ({t:.2f} s after its start): the end of the run "
                "records the whole set; a run that ended with this note was killed before that, "
                "so libraries loaded after this sample are not seen"
            )
            fields = self.node_patch(
                msgspec.structs.replace(self.node, runtime=self.runtime(final=False, gap=note))
            )
            store, run_id = self._early
            self._early_left -= 1
            self._early_size = size
            store.write_version(run_id, "libraries", fields, role="job")
        finally:
            self._writing.release()

    def stop(self) -> None:
        if self.sampler is not None:
            if _woken is self.sampler:
                _wake_on_dlopen(None)
            self.sampler.stop(final=False)
        self._remove_exit_dir()

    def _remove_exit_dir(self) -> None:
        if self.exit_dir is not None:
            shutil.rmtree(self.exit_dir, ignore_errors=True)
            self.exit_dir = None


def record_on_sigterm(store: Store, run_id: str, libs: RunLibs) -> Callable[[], None]:
    """A function run ended by SIGTERM (a local cancel, a kill) still records its libraries:
    when SIGTERM has its default action here (the local backend's job process), a handler
    writes them in a version of their own, then lets SIGTERM end the process as it would have.
    Where a handler is set already (submitit's, which only logs while Slurm's SIGKILL follows
    KillWait later; Ray's), ours takes a sample, writes what is new at once (``RunLibs.snapshot``)
    and calls that handler. Returns what puts the previous handler back."""
    if threading.current_thread() is not threading.main_thread():
        return lambda: None
    previous = signal.getsignal(signal.SIGTERM)
    if callable(previous):
        return _chain_sigterm(libs, previous)
    if previous is not signal.SIG_DFL:
        return lambda: None

    def on_term(signum: int, _frame: Any) -> None:
        signal.signal(signum, signal.SIG_DFL)
        try:
            store.write_version(run_id, "libraries", libs.end_fields(), role="job")
        except Exception:
            pass
        os.kill(os.getpid(), signum)

    signal.signal(signal.SIGTERM, on_term)

    def restore() -> None:
        if signal.getsignal(signal.SIGTERM) is on_term:
            signal.signal(signal.SIGTERM, signal.SIG_DFL)

    return restore


def _chain_sigterm(libs: RunLibs, previous: Callable[..., Any]) -> Callable[[], None]:
    def on_term(signum: int, frame: Any) -> None:
        try:
            libs.snapshot()
        except Exception:  # the handler that was there runs whatever happens here
            pass
        previous(signum, frame)

    signal.signal(signal.SIGTERM, on_term)

    def restore() -> None:
        if signal.getsignal(signal.SIGTERM) is on_term:
            signal.signal(signal.SIGTERM, previous)

    return restore


# The sampler of the function run in this process, woken when a library is being loaded
# through ctypes (torch loads its CUDA libraries that way): an audit hook, set once per process
# (it cannot be removed; a reused Ray worker keeps it, idle between runs).
_woken: MapsSampler | None = None
_hooked = False


def _on_audit(event: str, _args: tuple[Any, ...]) -> None:
    if event == "ctypes.dlopen":
        s = _woken
        if s is not None:
            s.wake()


def _wake_on_dlopen(sampler: MapsSampler | None) -> None:
    global _woken, _hooked
    _woken = sampler
    if sampler is not None and not _hooked:
        sys.addaudithook(_on_audit)
        _hooked = True
