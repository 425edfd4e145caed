"""Inside a job: ``current_run()`` and what a job can add to its own record."""

from __future__ import annotations

import os
import signal
import threading
from collections.abc import Callable, Mapping
from typing import Any

from runrec_cluster.capture import config as cfg
from runrec_cluster.capture.data import Dataset, hash_path
from runrec_cluster.capture.inputs import Artifact, hash_input
from runrec_cluster.capture.redact import check_printable
from runrec_cluster.errors import ConfigError, DatasetError
from runrec_cluster.job.artifacts import artifact_ref
from runrec_cluster.record import ArtifactRef, InputRef, RunRecord, to_patch
from runrec_cluster.store import Store, layout

_current: Run | None = None


class Run:
    """The run this process is executing. Every call appends a version to its record, at once:
    a crash a second later loses nothing that was logged."""

    def __init__(
        self,
        store: Store,
        run_id: str,
        *,
        rank: int = 0,
        pinned: Mapping[str, Any] | None = None,
        attempt: int | None = None,
    ) -> None:
        self.store = store
        self.run_id = run_id
        self.rank = rank
        self._attempt = attempt
        # on_stop callbacks; whether a stop handler is installed; whether they ran already
        self._stop_fns: list[Callable[[int], Any]] = []
        self._stop_installed = False
        self._stopped = False
        # a rerun's generated config values, given back by log_config (None: read when needed)
        self._pinned = dict(pinned) if pinned is not None else None

    def __repr__(self) -> str:
        return f"Run({self.run_id!r}, store={self.store.root!r})"

    @property
    def attempt(self) -> int:
        """Which attempt of the run this is: 1, then 2, 3... after a requeue (a Slurm
        preemption or node failure with requeue, submitit's checkpoint requeue). The run id
        stays; a requeued function starts again from the top, so look for your checkpoint
        when ``attempt > 1`` (``on_stop``)."""
        if self._attempt is None:
            env = os.environ.get("RUNREC_ATTEMPT", "")
            self._attempt = int(env) if env.isdigit() else self.record.attempt
        return self._attempt

    def on_stop(self, fn: Callable[[int], Any]) -> Callable[[int], Any]:
        """Call ``fn(signum)`` when the scheduler asks the job to stop: SIGTERM (a preemption,
        a cancel, a time limit, ``runrec cancel``) or SIGUSR2 (submitit's warning before the
        time limit when ``slurm_signal_delay_s`` > 0). Save a checkpoint there; a requeued run
        finds it (``attempt`` > 1). ``fn`` runs once, in the main thread, before runrec records
        the kill, and has the scheduler's grace period to finish (Slurm: KillWait, 30 s by
        default); the job then ends as it would have. Returns ``fn`` (a decorator too)."""
        if not callable(fn):
            raise ConfigError(f"on_stop needs a function of one argument (the signal), got {fn!r}.")
        self._stop_fns.append(fn)
        if not self._stop_installed:  # a command's own Python: nobody installed it
            if threading.current_thread() is not threading.main_thread():
                raise ConfigError(
                    "on_stop: call it from the main thread (signal handlers are set there)."
                )
            install_stop_handler(self)
        return fn

    def stopping(self, signum: int) -> None:
        """Run the ``on_stop`` functions (once; a second signal does nothing). An exception in
        one is printed and the next one still runs."""
        if self._stopped:
            return
        self._stopped = True
        for fn in list(self._stop_fns):
            try:
                fn(signum)
            except Exception as exc:  # the kill goes on whatever a checkpoint does
                print(f"runrec: on_stop function {fn!r} raised {exc!r}", flush=True)

    @property
    def record(self) -> RunRecord:
        """The run's record as it is now (read from the store)."""
        return self.store.load(self.run_id)

    def log_config(self, values: Mapping[str, Any]) -> dict[str, Any]:
        """Values generated in the job (a drawn seed, a derived size) join the effective config,
        marked ``generated``. Returns the values to use: in a rerun (``runrec rerun``) a key the
        original run generated comes back *pinned* to the original's value (or to a ``--set``
        override), and that is what is recorded; so write ``seed = run.log_config({"seed":
        seed})["seed"]`` and a rerun repeats the original draw. A rerun whose code offered a
        different value records a warning saying so."""
        pinned = self.pinned()
        out = dict(values)
        notes = []
        for k in out:
            if isinstance(k, str) and k in pinned:
                mine = cfg.plain(k, out[k])
                if mine != pinned[k]:
                    notes.append(
                        f"log_config: this rerun generated {k}={mine!r}; the recorded "
                        f"{k}={pinned[k]!r} was returned and recorded (pinned)"
                    )
                out[k] = pinned[k]
        entries = cfg.entries(out, "generated")
        patch = to_patch(config=entries)
        if notes:
            patch["warnings"] = notes
        self.store.write_version(self.run_id, "config", patch, role="job")
        return out

    def pinned(self) -> dict[str, Any]:
        """In a rerun, the generated config values ``log_config`` gives back; else ``{}``."""
        if self._pinned is None:
            try:
                rec = self.store.load(self.run_id)
                self._pinned = dict(rec.rerun.pinned) if rec.rerun is not None else {}
            except Exception:  # a record we cannot read pins nothing
                self._pinned = {}
        return dict(self._pinned)

    def log_metrics(self, values: Mapping[str, Any]) -> None:
        """Summary metrics; a later value of the same key replaces the earlier one."""
        if self.rank != 0:
            return  # the result and metrics come from rank 0
        clean = {}
        for k, v in values.items():
            if not isinstance(k, str):
                raise ConfigError(f"metric name {k!r} is not a string.")
            clean[k] = cfg.plain(k, v)
        self.store.write_version(self.run_id, "metrics", {"metrics": clean}, role="job")

    def log_artifact(self, path: str | os.PathLike[str], name: str | None = None) -> ArtifactRef:
        """Record an output file or directory: its size and content hash, and keep a copy in
        the store up to ``keep_artifacts_max_mb`` (``ArtifactRef.kept``; else ``not_kept``
        says why), which promote and ``rr.Artifact`` use when the file changes later."""
        p = os.fspath(path)
        art_name = name or os.path.basename(os.path.normpath(p))
        if not art_name:
            raise ConfigError(f"artifact name {art_name!r} is not usable; give name='...'.")
        check_printable("artifact name", art_name)
        try:
            res, _ = hash_path(p)
        except DatasetError as exc:
            raise DatasetError(f"artifact {art_name!r}: {exc}") from None
        ref = artifact_ref(self.store, art_name, res)  # with its kept copy (job/artifacts.py)
        self.store.write_version(self.run_id, "artifact", to_patch(artifacts=[ref]), role="job")
        return ref

    def use_input(self, dataset: Dataset | Artifact | str | os.PathLike[str]) -> InputRef:
        """Record an input discovered inside the job: a dataset (hashed now), or another run's
        artifact, ``rr.Artifact("RUN:name")`` (its recorded hash; ``.path`` is where it is)."""
        ref = hash_input(self.store, dataset, added_by="job")
        self.store.write_version(self.run_id, "input", to_patch(inputs=[ref]), role="job")
        return ref


