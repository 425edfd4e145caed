"""What every backend implements. The common work (capture, launch record, handles) is done
once in ``api.Executor``; a backend only launches jobs, reads its scheduler, and cancels.

A backend declares its differences as class attributes (``name``, ``option_prefix``,
``enforces_timeout``) rather than coding them in the shared path.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from runrec_cluster.record import Resources, RunRecord
from runrec_cluster.store import Store


@dataclass
class JobSpec:
    """One run to launch (a sweep passes several at once)."""

    run_id: str
    kind: str  # "function" | "command"
    cwd: str
    log_dir: str
    sweep_index: int | None = None
    env: dict[str, str] = field(default_factory=dict)


class Backend:
    name = "base"
    option_prefix = ""  # backend-only options start with this ("slurm_", "ray_", "local_")
    known_options: frozenset[str] = frozenset()
    enforces_timeout = False  # True when the scheduler kills on time limit itself

    def __init__(
        self, store: Store, resources: Resources, options: dict[str, Any], hardware: Any = None
    ) -> None:
        self.store = store
        self.resources = resources
        self.options = options
        self.hardware = hardware

    def launch(self, jobs: list[JobSpec]) -> list[dict[str, Any]]:
        """Start the jobs; return, per job, what the record keeps under execution.scheduler."""
        raise NotImplementedError

    def check(self, rec: RunRecord) -> dict[str, Any] | None:
        """For a non-terminal record: a patch with the backend's verdict when the job is gone
        without finishing its record (killed, out of memory, node failure...), else None."""
        return None

    def check_many(self, recs: list[RunRecord]) -> dict[str, dict[str, Any]]:
        """``check`` for many records at once: {run_id: patch}. Backends with a scheduler to
        ask override this to ask once."""
        out = {}
        for r in recs:
            patch = self.check(r)
            if patch:
                out[r.run_id] = patch
        return out

    def cancel(self, rec: RunRecord) -> None:
        raise NotImplementedError

    def describe_pending(self, rec: RunRecord) -> str:
        """Why a submitted run has not started, for wait(timeout=...) messages."""
        return "it has not started yet"
