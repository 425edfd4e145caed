"""``submitit.helpers`` for the drop-in: ``Checkpointable``, ``DelayedSubmission``,
``CommandFunction``, ``FunctionSequence`` (submitit's semantics, runrec's implementation).

A callable with a ``checkpoint`` (or ``__submitit_checkpoint__``) method is checkpointed on a
stop signal and resumed by the next attempt of the same run: ``runrec_cluster.submitit.resume``.
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from runrec_cluster.submitit.errors import FailedJobError
from runrec_cluster.submitit.jobenv import JobEnvironment

__all__ = [
    "Checkpointable",
    "CommandFunction",
    "DelayedSubmission",
    "FunctionSequence",
    "JobEnvironment",
]


class DelayedSubmission:
    """The call ``function(*args, **kwargs)`` to run later: what a ``checkpoint`` method
    returns (the call the next attempt runs instead of the original one)."""

    def __init__(self, function: Callable[..., Any], *args: Any, **kwargs: Any) -> None:
        self.function = function
        self.args = args
        self.kwargs = kwargs
        self._result: Any = None
        self._done = False

    def result(self) -> Any:
        if not self._done:
            self._result = self.function(*self.args, **self.kwargs)
            self._done = True
        return self._result

    def done(self) -> bool:
        return self._done

    def __repr__(self) -> str:
        return f"DelayedSubmission({self.function!r}, *{self.args!r}, **{self.kwargs!r})"


class Checkpointable:
    """Derive a callable class from it: on a time limit (with ``slurm_signal_delay_s``, the
    drop-in's default for these: 90 s) or a preemption, ``checkpoint(*args, **kwargs)`` is
    called with the call's arguments and its ``DelayedSubmission`` (by default: ``self`` in its
    current state, the same arguments) is what the requeued attempt of the same run runs."""

    def __new__(cls, *args: Any, **kwargs: Any) -> Any:
        instance = super().__new__(cls)
        if not callable(instance):
            raise TypeError(
                f"class {cls.__name__} is marked Checkpointable but has no __call__ method; "
                "add one."
            )
        return instance

    def checkpoint(self, *args: Any, **kwargs: Any) -> DelayedSubmission:
        """Resubmit this callable, in its current state, with the same arguments."""
        return DelayedSubmission(self, *args, **kwargs)


class FunctionSequence(Checkpointable):
    """Several calls run in order in one job; returns their results. A checkpoint keeps the
    results so far: the next attempt continues with the first call not done."""

    def __init__(self, verbose: bool = False) -> None:
        self.verbose = verbose
        self.delayed_functions: list[DelayedSubmission] = []

    def add(self, func: Callable[..., Any], *args: Any, **kwargs: Any) -> None:
        self.delayed_functions.append(DelayedSubmission(func, *args, **kwargs))

    def __len__(self) -> int:
        return len(self.delayed_functions)

    def __iter__(self) -> Any:
        return iter(self.delayed_functions)

    def __call__(self) -> list[Any]:
        out = []
        for k, d in enumerate(self.delayed_functions):
            if self.verbose:
                print(f"Computing {k}/{len(self)}", flush=True)
            out.append(d.result())
        return out


class CommandFunction:
    """A command as a function: ``CommandFunction(["which", "python"])()`` runs it and returns
    its stdout (stripped). Positional call arguments are appended, keyword ones as
    ``--key=value``; a non-zero exit raises ``FailedJobError`` with the command's stderr."""

    def __init__(
        self,
        command: list[str],
        verbose: bool = True,
        cwd: str | Path | None = None,
        env: dict[str, str] | None = None,
    ) -> None:
        if not isinstance(command, list):
            raise TypeError("The command must be provided as a list")
        self.command = command
        self.verbose = verbose
        self.cwd = None if cwd is None else str(cwd)
        self.env = env

    def __call__(self, *args: Any, **kwargs: Any) -> str:
        full = self.command + [str(x) for x in args] + [f"--{k}={v}" for k, v in kwargs.items()]
        if self.verbose:
            print(f'The following command is sent: "{" ".join(full)}"', flush=True)
        try:
            p = subprocess.run(
                full, capture_output=True, text=True, cwd=self.cwd, env=self.env, check=False
            )
        except OSError as exc:
            raise FailedJobError(
                f"cannot run {full[0]!r}: {exc.strerror}", run_id="", failure=None
            ) from exc
        stdout, stderr = p.stdout.strip(), p.stderr.strip()
        if self.verbose:
            if stdout:
                print(stdout, flush=True)
            if stderr:
                print(stderr, file=sys.stderr, flush=True)
        if p.returncode:
            err = subprocess.CalledProcessError(p.returncode, full, output=stdout, stderr=stderr)
            raise FailedJobError(stderr, run_id="", failure=None) from err
        return stdout
