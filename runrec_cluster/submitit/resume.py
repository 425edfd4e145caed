"""submitit's checkpointing as attempts of one runrec run.

A callable with a ``checkpoint`` (or ``__submitit_checkpoint__``) method is submitted wrapped
in ``Resumable``. In the job, ``Resumable`` registers an ``on_stop`` function
(``job.run.Run.on_stop``: SIGTERM of a preemption, a cancel or the time limit; SIGUSR2,
submitit's warning ``slurm_signal_delay_s`` before the limit). It calls the callable's
``checkpoint(*args, **kwargs)`` and writes the ``DelayedSubmission`` it returns (pickled) to
the run's log directory (``CHECKPOINT_FILE``). Slurm requeues the job (a preemption on a
requeueing partition; submitit's own requeue after USR2); the run keeps its id, ``attempt``
goes up, and the next attempt's ``Resumable`` runs the saved call instead of the original.

``Resumable`` carries the wrapped callable as ``__wrapped__`` and its name, so the record's
function name and config (the call's arguments, from the signature) are the callable's own.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from typing import Any

import cloudpickle

from runrec_cluster.job.run import Run, current_run
from runrec_cluster.store import fs

CHECKPOINT_FILE = "submitit-checkpoint.pkl"


def checkpoint_method(fn: Any) -> Callable[..., Any] | None:
    """The callable's checkpoint method, as submitit looks for it (None: not checkpointable)."""
    ck = getattr(fn, "__submitit_checkpoint__", None)
    if ck is None:
        ck = getattr(fn, "checkpoint", None)
    return ck if callable(ck) else None


def checkpoint_path(run: Run) -> str:
    return os.path.join(run.store.log_dir(run.run_id), CHECKPOINT_FILE)


class Resumable:
    """The recorded call of a checkpointable callable (see the module docstring)."""

    def __init__(self, fn: Callable[..., Any]) -> None:
        self.__wrapped__ = fn  # inspect.signature follows it: the config is fn's arguments
        cls = type(fn)
        self.__module__ = getattr(fn, "__module__", None) or cls.__module__
        self.__qualname__ = getattr(fn, "__qualname__", None) or cls.__qualname__
        self.__name__ = getattr(fn, "__name__", None) or cls.__name__

    def __repr__(self) -> str:
        return f"Resumable({self.__wrapped__!r})"

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        fn: Callable[..., Any] = self.__wrapped__
        run = current_run()
        if run is not None:
            path = checkpoint_path(run)
            if run.attempt > 1 and os.path.exists(path):
                with open(path, "rb") as f:
                    fn, args, kwargs = cloudpickle.load(f)
                print(
                    f"runrec: attempt {run.attempt} of run {run.run_id} resumes from the "
                    f"checkpoint saved by the previous attempt ({path})",
                    file=sys.stderr,
                    flush=True,
                )
            state = (fn, args, kwargs)
            run.on_stop(lambda signum: save_checkpoint(run, path, signum, *state))
        return fn(*args, **kwargs)


def save_checkpoint(
    run: Run,
    path: str,
    signum: int,
    fn: Callable[..., Any],
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
) -> None:
    """Call ``fn``'s checkpoint method and save the call it returns for the next attempt. It
    returning None (no requeue wanted) removes an older checkpoint: the next attempt, if Slurm
    requeues anyway, starts the original call again."""
    ck = checkpoint_method(fn)
    if ck is None:
        return
    delayed = ck(*args, **kwargs)
    if delayed is None:
        if os.path.exists(path):
            os.unlink(path)
        print(f"runrec: checkpoint of run {run.run_id} returned None", file=sys.stderr, flush=True)
        return
    data = cloudpickle.dumps((delayed.function, delayed.args, delayed.kwargs))
    fs.makedirs(os.path.dirname(path))
    fs.write_atomic(path, data, fsync=True)
    print(
        f"runrec: signal {signum}: saved the checkpoint of run {run.run_id} (attempt "
        f"{run.attempt}) to {path}",
        file=sys.stderr,
        flush=True,
    )
