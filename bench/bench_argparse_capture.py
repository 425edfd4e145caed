"""Cost of recording a Python command's argparse options (issue 13, job/argparse_capture.py).

1. ``child``: a Python command that parses its options with argparse, started with and without
   the capture's ``sitecustomize.py`` first on its PYTHONPATH (wall time of the whole process,
   alternatives interleaved).
2. ``job``: the job's side, ``prepare`` (private directory, copy, watcher thread) plus
   ``collect`` (a last read, the directory removed), for a command that wrote its options.
3. ``poll``: the watcher's CPU while a command runs: the job process's CPU time over
   ``--seconds`` of wall time with the watcher looking every ``POLL_S``.

Figures are medians of ``--reps`` repetitions. Prints a Markdown table.

    python bench/bench_argparse_capture.py [--reps 21] [--seconds 5]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

import runrec_cluster as rr
from runrec_cluster.job import argparse_capture, argparse_site
from runrec_cluster.record import Entrypoint, RunRecord

SCRIPT = (
    "import argparse\np = argparse.ArgumentParser()\n"
    + "".join(f"p.add_argument('--opt{i}', type=float, default={i})\n" for i in range(20))
    + "p.parse_args()\n"
)


def _child(reps: int, tmp: str) -> tuple[float, float]:
    script = os.path.join(tmp, "train.py")
    with open(script, "w") as f:
        f.write(SCRIPT)
    site = os.path.join(tmp, "site")
    os.makedirs(site)
    shutil.copyfile(argparse_site.__file__, os.path.join(site, "sitecustomize.py"))
    base = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    cap = dict(base, PYTHONPATH=site)
    cap[argparse_site.ENV_PATH] = os.path.join(site, "argv.json")
    cap[argparse_site.ENV_PPID] = str(os.getpid())
    off, on = [], []
    for _ in range(reps):
        for env, out in ((base, off), (cap, on)):
            t = time.perf_counter()
            subprocess.run([sys.executable, script, "--opt3", "0.5"], env=env, check=True)
            out.append(time.perf_counter() - t)
    return statistics.median(off) * 1e3, statistics.median(on) * 1e3


def _job(reps: int, tmp: str) -> float:
    store = rr.Store(os.path.join(tmp, "store"))
    store.ensure_writable()
    rec = RunRecord(run_id="01bench", entrypoint=Entrypoint(kind="command", argv=["python"]))
    doc = {"options": [{"key": f"opt{i}", "value": i, "given": i == 3} for i in range(20)]}
    times = []
    for _ in range(reps):
        env = {"RUNREC_RANK": "0"}
        t = time.perf_counter()
        cap = argparse_capture.prepare(env, rec, store)
        assert cap is not None
        with open(cap.path, "w") as f:
            json.dump(doc, f)
        cap.watch.stop.set()  # no config version: this run id has no record
        argparse_capture.collect(cap)
        times.append(time.perf_counter() - t)
    return statistics.median(times) * 1e3


def _poll(seconds: float, tmp: str) -> float:
    store = rr.Store(os.path.join(tmp, "store2"))
    store.ensure_writable()
    rec = RunRecord(run_id="01bench", entrypoint=Entrypoint(kind="command", argv=["python"]))
    cap = argparse_capture.prepare({"RUNREC_RANK": "0"}, rec, store)
    assert cap is not None
    c0, t0 = time.process_time(), time.perf_counter()
    time.sleep(seconds)
    cpu, wall = time.process_time() - c0, time.perf_counter() - t0
    argparse_capture.collect(cap)
    return 100.0 * cpu / wall


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--reps", type=int, default=21)
    ap.add_argument("--seconds", type=float, default=5.0)
    a = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        off, on = _child(a.reps, tmp)
        job = _job(a.reps, tmp)
        poll = _poll(a.seconds, tmp)
    print("| what | figure |\n|---|---|")
    print(f"| Python command with argparse, without the capture | {off:.1f} ms |")
    print(f"| the same with the capture | {on:.1f} ms (+{on - off:.1f} ms) |")
    print(f"| job side: prepare + collect | {job:.2f} ms |")
    print(
        f"| watcher CPU while the command runs (every {argparse_capture.POLL_S} s) | {poll:.3f} % |"
    )


if __name__ == "__main__":
    main()
