"""The Slurm backend's second way to ask the scheduler: pyslurm (Slurm's C API) instead of the
``sacct`` / ``scontrol`` / ``squeue`` subprocesses.

``$RUNREC_SLURM_API`` (``settings.slurm_api``) chooses: ``cli`` the commands, ``pyslurm`` this
module (an error when it cannot be used), ``auto`` (the default) this module where pyslurm is
installed and built for the Slurm whose commands are on PATH, else the commands. pyslurm is
built against one Slurm release (its version is that release's, 25.11.x for Slurm 25.11) and
cannot talk to another: the version check comes before the import, so a pyslurm built for
another Slurm is never loaded (the 22.05 cluster keeps working with it installed).

What it reads, it turns into the rows ``slurm_states.parse_sacct`` gives (``JobID``, ``State``,
``ExitCode``, ``NodeList``, ``End``, ``AllocTRES``..., the job line and its steps, one group
per attempt), so ``slurm_states.verdict`` and ``SACCT_STATES`` stay the one table for both
ways. Submission stays with submitit (sbatch): docs/slurm.md says why.
"""

from __future__ import annotations

import importlib.metadata
import os
import pwd
import subprocess
from datetime import datetime
from types import ModuleType
from typing import Any

from runrec_cluster.errors import BackendError, ConfigError
from runrec_cluster.settings import SLURM_API_VAR, slurm_api

EXTRA_HINT = "pip install 'runrec-cluster[pyslurm]'"
# (PATH, SLURM_CONF) -> the Slurm version of the commands on that PATH ("" when none answered)
_slurm_versions: dict[tuple[str, str], str] = {}


def pyslurm_version() -> str | None:
    """The installed pyslurm's version (= the Slurm release it was built for), read from its
    metadata without importing it; None when it is not installed."""
    try:
        return importlib.metadata.version("pyslurm")
    except importlib.metadata.PackageNotFoundError:
        return None


def slurm_version() -> str:
    """The version of the Slurm commands on PATH (``sinfo -V``: "slurm 25.11.7" -> "25.11.7"),
    asked once per process and PATH / SLURM_CONF; "" when sinfo is missing or does not answer."""
    key = (os.environ.get("PATH", ""), os.environ.get("SLURM_CONF", ""))
    if key not in _slurm_versions:
        try:
            out = subprocess.run(
                ["sinfo", "-V"], capture_output=True, text=True, timeout=10, check=False
            ).stdout
        except (OSError, subprocess.TimeoutExpired):
            out = ""
        words = out.split()
        _slurm_versions[key] = words[-1] if words else ""
    return _slurm_versions[key]


def release(version: str) -> str:
    """A version's release: "25.11.7" -> "25.11" (pyslurm 25.11.x speaks to Slurm 25.11.y)."""
    return ".".join(version.split(".")[:2])


def mismatch() -> str | None:
    """Why pyslurm cannot be used here (not installed, built for another Slurm); None: it can."""
    have = pyslurm_version()
    if have is None:
        return f"pyslurm is not installed (install it with {EXTRA_HINT})"
    slurm = slurm_version()
    if not slurm:
        return f"pyslurm {have} is installed, but no Slurm answered `sinfo -V` on PATH"
    if release(have) != release(slurm):
        return (
            f"pyslurm {have} is built for Slurm {release(have)}, but the Slurm on PATH is "
            f"{slurm} (sinfo -V)"
        )
    return None


def use_pyslurm() -> bool:
    """Whether the Slurm backend reads through pyslurm now (see the module's docstring).
    ConfigError where ``$RUNREC_SLURM_API=pyslurm`` and pyslurm cannot be used."""
    mode = slurm_api()
    if mode == "cli":
        return False
    why = mismatch()
    if why is None:
        return True
    if mode == "auto":
        return False
    raise ConfigError(
        f"{SLURM_API_VAR}=pyslurm, but {why}. Install a pyslurm built against this Slurm "
        f"({EXTRA_HINT}, with SLURM_INCLUDE_DIR and SLURM_LIB_DIR pointing at its include/ and "
        f"lib/; docs/slurm.md), or set {SLURM_API_VAR}=cli (or auto) to use sacct."
    )


def pyslurm_module() -> ModuleType:
    """pyslurm, imported on first use (after ``use_pyslurm`` said yes).

    Slurm's library ``setenv``s SLURM_CONF while pyslurm imports (read_config.c), unseen by
    ``os.environ`` but inherited by every later subprocess: a Slurm of another release run from
    this process (sacct of a 22.05 cluster) would then read 25.11's config and fail ("Insane
    message length"). Where the environment had no SLURM_CONF, it is taken back out."""
    had_conf = "SLURM_CONF" in os.environ
    try:
        import pyslurm  # optional heavy dependency: the pyslurm extra, only on this path
    except ImportError as exc:
        raise ConfigError(
            f"pyslurm {pyslurm_version()} is installed but does not import ({exc}). Reinstall "
            f"it against this Slurm ({EXTRA_HINT}), or set {SLURM_API_VAR}=cli."
        ) from exc
    finally:
        if not had_conf:
            os.unsetenv("SLURM_CONF")
    return pyslurm


# -- reading ----------------------------------------------------------------------------------


def _call(what: str, fn: Any, *args: Any, **kwargs: Any) -> Any:
    """A pyslurm call; its errors as BackendError naming the call and the job ids."""
    try:
        return fn(*args, **kwargs)
    except Exception as exc:  # pyslurm raises RPCError and others from the C API
        raise BackendError(
            f"pyslurm {what} failed: {type(exc).__name__}: {exc}. Is slurmctld/slurmdbd up? "
            f"(or set {SLURM_API_VAR}=cli to use the commands)"
        ) from exc


