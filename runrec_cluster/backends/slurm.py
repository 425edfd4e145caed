"""Slurm backend, through submitit; the scheduler's verdict through sacct, or pyslurm where it
is installed and built for this Slurm (``$RUNREC_SLURM_API``, ``backends/slurm_pyslurm.py``).

Generic resources map to sbatch options: ``timeout_min`` -> ``--time``, ``cpus`` ->
``--cpus-per-task``, ``mem_gb`` -> ``--mem``, ``gpus`` -> ``--gpus-per-node``, ``nodes`` ->
``--nodes`` (one task per node). Slurm-only options carry the ``slurm_`` prefix (see
``SLURM_OPTIONS``). A hardware class's ``slurm`` table supplies partition, constraint and gres
unless the same option is given explicitly.

submitit's default ``--signal=USR2@90`` makes a timed-out job end FAILED (submitit raises inside
the job). We default ``slurm_signal_delay_s`` to 0 so Slurm itself ends it as TIMEOUT and the
verdict is right; pass ``slurm_signal_delay_s=90`` to get submitit's checkpoint behaviour back.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
from datetime import UTC, datetime
from types import ModuleType
from typing import Any

from runrec_cluster.backends import slurm_pyslurm
from runrec_cluster.backends.base import Backend, JobSpec
from runrec_cluster.backends.slurm_end import batch_lines, run_slurm
from runrec_cluster.backends.slurm_states import parse_sacct, sacct_command, verdict
from runrec_cluster.errors import BackendError, ConfigError
from runrec_cluster.job.execute import execute
from runrec_cluster.record import RunRecord, needs_verdict

SLURM_OPTIONS = {
    "slurm_partition": "partition",
    "slurm_constraint": "constraint",
    "slurm_gres": "gres",
    "slurm_account": "account",
    "slurm_qos": "qos",
    "slurm_array_parallelism": "array_parallelism",
    "slurm_exclude": "exclude",
    "slurm_nodelist": "nodelist",
    "slurm_signal_delay_s": "signal_delay_s",
    "slurm_setup": "setup",
    "slurm_srun_args": "srun_args",
    "slurm_additional_parameters": "additional_parameters",
    "slurm_ntasks_per_node": "ntasks_per_node",
    "slurm_exclusive": "exclusive",
    "slurm_requeue": None,  # handled here: --requeue / --no-requeue
    "slurm_extra": None,  # extra sbatch flags: {"flag": value} or ["--flag=value", ...]
    "slurm_python": None,  # handled here: the Python submitit starts on the node (default: this one)
}

HARDWARE_KEYS = ("partition", "constraint", "gres", "account", "qos", "exclude", "nodelist")
KILLED_AGE_S = 3600  # a run ended KILLED longer ago than this: the scheduler has said all it will


def submitit_module() -> ModuleType:
    """submitit, imported on first use of the Slurm backend."""
    try:
        import submitit  # optional heavy dependency: submitit, only when Slurm is used
    except ImportError as exc:
        raise ConfigError(
            "backend 'slurm' needs submitit, which is not importable here "
            f"({exc}). Install it: pip install submitit"
        ) from exc
    return submitit


class SlurmEntry:
    """The callable submitit pickles: runs the recorded job on the compute node."""

    def __init__(self, store_root: str, run_id: str) -> None:
        self.store_root = store_root
        self.run_id = run_id

    def __call__(self) -> Any:
        env = os.environ
        rank = int(env.get("SLURM_PROCID", "0") or 0)
        node_name = env.get("SLURMD_NODENAME", "")
        sched: dict[str, Any] = {
            "job_id": _job_id_from_env(),
            "raw_job_id": env.get("SLURM_JOB_ID"),
            "partition": env.get("SLURM_JOB_PARTITION"),
            "nodelist": env.get("SLURM_JOB_NODELIST"),
            "num_nodes": int(env.get("SLURM_JOB_NUM_NODES", "1") or 1),
        }
        if env.get("SLURM_ARRAY_JOB_ID"):
            sched["array_job_id"] = env["SLURM_ARRAY_JOB_ID"]
            sched["array_task_id"] = int(env.get("SLURM_ARRAY_TASK_ID", "0") or 0)
        attempt = int(env.get("SLURM_RESTART_COUNT", "0") or 0) + 1
        features = node_features(node_name)

        return execute(
            self.store_root,
            self.run_id,
            scheduler=sched if rank == 0 else None,
            rank=rank,
            attempt=attempt,
            enforce_timeout=not SlurmBackend.enforces_timeout,
            features=features,
            node_name=node_name,
        )

    def checkpoint(self, *args: Any, **kwargs: Any) -> Any:
        """On preemption or time limit with signal_delay_s > 0, submitit requeues the same
        callable: the run keeps its id, the attempt counter goes up."""
        return submitit_module().helpers.DelayedSubmission(self)


def _job_id_from_env() -> str | None:
    env = os.environ
    if env.get("SLURM_ARRAY_JOB_ID"):
        return f"{env['SLURM_ARRAY_JOB_ID']}_{env.get('SLURM_ARRAY_TASK_ID', '0')}"
    return env.get("SLURM_JOB_ID")


def node_features(node_name: str) -> list[str]:
    if not node_name or not shutil.which("scontrol"):
        return []
    try:
        out = subprocess.run(
            ["scontrol", "-o", "show", "node", node_name],
            capture_output=True,
            text=True,
            timeout=10,
        ).stdout
    except (OSError, subprocess.TimeoutExpired):
        return []
    for tok in out.split():
        if tok.startswith("AvailableFeatures="):
            v = tok.split("=", 1)[1]
            return [] if v in ("(null)", "") else v.split(",")
    return []


class SlurmBackend(Backend):
    name = "slurm"
    option_prefix = "slurm_"
    known_options = frozenset(SLURM_OPTIONS)
    enforces_timeout = True
    check_interval_s = 3.0  # at most one sacct call per run per 3 s in one process
    asks_after_kill = True  # a bare KILLED may get its cause (out of memory, time limit) from sacct

    def _params(self) -> dict[str, Any]:
        r = self.resources
        p: dict[str, Any] = {"signal_delay_s": 0}
        if r.timeout_min is not None:
            p["time"] = max(1, int(-(-r.timeout_min // 1)))  # whole minutes, rounded up
        if r.cpus is not None:
            p["cpus_per_task"] = int(r.cpus)
        if r.mem_gb is not None:
            p["mem"] = f"{max(1, int(r.mem_gb * 1024))}M"
        if r.gpus:
            p["gpus_per_node"] = int(r.gpus)
        if r.nodes is not None:
            p["nodes"] = int(r.nodes)
            p["ntasks_per_node"] = 1
        hw = self.hardware
        if hw is not None:
            for k, v in hw.slurm.items():
                if k not in HARDWARE_KEYS:
                    raise ConfigError(
                        f"hardware class {hw.name!r}: unknown slurm key {k!r} "
                        f"(use {', '.join(HARDWARE_KEYS)})."
                    )
                p[k] = v
        extra: dict[str, Any] = {}
        for key, val in self.options.items():
            target = SLURM_OPTIONS[key]
            if target is not None:
                p[target] = val
            elif key == "slurm_requeue":
                extra["requeue" if val else "no-requeue"] = True
            elif key == "slurm_extra":
                if isinstance(val, dict):
                    extra.update({k.lstrip("-"): v for k, v in val.items()})
                else:
                    for flag in [val] if isinstance(val, str) else val:
                        k, eq, v = str(flag).lstrip("-").partition("=")
                        extra[k] = v if eq else True
        if extra:
            p["additional_parameters"] = {**p.get("additional_parameters", {}), **extra}
        return p

    def _executor(self, folder: str, name: str, run_ids: list[str]) -> Any:
        submitit = submitit_module()
        if not shutil.which("sbatch"):
            raise BackendError(
                "sbatch not found on PATH: run on a Slurm login node (or bring the local cluster up with slurm/up)."
            )
        python = self.options.get("slurm_python")  # a rerun's recreated environment
        ex = submitit.SlurmExecutor(folder=folder, max_num_timeout=3, python=python or None)
        params = self._params()
        params.setdefault("job_name", name)
        # ours first: the job records its own end when Slurm ends it (slurm_end)
        user_setup = params.get("setup") or []
        if isinstance(user_setup, str):
            user_setup = [user_setup]
        params["setup"] = [*batch_lines(sys.executable, self.store.root, run_ids), *user_setup]
        try:
            ex.update_parameters(**params)
        except (ValueError, TypeError) as exc:
            raise ConfigError(f"invalid Slurm options {params}: {exc}") from exc
        return ex

    def launch(self, jobs: list[JobSpec]) -> list[dict[str, Any]]:
        if not jobs:
            return []
        folder = os.path.join(self.store.root, "slurm", jobs[0].run_id, "%j")
        ex = self._executor(folder, f"runrec-{jobs[0].run_id[:10]}", [j.run_id for j in jobs])
        entries = [SlurmEntry(self.store.root, j.run_id) for j in jobs]
        try:
            if len(jobs) == 1 and jobs[0].sweep_index is None:
                sjobs = [ex.submit(entries[0])]
            else:
                sjobs = ex.submit_array(entries)
        except Exception as exc:  # submitit raises its own errors with sbatch's output
            raise BackendError(f"sbatch refused the job: {exc}") from exc
        out = []
        for sj in sjobs:
            script = str(sj.paths.submission_file)
            try:
                with open(script, "rb") as f:
                    data = f.read()
                digest = "sha256:" + hashlib.sha256(data).hexdigest()
                self.store.put_blob(data)
            except OSError:
                digest = None
            info: dict[str, Any] = {
                "job_id": sj.job_id,
                "submitit_folder": str(sj.paths.folder),
                "batch_script": digest,
                "stdout": str(sj.paths.stdout),
                "stderr": str(sj.paths.stderr),
            }
            if "_" in sj.job_id:
                a, t = sj.job_id.split("_", 1)
                info["array_job_id"], info["array_task_id"] = a, int(t)
            out.append(info)
        return out

    # -- the scheduler's verdict -------------------------------------------------------------

    def sacct(self, job_ids: list[str]) -> dict[str, list[dict[str, str]]]:
        """sacct rows (job and steps) grouped by the job id we recorded."""
        if not job_ids:
            return {}
        return parse_sacct(run_slurm(sacct_command(job_ids)))

    def accounting(
        self, job_ids: list[str], raw_ids: dict[str, str] | None = None
    ) -> tuple[dict[str, list[dict[str, str]]], str]:
        """The jobs' accounting rows (job lines and steps, by attempt) as ``sacct`` gives
        them, and what they were read through: "pyslurm" or "sacct" (``$RUNREC_SLURM_API``).
        ``raw_ids``: job id -> Slurm's own id of an array task, where recorded (pyslurm)."""
        if slurm_pyslurm.use_pyslurm():
            return slurm_pyslurm.accounting(job_ids, raw_ids), "pyslurm"
        return self.sacct(job_ids), "sacct"

    def wants_verdict(self, rec: RunRecord) -> bool:
        jid = rec.execution.scheduler.get("job_id") if rec.execution else None
        if not jid or not needs_verdict(rec):
            return False
        # an old bare KILLED: the scheduler has said all it will
        return not (
            rec.state.is_terminal()
            and rec.ended_at
            and (datetime.now(UTC) - rec.ended_at).total_seconds() > KILLED_AGE_S
        )

    def ask(self, recs: list[RunRecord]) -> dict[str, dict[str, Any]]:
        """One accounting call for all of them (sacct or pyslurm); each run's verdict from its
        job's rows."""
        jobs = {r.run_id: str(r.execution.scheduler["job_id"]) for r in recs if r.execution}
        raw = {
            str(r.execution.scheduler["job_id"]): str(r.execution.scheduler["raw_job_id"])
            for r in recs
            if r.execution and r.execution.scheduler.get("raw_job_id")
        }
        rows, via = self.accounting(list(jobs.values()), raw)
        out = {}
        for r in recs:
            job_rows = rows.get(jobs.get(r.run_id, ""))
            patch = verdict(r, job_rows, via=via) if job_rows else None
            if patch:
                out[r.run_id] = patch
        return out

    def cancel(self, rec: RunRecord) -> None:
        jid = rec.execution.scheduler.get("job_id") if rec.execution else None
        if not jid:
            raise BackendError(f"run {rec.run_id} has no Slurm job id yet; try again in a moment.")
        run_slurm(["scancel", str(jid)])
        self.record_cancel(rec, f"scancel {jid}")

    def describe_pending(self, rec: RunRecord) -> str:
        jid = rec.execution.scheduler.get("job_id") if rec.execution else None
        if not jid:
            return "it has no Slurm job id yet"
        raw = rec.execution.scheduler.get("raw_job_id") if rec.execution else None
        raw = raw or (None if "_" in str(jid) else jid)  # an array task: its own id once started
        if raw and slurm_pyslurm.use_pyslurm():
            out = slurm_pyslurm.pending_text(str(raw))
            return f"Slurm job {jid} is {out or 'no longer in the queue'}"
        try:
            out = run_slurm(["squeue", "-h", "-j", str(jid), "-o", "%T %r"], timeout=15).strip()
        except BackendError:
            return f"Slurm job {jid}"
        return f"Slurm job {jid} is {out or 'no longer in the queue'}"
