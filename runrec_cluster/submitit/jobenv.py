"""``JobEnvironment`` inside a job: ranks, ids and the node, from Slurm's variables (defaults
for a local or debug job: one task, rank 0), plus the runrec run and its attempt."""

from __future__ import annotations

import os
import socket

from runrec_cluster.job.run import current_run


class JobEnvironment:
    """submitit's ``JobEnvironment`` for a job the drop-in started (any cluster)."""

    def __repr__(self) -> str:
        return (
            f"JobEnvironment(job_id={self.job_id}, run_id={self.run_id}, "
            f"hostname={self.hostname}, local_rank={self.local_rank}({self.num_tasks}), "
            f"node={self.node}({self.num_nodes}), global_rank={self.global_rank}"
            f"({self.num_tasks}))"
        )

    @property
    def cluster(self) -> str:
        return "slurm" if "SLURM_JOB_ID" in os.environ else "local"

    @property
    def hostname(self) -> str:
        return socket.gethostname()

    @property
    def job_id(self) -> str:
        env = os.environ
        if env.get("SLURM_ARRAY_JOB_ID"):
            return f"{env['SLURM_ARRAY_JOB_ID']}_{env.get('SLURM_ARRAY_TASK_ID', '0')}"
        return env.get("SLURM_JOB_ID") or (self.run_id or "")

    @property
    def raw_job_id(self) -> str:
        return os.environ.get("SLURM_JOB_ID") or self.job_id

    @property
    def array_job_id(self) -> str | None:
        return os.environ.get("SLURM_ARRAY_JOB_ID")

    @property
    def array_task_id(self) -> str | None:
        return os.environ.get("SLURM_ARRAY_TASK_ID")

    @property
    def num_tasks(self) -> int:
        return int(os.environ.get("SLURM_NTASKS", "1") or 1)

    @property
    def num_nodes(self) -> int:
        return int(os.environ.get("SLURM_JOB_NUM_NODES", "1") or 1)

    @property
    def node(self) -> int:
        return int(os.environ.get("SLURM_NODEID", "0") or 0)

    @property
    def global_rank(self) -> int:
        return int(os.environ.get("SLURM_PROCID", "0") or 0)

    @property
    def local_rank(self) -> int:
        return int(os.environ.get("SLURM_LOCALID", "0") or 0)

    @property
    def run_id(self) -> str | None:
        """The runrec run this job records (None outside a runrec job)."""
        run = current_run()
        return run.run_id if run is not None else None

    @property
    def attempt(self) -> int:
        """1, then 2, 3... for a requeued run (preemption, checkpoint requeue)."""
        run = current_run()
        return run.attempt if run is not None else 1
