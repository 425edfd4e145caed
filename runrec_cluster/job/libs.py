"""The libraries the user's code loaded, for every outcome: ``RunLibs`` samples the process
tree that runs it (``capture.maps.MapsSampler``) and gives the ``nodes`` patch that carries them
to whichever version ends the run: the end a command or a function writes (succeeded, failed,
raised), the watchdog's (runrec's time limit), a cancel's (the forwarded signal, or SIGTERM to
a function's job process), a rank's own version on ranks above 0."""

from __future__ import annotations

import os
import signal
import threading
from collections.abc import Callable
from typing import Any

import msgspec.structs

from runrec_cluster.capture import node as nodecap
from runrec_cluster.capture.maps import MapsSampler
from runrec_cluster.record import LibSampling, NodeInfo, RuntimeLibs, to_patch
from runrec_cluster.store import Store

COMMAND_METHOD = "/proc/PID/maps of the command's process tree (its descendants and session)"
FUNCTION_METHOD = (
    "/proc/PID/maps of the job process and its children (sampled while it ran; last in a finally)"
)


class RunLibs:
    """The loaded libraries of one run's user code on this node (``node``: the start's facts)."""

    def __init__(
        self, node: NodeInfo, node_patch: Callable[[NodeInfo], dict[str, Any]] | None = None
    ) -> None:
        self.node = node
        # how a node entry goes into a patch (``job.execute.node_patch``: its shared facts as
        # the start's context blob, the runtime inline); default: the whole entry inline
        self.node_patch = node_patch or (lambda n: to_patch(nodes=[n]))
        self.sampler: MapsSampler | None = None
        self.function = False
        self.not_sampled = "the user's code did not start"
        self._lock = threading.Lock()

    def start_command(self, pid: int) -> None:
        """Sample the command's process tree (``pid`` leads its own session) from now on."""
        self.sampler = MapsSampler(pid, method=COMMAND_METHOD, session=True).start()

    def start_function(self) -> None:
        """Sample this process (which runs the function) and its children from now on."""
        self.function = True
        self.sampler = MapsSampler(os.getpid(), method=FUNCTION_METHOD, session=False).start()

    def sample(self) -> None:
        """One more sample now (the tree is about to be ended: a cancel, the time limit)."""
        if self.sampler is not None:
            self.sampler.sample()

    def runtime(self, *, final: bool = True) -> RuntimeLibs:
        """The union of the samples (``final``: the thread stopped after one last sample);
        for a function run, values its frameworks (torch, cupy) report come first."""
        with self._lock:
            base = None
            if self.function:
                vals, src, frameworks = nodecap.framework_libs()
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
            return self.sampler.runtime(base)

    def end_fields(self, *, final: bool = True) -> dict[str, Any]:
        """``{"nodes": [this node with its runtime libraries]}`` for a version's patch (the list
        item replaces the start's by rank, hostname and scheduler node)."""
        try:
            runtime = self.runtime(final=final)
        except Exception as exc:  # never lose the outcome for its libraries
            runtime = RuntimeLibs(
                sampling=LibSampling(unknown=f"sampling failed: {type(exc).__name__}: {exc}")
            )
        return self.node_patch(msgspec.structs.replace(self.node, runtime=runtime))

    def stop(self) -> None:
        if self.sampler is not None:
            self.sampler.stop(final=False)


def record_on_sigterm(store: Store, run_id: str, libs: RunLibs) -> Callable[[], None]:
    """A function run ended by SIGTERM (a local cancel, a kill) still records its libraries:
    when SIGTERM has its default action here (the local backend's job process; Ray and
    submitit keep their own handlers), a handler writes them in a version of their own, then
    lets SIGTERM end the process as it would have. Returns what puts the default back."""
    if threading.current_thread() is not threading.main_thread():
        return lambda: None
    if signal.getsignal(signal.SIGTERM) is not signal.SIG_DFL:
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