def accounting(
    job_ids: list[str], raw_ids: dict[str, str] | None = None
) -> dict[str, list[dict[str, str]]]:
    """The accounting rows of these jobs ("123", "123_4"), grouped as ``parse_sacct`` groups
    them. slurmdbd gives pyslurm the latest attempt of each job (no ``sacct -D``): its job
    line carries ``Restarts`` (the requeue count), which ``slurm_states.attempt_rows`` reads
    as the attempt's number. ``raw_ids``: an array task's own job id where known (the job
    records it when it starts): asked by it, else by its array's id (every task comes back)."""
    if not job_ids:
        return {}
    pyslurm = pyslurm_module()
    wanted = set(job_ids)
    raw = raw_ids or {}
    ids = sorted({int(raw.get(j) or j.split("_")[0]) for j in wanted})
    filt = pyslurm.db.JobFilter(ids=ids)
    jobs = _call(f"db.Jobs.load(ids={ids})", pyslurm.db.Jobs.load, filt)
    rows: dict[str, list[dict[str, str]]] = {}
    for job in jobs.values():
        jid = job_id_of(job)
        if jid in wanted:
            rows.setdefault(jid, []).extend(db_job_rows(job, jid))
    return rows


def job_id_of(job: Any) -> str:
    """The id runrec records for a job: "123", an array task "123_4". (pyslurm says None for
    array task 0: it reads 0 as "not set".)"""
    if job.array_id:
        return f"{job.array_id}_{job.array_task_id or 0}"
    return str(job.id)


def db_job_rows(job: Any, job_id: str) -> list[dict[str, str]]:
    """One ``pyslurm.db.Job`` as sacct rows: the job line, then its steps."""
    state = str(job.state or "")
    if state == "CANCELLED" and job.cancelled_by:
        state = f"CANCELLED by {_uid(job.cancelled_by)}"  # sacct's words
    main = {
        "JobID": job_id,
        "JobIDRaw": str(job.id),
        "State": state,
        "ExitCode": f"{job.exit_code or 0}:{job.exit_code_signal or 0}",
        "DerivedExitCode": f"{job.derived_exit_code or 0}:{job.derived_exit_code_signal or 0}",
        "Reason": str(job.state_reason or ""),
        "NodeList": str(job.nodelist or "None assigned"),
        "Start": _time(job.start_time),
        "End": _time(job.end_time),
        "Partition": str(job.partition or ""),
        "AllocTRES": tres_text(job.allocated_tres),
        "Restarts": str(job.requeue_count or 0),
    }
    out = [main]
    for name, step in (job.steps or {}).items():
        out.append(
            {
                "JobID": f"{job_id}.{name}",
                "JobIDRaw": f"{job.id}.{name}",
                "State": str(step.state or ""),
                "ExitCode": f"{step.exit_code or 0}:{step.exit_code_signal or 0}",
                "DerivedExitCode": "",
                "Reason": "",
                "NodeList": str(step.nodelist or ""),
                "Start": _time(step.start_time),
                "End": _time(step.end_time),
                "Partition": "",
                "AllocTRES": "",
            }
        )
    return out


def _uid(user: str) -> str:
    """pyslurm names who cancelled; sacct gives the uid: the uid, where the name is known."""
    try:
        return str(pwd.getpwnam(user).pw_uid)
    except KeyError:
        return user


def tres_text(tres: Any) -> str:
    """pyslurm's ``allocated_tres`` (a ``db.TrackableResources``; None: nothing allocated yet)
    in Slurm's words: "cpu=2,mem=512M,node=1,gres/gpu=1" (memory in MiB)."""
    if tres is None:
        return ""
    parts = []
    for key, res in (("cpu", tres.cpu), ("mem", tres.mem), ("node", tres.node)):
        if res is not None:
            parts.append(f"{key}={res.count}{'M' if key == 'mem' else ''}")
    gres = dict(tres.gres or {})
    gpus = gres["gpu"].count if "gpu" in gres else 0  # "gpu" and "gpu:TYPE" say the same GPUs
    gpus = gpus or sum(g.count for k, g in gres.items() if str(k).startswith("gpu:"))
    if gpus:
        parts.append(f"gres/gpu={gpus}")
    return ",".join(parts)


def _time(ts: Any) -> str:
    """A pyslurm time (seconds since the epoch; None: not yet) as sacct writes it (local)."""
    if not ts:
        return "Unknown"
    return datetime.fromtimestamp(int(ts)).isoformat(timespec="seconds")


def live_job(raw_job_id: str) -> Any:
    """The job as slurmctld knows it now (``pyslurm.Job``); BackendError when it does not."""
    pyslurm = pyslurm_module()
    return _call(f"Job.load({raw_job_id})", pyslurm.Job.load, int(raw_job_id))


def live_reason(raw_job_id: str) -> str:
    """The job's state reason now ("TimeLimit"...): ``scontrol``'s Reason; "" when unknown."""
    try:
        return str(live_job(raw_job_id).state_reason or "")
    except BackendError:
        return ""


def live_allocation(raw_job_id: str) -> tuple[str, str, int]:
    """The job's allocated TRES, its nodes and its requeue count now, from slurmctld."""
    job = live_job(raw_job_id)
    return tres_text(job.allocated_tres), str(job.allocated_nodes or ""), job.requeue_count or 0


def pending_text(raw_job_id: str) -> str:
    """The state and reason ("PENDING Resources") as ``squeue -o '%T %r'`` says it; "" when slurmctld no longer has
    the job."""
    try:
        job = live_job(raw_job_id)
    except BackendError:
        return ""
    return f"{job.state} {job.state_reason or ''}".strip()
