"""The end of a Slurm job, recorded from inside its allocation with nobody watching.

A run killed by Slurm (time limit, ``scancel``, preemption, the out-of-memory killer) cannot
write its own end: its process is gone or about to be. Without help its record stays
"running" until someone reads it (``runrec ls/show/wait/reconcile`` ask sacct). So the batch
script submitit writes for a run carries a few lines of ours (``batch_lines``, put first in
submitit's ``setup``): srun runs in the background while the script ``wait``s for it (a
trapped signal interrupts ``wait`` at once, where a foreground srun would hold the trap until
the step is gone), and an EXIT trap (TERM and INT end the script, which runs it) calls

    python -m runrec_cluster.backends.slurm_end STORE RUN_ID... [--signal SIG] [--status N]

on the batch node while the job still exists: ``main`` below. It reads the run's record; a run
that ended with a cause of its own (succeeded, raised, a cancel runrec recorded) is left alone.
Otherwise it asks the scheduler (sacct for the job and its steps, ``scontrol`` for the reason
of a time limit, polled for a moment) and writes the verdict as a ``verdict`` version (state
source ``scheduler``) through ``slurm_states.end_verdict``, the same table the readers use.

It runs inside the kill grace period (KillWait: 30 s by default, 2 s on the test cluster), so
it does little: one record read, one to a few scheduler calls, one version write. What it
cannot see (a node that died, a batch shell killed with SIGKILL) is left to the next read or
``runrec reconcile``: docs/slurm.md, "Nobody watching".
"""

from __future__ import annotations

import os
import shlex
import subprocess
import sys
import time
from typing import Any

from runrec_cluster.backends import slurm_pyslurm
from runrec_cluster.backends.slurm_states import (
    allocation,
    end_verdict,
    parse_sacct,
    parse_scontrol,
    sacct_command,
    state_word,
)
from runrec_cluster.errors import BackendError, RunrecError
from runrec_cluster.record import needs_verdict
from runrec_cluster.store import Store

MODULE = "runrec_cluster.backends.slurm_end"
# Seconds the end script asks the scheduler for before it gives up (the rest is left to the
# next read): after a signal it must be done within KillWait (2 s on the test cluster); after
# srun ended by itself nothing kills it, and the steps' accounting may take a moment.
SIGNALLED_BUDGET_S = 1.5
ENDED_BUDGET_S = 10.0
POLL_S = 0.2


def run_slurm(cmd: list[str], timeout: float = 60) -> str:
    """Run a Slurm command; its stdout, or a BackendError with the command, exit code, stdout
    and stderr."""
    try:
        p = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=False)
    except FileNotFoundError as exc:
        raise BackendError(
            f"{cmd[0]} not found: is this a Slurm login node? Install the Slurm client or use "
            "backend='local'."
        ) from exc
    except subprocess.TimeoutExpired as exc:
        raise BackendError(
            f"{' '.join(cmd)} did not answer in {timeout:g} s; is slurmctld/slurmdbd up?"
        ) from exc
    if p.returncode != 0:
        raise BackendError(
            f"{' '.join(cmd)} exited {p.returncode}\nstdout: {p.stdout.strip()}\n"
            f"stderr: {p.stderr.strip()}"
        )
    return p.stdout


def batch_lines(python: str, store_root: str, run_ids: list[str]) -> list[str]:
    """The lines put first in the batch script's setup: the srun wrapper and the traps that
    run ``main`` at the job's end. ``run_ids``: one per array task, in task order (one run:
    a plain job)."""
    q = shlex.quote
    ids = " ".join(q(r) for r in run_ids)
    end = f"{q(python)} -m {MODULE} {q(store_root)} {ids}"
    return [
        "# runrec: record the job's end from inside the allocation (docs/slurm.md, Nobody watching)",
        "_runrec_signal= _runrec_status=",
        "_runrec_end() { " + end + ' --signal "$_runrec_signal" --status "$_runrec_status" '
        "|| true; }",
        "trap _runrec_end EXIT",
        "trap '_runrec_signal=TERM; exit 143' TERM",
        "trap '_runrec_signal=INT; exit 130' INT",
        # srun in the background: a trapped signal interrupts `wait` at once
        'srun() { command srun "$@" & local p=$!; wait "$p"; local rc=$?; '
        'while ((rc > 128)) && kill -0 "$p" 2>/dev/null; do wait "$p"; rc=$?; done; '
        "_runrec_status=$rc; return $rc; }",
    ]