def current_run() -> Run | None:
    """The run this process is executing, or None outside a recorded job.

    In a command job (``submit_command``) the child process finds its run through the
    ``RUNREC_STORE`` and ``RUNREC_RUN_ID`` environment variables.
    """
    global _current
    if _current is not None:
        return _current
    run_id = os.environ.get("RUNREC_RUN_ID")
    root = os.environ.get("RUNREC_STORE")
    if run_id and root and layout.RUN_ID_RE.match(run_id):
        _current = Run(Store(root), run_id, rank=int(os.environ.get("RUNREC_RANK", "0") or 0))
        return _current
    return None


STOP_SIGNALS = (signal.SIGTERM, signal.SIGUSR2)


def install_stop_handler(run: Run) -> Callable[[], None]:
    """Handle the stop signals (``STOP_SIGNALS``) in this process: ``run.stopping(signum)``
    first, then what was there (a handler is called; the default action is taken again; an
    ignored signal stays ignored). ``job.execute`` installs it around a function call, after
    its own handlers, so a checkpoint is saved before the kill is recorded. Returns what puts
    the previous handlers back. Main thread only (else it installs nothing)."""
    if threading.current_thread() is not threading.main_thread():
        return lambda: None
    previous = {sig: signal.getsignal(sig) for sig in STOP_SIGNALS}

    def on_stop(signum: int, frame: Any) -> None:
        run.stopping(signum)
        prev = previous.get(signum)
        if callable(prev):
            prev(signum, frame)
        elif prev in (signal.SIG_DFL, None):
            signal.signal(signum, signal.SIG_DFL)
            os.kill(os.getpid(), signum)

    for sig in STOP_SIGNALS:
        signal.signal(sig, on_stop)
    run._stop_installed = True

    def restore() -> None:
        for sig, prev in previous.items():
            if signal.getsignal(sig) is on_stop and prev is not None:
                signal.signal(sig, prev)
        run._stop_installed = False

    return restore


def set_current(run: Run | None) -> None:
    """Make ``run`` the one ``current_run()`` returns (None: none); ``execute`` sets it."""
    global _current
    _current = run
