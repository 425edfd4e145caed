"""Detached runs, the submitting side: hand the runs to a runrec driver that Ray Jobs runs on
the cluster (``python -m runrec_cluster.backends.ray.jobdriver STORE RUN_IDS...``), and return.

One driver per submission (a sweep is one submission; more than ``MAX_RUNS_PER_DRIVER`` runs
are split over several drivers, so that the entrypoint stays a short command line). The driver
takes no CPU (``entrypoint_num_cpus=0``) and runs in the user's ``ray_runtime_env``, which its
tasks inherit. Its submission id is ``runrec-<first run id>``, so the record and a person can
find it (``ray job status runrec-...``, ``ray job logs runrec-...``).
"""

from __future__ import annotations

import shlex
from typing import Any

from ray.job_submission import JobSubmissionClient

from runrec_cluster.backends.ray.states import clip
from runrec_cluster.errors import BackendError

DRIVER_MODULE = "runrec_cluster.backends.ray.jobdriver"
MAX_RUNS_PER_DRIVER = 1000


def entrypoint(store_root: str, run_ids: list[str]) -> str:
    """The driver's shell command line (Ray Jobs runs it with the cluster's ``python``)."""
    return shlex.join(["python", "-m", DRIVER_MODULE, store_root, *run_ids])


def submission_id(run_ids: list[str]) -> str:
    """The Ray Jobs submission id of the driver of these runs."""
    return f"runrec-{run_ids[0]}"


def chunks(run_ids: list[str], size: int = MAX_RUNS_PER_DRIVER) -> list[list[str]]:
    """The runs split into one list per driver."""
    return [run_ids[i : i + size] for i in range(0, len(run_ids), size)]


def logs_command(sid: str, url: str) -> str:
    """The command that shows a driver's output."""
    return f"ray job logs {sid} --address {url}"


class DriverSubmitter:
    """A Jobs API client for one dashboard (one HTTP check when made)."""

    def __init__(self, url: str) -> None:
        self.url = url
        try:
            self.client = JobSubmissionClient(url)
        except Exception as exc:
            raise BackendError(
                f"cannot reach the Ray Jobs API at {url}: {type(exc).__name__}: "
                f"{clip(str(exc), 300)}. Is the dashboard up and reachable (port 8265)? Or run "
                "attached with ray_detached=False (the runs then end with this process)."
            ) from exc

    def submit(
        self,
        store_root: str,
        run_ids: list[str],
        runtime_env: dict[str, Any] | None,
        metadata: dict[str, str],
    ) -> str:
        """Submit the driver of ``run_ids``; returns its submission id."""
        sid = submission_id(run_ids)
        try:
            return str(
                self.client.submit_job(
                    entrypoint=entrypoint(store_root, run_ids),
                    entrypoint_num_cpus=0,
                    runtime_env=dict(runtime_env) if runtime_env else None,
                    submission_id=sid,
                    metadata=metadata,
                )
            )
        except Exception as exc:
            raise BackendError(
                f"Ray Jobs at {self.url} refused the runrec driver {sid}: {type(exc).__name__}: "
                f"{clip(str(exc), 500)}"
            ) from exc