def _job_id(env: dict[str, str] | os._Environ[str]) -> str:
    if env.get("SLURM_ARRAY_JOB_ID"):
        return f"{env['SLURM_ARRAY_JOB_ID']}_{env.get('SLURM_ARRAY_TASK_ID', '0')}"
    return env.get("SLURM_JOB_ID", "")


class _Asker:
    """The scheduler's answers for one job, counted (the cost figures of docs/slurm.md): through
    sacct and scontrol, or pyslurm (``slurm_pyslurm.use_pyslurm``)."""

    def __init__(self, job_id: str, raw_job_id: str) -> None:
        self.job_id, self.raw_job_id = job_id, raw_job_id
        self.calls = 0
        self.pyslurm = slurm_pyslurm.use_pyslurm()
        self.via = "pyslurm" if self.pyslurm else "sacct"
        self.reason_via = "pyslurm" if self.pyslurm else "scontrol"

    def sacct(self) -> list[dict[str, str]]:
        self.calls += 1
        try:
            if self.pyslurm:
                rows = slurm_pyslurm.accounting([self.job_id])
            else:
                rows = parse_sacct(run_slurm(sacct_command([self.job_id]), timeout=5))
        except BackendError:
            return []
        return rows.get(self.job_id, [])

    def reason(self) -> str:
        self.calls += 1
        if self.pyslurm:
            return slurm_pyslurm.live_reason(self.raw_job_id)
        return self._scontrol().get("Reason", "")

    def allocation(self) -> dict[str, Any] | None:
        """What slurmctld allocated to the job (it still runs: this is its batch script), as
        an ``execution`` patch: ``allocated`` and the requeue count; None when not known."""
        self.calls += 1
        if self.pyslurm:
            try:
                tres, nodes, restarts = slurm_pyslurm.live_allocation(self.raw_job_id)
            except BackendError:
                return None
            alloc = allocation(tres, nodes, "pyslurm")
        else:
            f = self._scontrol()
            # 25.11 says AllocTRES=, 22.05 TRES= (the allocated ones once the job runs)
            tres = f.get("AllocTRES") or f.get("TRES", "")
            alloc = allocation(tres, f.get("NodeList", ""), "scontrol")
            restarts = int(f["Restarts"]) if f.get("Restarts", "").isdigit() else None
        if alloc is None:
            return None
        patch: dict[str, Any] = {"allocated": alloc}
        if restarts is not None:
            patch["scheduler"] = {"requeues": restarts}
        return patch

    def _scontrol(self) -> dict[str, str]:
        try:
            out = run_slurm(["scontrol", "-o", "show", "job", self.raw_job_id], timeout=5)
        except BackendError:
            return {}
        return parse_scontrol(out)


