"""Reconcile of finished Slurm jobs through pyslurm against sacct, side by side (issue 18).

On the real Slurm 25.11 cluster of slurm/up25 (its commands first on PATH, its SLURM_CONF):
one array job of N tasks (``true``) runs to its end; a store gets N runs, each pointing at one
task and still open (``running``: as if the job never wrote its end), so every run needs the
scheduler's verdict. Then, alternated way by way (``RUNREC_SLURM_API=cli`` / ``pyslurm``):

  accounting ``SlurmBackend.accounting`` of the N jobs: the scheduler question alone (rows)
  ask        ``SlurmBackend.ask`` of the N open runs in this process: the one accounting call
             (sacct subprocess, or pyslurm's ``db.Jobs.load``) and the N verdicts; warm (pyslurm
             imported and its first call done before timing)
  reconcile  ``runrec reconcile`` on a fresh copy of the store, a new process each time (the
             real command: Python start, imports, pyslurm's import and connection, the reads,
             the call, N verdict versions written); wall time, and its CPU time (user +
             sys of the process and its children: sacct, sinfo), which others' load moves less
  import     ``import pyslurm`` in a fresh interpreter (part of the pyslurm reconcile above)

Both ways must give the same verdicts (checked: state, cause, attempt per run). Prints a
Markdown table; writes DIR/bench_reconcile_pyslurm.json (every sample, the load average).

    python bench/bench_reconcile_pyslurm.py [--n 200] [--reps 5] [--array-id ID] [--quick] [--out DIR]

Skipped (said so, exit 0) where the 25.11 cluster or pyslurm is missing.

``--array-id``: reuse a finished array job of at least N tasks (skips the submission).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

import runrec_cluster as rr
from runrec_cluster.backends import slurm_pyslurm
from runrec_cluster.backends.slurm import SlurmBackend
from runrec_cluster.record import Resources, RunState, to_patch
from runrec_cluster.store import layout

PREFIX = os.environ.get("RUNREC_SLURM25_PREFIX", "/opt/runrec-slurm-25.11.7")
STATE = os.environ.get("RUNREC_SLURM25_STATE", "/var/tmp/runrec-slurm25")  # slurm/env25
SLURM_CONF = os.path.join(STATE, "etc", "slurm.conf")
APIS = ("cli", "pyslurm")


def finished_array(n: int) -> str:
    """Submit an array of n `true` tasks and wait until sacct has every task ended."""
    out = subprocess.run(
        ["sbatch", "--parsable", f"--array=0-{n - 1}", "-c1", "--mem=64M", "-o", "/dev/null"]
        + ["--wrap=true"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    array = out.split(";")[0]
    t0 = time.monotonic()
    while True:
        lines = subprocess.run(
            ["sacct", "-n", "-X", "-P", "-j", array, "--format=JobID,State,End"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.split()
        done = [ln for ln in lines if ln.split("|")[1] == "COMPLETED" and "Unknown" not in ln]
        if len(done) >= n:
            print(
                f"array {array}: {n} tasks done in {time.monotonic() - t0:.0f} s", file=sys.stderr
            )
            return array
        if time.monotonic() - t0 > 900:
            raise SystemExit(f"array {array}: only {len(done)} of {n} tasks done after 900 s")
        time.sleep(2)


def raw_ids(array: str) -> dict[str, str]:
    """ARRAY_i -> the task's own Slurm job id (sacct's JobIDRaw)."""
    out = subprocess.run(
        ["sacct", "-n", "-X", "-P", "-j", array, "--format=JobID,JobIDRaw"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    return dict(line.split("|") for line in out.split())


def make_store(root: str, array: str, n: int) -> list[str]:
    """n open runs, run i on task ARRAY_i, as a started run's record has it (the job id, the
    task's own id: what the submitter and the job's start write)."""
    store = rr.Store(root)
    store.ensure_writable()
    raw = raw_ids(array)
    ids = []
    for i in range(n):
        rid = layout.new_id()
        patch = to_patch(state=RunState.RUNNING, state_source="job")
        job = f"{array}_{i}"
        patch["execution"] = {
            "backend": "slurm",
            "scheduler": {
                "job_id": job,
                "raw_job_id": raw[job],
                "array_job_id": array,
                "array_task_id": i,
            },
        }
        store.write_version(rid, "launch", patch)
        ids.append(rid)
    return ids


def ask_once(store: rr.Store, recs: list, api: str) -> tuple[float, float, dict]:
    """(the accounting call alone, ask: that call and the verdicts, the verdicts)."""
    os.environ["RUNREC_SLURM_API"] = api
    b = SlurmBackend(store, Resources(), {})
    ids = [str(r.execution.scheduler["job_id"]) for r in recs]
    raw = {str(r.execution.scheduler["job_id"]): r.execution.scheduler["raw_job_id"] for r in recs}
    t0 = time.perf_counter()
    b.accounting(ids, raw)
    t1 = time.perf_counter()
    patches = b.ask(recs)
    return t1 - t0, time.perf_counter() - t1, patches


def reconcile_once(master: str, tmp: str, api: str, i: int) -> tuple[float, float, str]:
    copy = os.path.join(tmp, f"store-{api}-{i}")
    shutil.copytree(master, copy)
    runrec = os.path.join(os.path.dirname(sys.executable), "runrec")
    env = {**os.environ, "RUNREC_SLURM_API": api}
    r0 = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    p = subprocess.run(
        [runrec, "reconcile", "--store", copy], capture_output=True, text=True, env=env
    )
    took = time.perf_counter() - t0
    r1 = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (r1.ru_utime - r0.ru_utime) + (r1.ru_stime - r0.ru_stime)  # robust to others' load
    if p.returncode != 0:
        raise SystemExit(f"runrec reconcile ({api}) exited {p.returncode}: {p.stderr[-2000:]}")
    shutil.rmtree(copy)
    return took, cpu, p.stdout.strip().splitlines()[-1]


def import_once() -> float:
    code = "import time; t = time.perf_counter(); import pyslurm; print(time.perf_counter() - t)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return float(out.stdout.split()[-1])


def summary(patches: dict) -> dict:
    return {
        rid: (
            p["state"],
            p["failure"]["cause"],
            p.get("attempt"),
            p["execution"]["allocated"]["cpus"],
        )
        for rid, p in patches.items()
    }


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=200)
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--array-id", default="")
    ap.add_argument("--quick", action="store_true", help="20 jobs, 1 repetition")
    ap.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "results"))
    a = ap.parse_args()
    if a.quick:
        a.n, a.reps = 20, 1
    if not os.path.isfile(os.path.join(PREFIX, "bin", "sbatch")) or not os.path.isfile(SLURM_CONF):
        print(
            f"skipped: no Slurm 25.11 cluster here ({PREFIX}, {SLURM_CONF}); bash slurm/up25 --build"
        )
        return
    if slurm_pyslurm.pyslurm_version() is None:
        print("skipped: pyslurm is not installed (slurm/build25 installs it into the test venv)")
        return
    os.environ["PATH"] = f"{PREFIX}/bin:{os.environ['PATH']}"
    os.environ["SLURM_CONF"] = SLURM_CONF
    load_before = os.getloadavg()
    array = a.array_id or finished_array(a.n)
    samples: dict[str, list[float]] = {}
    with tempfile.TemporaryDirectory(prefix="bench-reconcile-") as tmp:
        master = os.path.join(tmp, "master")
        make_store(master, array, a.n)
        store = rr.Store(master)
        recs = [store.load(r) for r in store.run_ids()]
        verdicts = {}
        for api in APIS:  # warm-up: pyslurm imported, its connection made; verdicts compared
            _, _, patches = ask_once(store, recs, api)
            verdicts[api] = summary(patches)
        assert len(verdicts["cli"]) == a.n, f"sacct judged {len(verdicts['cli'])} of {a.n}"
        assert verdicts["cli"] == verdicts["pyslurm"], "the two ways disagree"
        last = {}
        for i in range(a.reps):
            order = APIS if i % 2 == 0 else APIS[::-1]  # alternated: the same load for both
            for api in order:
                call, took, _ = ask_once(store, recs, api)
                samples.setdefault(f"accounting/{api}", []).append(call)
                samples.setdefault(f"ask/{api}", []).append(took)
            for api in order:
                took, cpu, last[api] = reconcile_once(master, tmp, api, i)
                samples.setdefault(f"reconcile/{api}", []).append(took)
                samples.setdefault(f"reconcile_cpu/{api}", []).append(cpu)
            samples.setdefault("import/pyslurm", []).append(import_once())
            print(f"rep {i}: " + ", ".join(f"{k} {v[-1]:.3f}" for k, v in samples.items()),
                  file=sys.stderr, flush=True)  # fmt: skip
    med = {k: round(statistics.median(v), 4) for k, v in samples.items()}
    print(f"{a.n} finished jobs (array {array}), median of {a.reps}, Slurm 25.11 (slurm/up25)")
    print("| figure (median, s) | sacct (cli) | pyslurm | pyslurm / sacct |")
    print("| --- | --- | --- | --- |")
    for fig in ("accounting", "ask", "reconcile", "reconcile_cpu"):
        c, p = med[f"{fig}/cli"], med[f"{fig}/pyslurm"]
        print(f"| {fig} | {c:.3f} | {p:.3f} | {p / c:.2f} |")
    print(f"| import pyslurm (fresh process) | | {med['import/pyslurm']:.3f} | |")
    print(f"\nruns judged: {a.n}, identical verdicts on both ways; last reconcile said: {last}")
    os.makedirs(a.out, exist_ok=True)
    with open(os.path.join(a.out, "bench_reconcile_pyslurm.json"), "w") as f:
        json.dump(
            {
                "n": a.n,
                "reps": a.reps,
                "array": array,
                "median": med,
                "samples": samples,
                "loadavg_before": load_before,
                "loadavg_end": os.getloadavg(),
            },
            f,
            indent=1,
        )


if __name__ == "__main__":
    main()
