"""Overhead of the submitit drop-in (runrec_cluster.submitit) against bare submitit (issue 16).

Side by side, alternated run by run, on the same machine and cluster:
  local: submitit.LocalExecutor   vs  runrec_cluster.submitit.LocalExecutor (runrec local backend)
  slurm: submitit.AutoExecutor    vs  runrec_cluster.submitit.AutoExecutor  (the real cluster)
Figures (medians of --reps):
  submit   the executor.submit() call, one trivial function (add(5, 7))
  done     from before submit() to result() returned
  array32  map_array over 32 elements: the call, and until every result() returned

Run from a git repository (the drop-in records the code); the store and the submitit folders
go to a temporary directory. Prints a Markdown table and writes DIR/bench_submitit_dropin.json.
Slurm is skipped (said so) where ``srun`` is not on PATH. ``--quick``: one repetition, an array
of 4.

    python bench/bench_submitit_dropin.py [--reps 3] [--backends local,slurm] [--quick] [--out DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
import time

import submitit as bare

import runrec_cluster.submitit as dropin


def add(a: int, b: int) -> int:
    return a + b


def make(kind: str, backend: str, folder: str, store: str):
    if kind == "submitit":
        ex = (
            bare.LocalExecutor(folder=folder)
            if backend == "local"
            else bare.AutoExecutor(folder=folder, cluster="slurm")
        )
    else:
        ex = (
            dropin.LocalExecutor(folder=folder, runrec_store=store)
            if backend == "local"
            else dropin.AutoExecutor(folder=folder, cluster="slurm", runrec_store=store)
        )
    ex.update_parameters(timeout_min=5)
    return ex


def one(kind: str, backend: str, tmp: str, i: int, n: int) -> dict[str, float]:
    ex = make(kind, backend, os.path.join(tmp, f"{kind}-{backend}-{i}"), os.path.join(tmp, "store"))
    t0 = time.perf_counter()
    job = ex.submit(add, 5, 7)
    t1 = time.perf_counter()
    assert job.result() == 12
    t2 = time.perf_counter()
    jobs = ex.map_array(add, range(n), range(n))
    t3 = time.perf_counter()
    assert [j.result() for j in jobs] == [2 * k for k in range(n)]
    t4 = time.perf_counter()
    return {"submit": t1 - t0, "done": t2 - t0, "array_call": t3 - t2, "array_done": t4 - t2}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--backends", default="local,slurm")
    ap.add_argument("--quick", action="store_true", help="1 repetition, an array of 4")
    ap.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "results"))
    a = ap.parse_args()
    reps, n = (1, 4) if a.quick else (a.reps, 32)
    backends = a.backends.split(",")
    if "slurm" in backends and not shutil.which("srun"):
        print("slurm skipped: srun is not on PATH (bash slurm/up)")
        backends.remove("slurm")
    results: dict[str, dict[str, list[float]]] = {}
    failed: dict[str, int] = {}
    with tempfile.TemporaryDirectory(prefix="bench-submitit-") as tmp:  # outside the repo
        for backend in backends:
            for i in range(reps):
                for kind in ("submitit", "runrec"):  # alternated: same load for both
                    try:
                        r = one(kind, backend, tmp, i, n)
                    except Exception as exc:  # a cluster hiccup: counted, not measured
                        print(f"{backend} {kind} rep {i} failed: {exc!r}"[:300], file=sys.stderr)
                        failed[f"{backend}/{kind}"] = failed.get(f"{backend}/{kind}", 0) + 1
                        continue
                    for k, v in r.items():
                        results.setdefault(f"{backend}/{kind}", {}).setdefault(k, []).append(v)
                    print(f"{backend} {kind} rep {i}: {r}", file=sys.stderr, flush=True)
    med = {
        key: {k: round(statistics.median(v), 3) for k, v in d.items()} for key, d in results.items()
    }
    print(f"array of {n}, median of {reps}")
    print("| backend | figure (median, s) | submitit | drop-in | difference |")
    print("| --- | --- | --- | --- | --- |")
    for backend in backends:
        s, d = med[f"{backend}/submitit"], med[f"{backend}/runrec"]
        for k in s:
            print(f"| {backend} | {k} | {s[k]:.3f} | {d[k]:.3f} | {d[k] - s[k]:+.3f} |")
    if failed:
        print(f"\nfailed repetitions (not measured): {failed}")
    os.makedirs(a.out, exist_ok=True)
    with open(os.path.join(a.out, "bench_submitit_dropin.json"), "w") as f:
        load = os.getloadavg()
        json.dump(
            {
                "reps": reps,
                "array": n,
                "median": med,
                "samples": results,
                "failed": failed,
                "loadavg_end": load,
            },
            f,
            indent=1,
        )


if __name__ == "__main__":
    main()