def finish(
    store: Store,
    run_id: str,
    *,
    signalled: bool,
    srun_status: int | None,
    env: dict[str, str] | os._Environ[str] = os.environ,
    budget_s: float | None = None,
) -> str:
    """Record the end of ``run_id``'s Slurm job if the job did not; returns what was done (one
    line for the job's log)."""
    t0 = time.monotonic()
    rec = store.load(run_id)
    job_id = _job_id(env)
    ask = _Asker(job_id, env.get("SLURM_JOB_ID", job_id))
    if not needs_verdict(rec):
        done = f"run {run_id} ended {rec.state.value} (recorded by its {rec.state_source})"
        execution = ask.allocation() if job_id else None
        if execution is None:
            return f"{done}; nothing to add"
        # its end is the job's own; what Slurm allocated to it only Slurm says
        store.write_version(run_id, "allocation", {"execution": execution}, role="backend")
        alloc = execution["allocated"]
        return f"{done}; recorded its allocation ({alloc['tres']}, via {alloc['source']})"
    if budget_s is None:  # no srun status and no signal: the script ended before srun ran
        budget_s = (
            SIGNALLED_BUDGET_S if signalled else ENDED_BUDGET_S if srun_status is not None else 0
        )
    deadline = t0 + budget_s
    status = None if signalled else srun_status
    attempt = int(env.get("SLURM_RESTART_COUNT", "0") or 0) + 1
    reason = ""
    patch: dict[str, Any] | None = None
    while True:
        rows = ask.sacct()
        if signalled and not _job_ended(rows):
            reason = ask.reason()  # a time limit shows here before sacct has it
        # after srun ended by itself, its step's accounting (out of memory) may lag a moment
        if signalled or _steps_ended(rows) or time.monotonic() > deadline:
            patch = end_verdict(
                rec,
                rows,
                job_id=job_id,
                reason=reason,
                srun_status=status,
                nodelist=env.get("SLURM_JOB_NODELIST", ""),
                via=ask.via,
                reason_via=ask.reason_via,
                attempt=attempt,
            )
        if patch is not None or time.monotonic() > deadline:
            break
        time.sleep(POLL_S)
    took = round(time.monotonic() - t0, 3)
    if patch is None:
        return (
            f"run {run_id}: Slurm job {job_id} said nothing final within {budget_s:g} s "
            f"({ask.calls} calls); left to the next read or `runrec reconcile`"
        )
    # the attempt that ended, said in the version itself: a reader of the files alone tells it
    # from the next attempt's (and a job killed before it wrote its start opens its attempt)
    patch["attempt"] = attempt
    patch["execution"]["scheduler"]["end_script"] = {
        "took_s": took,  # from the record read to here
        "process_s": process_age_s(),  # the whole process so far: interpreter, imports, all
        "scheduler_calls": ask.calls,
    }
    store.write_version(run_id, "verdict", patch, role="backend")
    f = patch.get("failure") or {}
    return (
        f"run {run_id}: recorded {patch['state']} ({f.get('cause')}) from Slurm job {job_id} "
        f"in {took} s, {ask.calls} scheduler calls"
    )


def process_age_s() -> float | None:
    """Seconds since this process started (Linux /proc; None elsewhere)."""
    try:
        with open("/proc/self/stat") as f:
            start_ticks = int(f.read().rsplit(")", 1)[1].split()[19])
        with open("/proc/uptime") as f:
            uptime = float(f.read().split()[0])
    except (OSError, ValueError, IndexError):
        return None
    return round(uptime - start_ticks / os.sysconf("SC_CLK_TCK"), 3)


def _job_ended(rows: list[dict[str, str]]) -> bool:
    main = next((r for r in rows if "." not in r["JobID"]), None)
    return main is not None and state_word(main["State"]) not in ("RUNNING", "PENDING", "")


def _steps_ended(rows: list[dict[str, str]]) -> bool:
    """The srun steps (not the batch step, which is this script) have their end in sacct."""
    steps = [
        r for r in rows if "." in r["JobID"] and not r["JobID"].endswith((".batch", ".extern"))
    ]
    return bool(steps) and all(r["End"] not in ("", "Unknown") for r in steps)


def main(argv: list[str] | None = None) -> int:
    """``python -m runrec_cluster.backends.slurm_end STORE RUN_ID... [--signal SIG]
    [--status N]``: run by the batch script's EXIT trap. Always exits 0 (the job's own exit
    status stands); what it did goes to the job's stderr log."""
    args = list(sys.argv[1:] if argv is None else argv)
    opts: dict[str, str] = {}
    for flag in ("--signal", "--status"):
        if flag in args:
            i = args.index(flag)
            opts[flag] = args[i + 1] if i + 1 < len(args) else ""
            del args[i : i + 2]
    if len(args) < 2:
        print(
            f"usage: python -m {MODULE} STORE RUN_ID... [--signal SIG] [--status N]",
            file=sys.stderr,
        )
        return 0
    task = int(os.environ.get("SLURM_ARRAY_TASK_ID", "0") or 0)
    run_ids = args[1:]
    if task >= len(run_ids):
        print(f"runrec: array task {task} has no run among {len(run_ids)}", file=sys.stderr)
        return 0
    status = opts.get("--status", "")
    try:
        line = finish(
            Store(args[0]),
            run_ids[task],
            signalled=bool(opts.get("--signal")),
            srun_status=int(status) if status.isdigit() else None,
        )
    except (RunrecError, OSError) as exc:
        line = f"could not record the end of run {run_ids[task]}: {exc}"
    print(f"runrec: {line}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
