"""Local backend: every job in its own fresh interpreter on this machine, as on a cluster.

``launch`` starts one detached supervisor process per submission (``python -m
runrec_cluster.backends.local SUPERVISE ...``) that runs the jobs, at most ``local_max_parallel``
at a time (default: the number of CPUs), each as ``python -m runrec_cluster.job.execute STORE RUN_ID``
with stdout and stderr in the store's ``logs/`` directory. The supervisor survives the
submitting process. When a job process dies without finishing its record, the supervisor
records how (signal, exit code); when the supervisor is gone too (``kill -9`` of both, a reboot),
the next reader infers it from the process identities (PID + start time + boot id: PIDs are
reused) and records the run as killed.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from typing import Any

from runrec_cluster.backends.base import Backend, JobSpec
from runrec_cluster.capture import proc
from runrec_cluster.errors import BackendError
from runrec_cluster.record import (
    Failure,
    FailureCause,
    Process,
    RunRecord,
    end_patch,
    signal_failure,
    to_patch,
)
from runrec_cluster.store import Store, fs


class LocalBackend(Backend):
    name = "local"
    option_prefix = "local_"
    known_options = frozenset({"local_max_parallel", "local_python"})
    enforces_timeout = False

    def launch(self, jobs: list[JobSpec]) -> list[dict[str, Any]]:
        if not jobs:
            return []
        python = self.options.get("local_python") or sys.executable
        parallel = int(self.options.get("local_max_parallel") or os.cpu_count() or 1)
        first_log = jobs[0].log_dir
        fs.makedirs(first_log)  # the store's group and mode (a group-shared store)
        args = [
            python,
            "-m",
            "runrec_cluster.backends.local",
            "supervise",
            self.store.root,
            str(parallel),
        ]
        for j in jobs:
            args += [j.run_id, j.cwd, j.log_dir]
        env = dict(os.environ)
        env.update(jobs[0].env)
        try:
            with fs.open_append(os.path.join(first_log, "supervisor.txt")) as log:
                p = subprocess.Popen(
                    args,
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=log,
                    start_new_session=True,
                    env=env,
                    cwd=jobs[0].cwd,
                )
        except OSError as exc:
            raise BackendError(
                f"cannot start the local supervisor {python!r}: {exc.strerror}. Check local_python."
            ) from exc
        ident = proc.identity(p.pid)
        sup = _builtins(ident) if ident else {"pid": p.pid}
        return [{"supervisor": sup} for _ in jobs]

    def ask(self, recs: list[RunRecord]) -> dict[str, dict[str, Any]]:
        """Runs whose job process (or, before it started, supervisor) is gone: killed."""
        out = {}
        for r in recs:
            patch = self._gone(r)
            if patch:
                out[r.run_id] = patch
        return out

    def _gone(self, rec: RunRecord) -> dict[str, Any] | None:
        who: Process | None = rec.process
        what = "job process"
        if who is None:
            sup = (rec.execution.scheduler if rec.execution else {}).get("supervisor")
            if not isinstance(sup, dict) or "start_ticks" not in sup:
                return None
            who = Process(**sup)
            what = "local supervisor (the job had not started)"
        alive = proc.is_alive(who)
        if alive is None or alive:
            return None
        # re-read: the job may have finished between our read and the liveness check
        failure = Failure(
            cause=FailureCause.KILLED,
            type="ProcessGone",
            message=(
                f"the {what} {who.pid} on {who.host} is gone without finishing the record "
                "(killed from outside, e.g. kill -9, out of memory, or the machine rebooted)"
            ),
            source="inferred",
        )
        return end_patch(failure, source="inferred")

    def cancel(self, rec: RunRecord) -> None:
        if rec.process is None:
            raise BackendError(
                f"run {rec.run_id} has not started; nothing to cancel yet. Try again in a moment."
            )
        if proc.is_alive(rec.process):
            try:
                os.killpg(rec.process.pid, signal.SIGTERM)
            except OSError:
                os.kill(rec.process.pid, signal.SIGTERM)
        self.record_cancel(rec)


def _builtins(p: Process) -> dict[str, Any]:
    return {"host": p.host, "pid": p.pid, "start_ticks": p.start_ticks, "boot_id": p.boot_id}


def _supervise(root: str, parallel: int, triples: list[tuple[str, str, str]]) -> int:
    store = Store(root)
    python = sys.executable
    queue = list(triples)
    running: dict[int, tuple[subprocess.Popen[bytes], str, str]] = {}
    while queue or running:
        while queue and len(running) < parallel:
            run_id, cwd, log_dir = queue.pop(0)
            fs.makedirs(log_dir)
            out = fs.open_append(os.path.join(log_dir, "stdout.txt"))
            err = fs.open_append(os.path.join(log_dir, "stderr.txt"))
            try:
                p = subprocess.Popen(
                    [python, "-m", "runrec_cluster.job.execute", root, run_id],
                    cwd=cwd if os.path.isdir(cwd) else None,
                    stdin=subprocess.DEVNULL,
                    stdout=out,
                    stderr=err,
                    start_new_session=True,
                )
            except OSError as exc:
                _end(
                    store,
                    run_id,
                    Failure(
                        cause=FailureCause.INFRASTRUCTURE,
                        type="LaunchError",
                        message=f"cannot start the job process: {exc}",
                        source="backend",
                    ),
                )
                continue
            finally:
                out.close()
                err.close()
            ident = proc.identity(p.pid)
            if ident is not None:
                store.write_version(run_id, "dispatch", to_patch(process=ident), role="backend")
            running[p.pid] = (p, run_id, log_dir)
        time.sleep(0.05)
        for pid, (p, run_id, log_dir) in list(running.items()):
            rc = p.poll()
            if rc is None:
                continue
            del running[pid]
            rec = store.load(run_id, problems=[])
            if rec.state.is_terminal() and rec.state_source != "inferred":
                continue  # the job finished its own record (an inference is improved on below)
            if rc < 0:
                f = signal_failure(-rc, "the job process", source="backend")
            else:
                tail = _tail(os.path.join(log_dir, "stderr.txt"))
                f = Failure(
                    cause=FailureCause.INFRASTRUCTURE,
                    type="JobProcessExit",
                    message=f"the job process exited with code {rc} before finishing its record. Last stderr lines:\n{tail}",
                    exit_code=rc,
                    source="backend",
                )
            _end(store, run_id, f)
    return 0


def _end(store: Store, run_id: str, failure: Failure) -> None:
    store.write_version(run_id, "end", end_patch(failure, source="backend"), role="backend")


def _tail(path: str, n: int = 20) -> str:
    try:
        with open(path, "rb") as f:
            f.seek(0, 2)
            size = f.tell()
            f.seek(max(0, size - 4000))
            return "\n".join(f.read().decode(errors="replace").splitlines()[-n:])
    except OSError:
        return "(no stderr)"


if __name__ == "__main__":
    a = sys.argv[1:]
    if len(a) < 3 or a[0] != "supervise" or (len(a) - 3) % 3:
        print(
            "internal: python -m runrec_cluster.backends.local supervise STORE N (RUN CWD LOG)...",
            file=sys.stderr,
        )
        sys.exit(2)
    sys.exit(_supervise(a[1], int(a[2]), [tuple(a[i : i + 3]) for i in range(3, len(a), 3)]))  # type: ignore[misc]
