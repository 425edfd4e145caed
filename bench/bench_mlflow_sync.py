"""runrec mlflow-sync throughput (issue 16) against a real local `mlflow server` (sqlite).

A store of N runs (default 1,000: 10 sweeps of N/10 runs; 20 config values, 5 metrics logged
in 3 versions each, so 15 history points a run; 5 tags) is synced with ``runrec_cluster.mlflow.
sync`` into a fresh experiment: the **first sync** (every run created), a **no-change second
sync** (one search, nothing written), and a **sync after a tenth of the runs changed** (an
annotation each: their tags updated). Runs per second; the first sync with 1 and with 4
workers (runs written at once). Needs the full ``mlflow`` (its server): ``pip install
'.[bench]'``.

    python bench/bench_mlflow_sync.py [--n 1000] [--reps 3] [--quick] [--out DIR]
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from datetime import UTC, datetime, timedelta
from typing import Any

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
from bench_foundation import clock, loadavg, machine, med, table  # noqa: E402


def write_runs(store: Any, n: int) -> list[str]:
    """N finished runs in 10 sweeps, written the way the submitter and the job write them."""
    from runrec_cluster.capture import config as cfg
    from runrec_cluster.record import to_patch
    from runrec_cluster.store import layout

    ids = []
    sweeps = [layout.new_id() for _ in range(10)]
    t0 = datetime.now(UTC) - timedelta(hours=1)
    for k in range(n):
        rid = layout.new_id()
        ids.append(rid)
        config = {"lr": (0.1, 0.01, 0.001)[k % 3], "seed": k}
        config.update(
            {f"param_{i:02d}": (i, 0.5 * i, f"v{i}", i % 2 == 0)[i % 4] for i in range(18)}
        )
        launch = to_patch(
            run_id=rid,
            name="bench",
            created_at=t0,
            submitted_at=t0,
            config=cfg.entries(config, "given"),
            tags={f"tag_{i}": f"t{(k + i) % 7}" for i in range(5)},
            sweep_id=sweeps[k % 10],
            sweep_index=k // 10,
        )
        launch.update(state="submitted", state_source="submitter", attempt=1)
        store.write_version(rid, "launch", launch)
        for step in range(3):
            store.write_version(
                rid,
                "metrics",
                {"metrics": {f"m{i}": 1.0 / (k + i + step + 1) for i in range(5)}},
                role="job",
            )
        end = to_patch(state="succeeded", state_source="job", ended_at=t0 + timedelta(minutes=1))
        store.write_version(rid, "end", end, role="job")
    return ids


def start_server(tmp: str) -> tuple[subprocess.Popen[bytes], str]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    uri = f"http://127.0.0.1:{port}"
    log = open(os.path.join(tmp, "server.log"), "wb")  # noqa: SIM115 (closed with the process)
    proc = subprocess.Popen(
        [sys.executable, "-m", "mlflow", "server", "--backend-store-uri",
         f"sqlite:///{tmp}/mlflow.db", "--artifacts-destination", f"{tmp}/artifacts",
         "--host", "127.0.0.1", "--port", str(port), "--workers", "1"],
        stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
    )  # fmt: skip
    end = time.monotonic() + 180
    while time.monotonic() < end:
        try:
            with urllib.request.urlopen(uri + "/health", timeout=2):
                return proc, uri
        except OSError:
            if proc.poll() is not None:
                break
            time.sleep(0.5)
    os.killpg(proc.pid, signal.SIGKILL)
    raise SystemExit(f"the mlflow server did not start; see {tmp}/server.log")


def bench(tmp: str, n: int, reps: int) -> dict[str, Any]:
    import runrec_cluster as rr
    from runrec_cluster.lineage.annotate import annotate
    from runrec_cluster.mlflow import sync

    logging.getLogger("mlflow").setLevel(logging.ERROR)
    store = rr.Store(os.path.join(tmp, "store"))
    store.ensure_writable()
    out: dict[str, Any] = {"n": n, "samples": {}}
    s = out["samples"]
    out["write_store_s"] = clock(lambda: write_runs(store, n))
    ids = [r for r in store.run_ids()]
    proc, uri = start_server(tmp)
    try:
        for rep in range(reps):
            for workers in (1, 4):
                exp = f"bench-{rep}-w{workers}"
                r = sync(store, uri, exp, check=False, workers=workers)
                assert len(r.created) == n, (len(r.created), n)
                s.setdefault(f"first_w{workers}_runs_per_s", []).append(n / r.seconds)
                if workers == 4:
                    r2 = sync(store, uri, exp, check=False, workers=workers)
                    assert len(r2.unchanged) == n
                    s.setdefault("nochange_runs_per_s", []).append(n / r2.seconds)
                    changed = ids[rep::10]
                    for rid in changed:
                        annotate(store, rid, verdict="positive", note=f"checked {rep}")
                    r3 = sync(store, uri, exp, check=False, workers=workers)
                    assert len(r3.updated) == len(changed), (len(r3.updated), len(changed))
                    s.setdefault("tenth_changed_runs_per_s", []).append(n / r3.seconds)
                    s.setdefault("tenth_changed_s", []).append(r3.seconds)
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=60)
    out["medians"] = {k: med(v) for k, v in s.items()}
    return out


def report(r: dict[str, Any]) -> str:
    m = r["medians"]
    rows = [
        ["first sync, 1 worker", m["first_w1_runs_per_s"], r["n"] / m["first_w1_runs_per_s"]],
        ["first sync, 4 workers (default)", m["first_w4_runs_per_s"], r["n"] / m["first_w4_runs_per_s"]],
        ["second sync, nothing changed", m["nochange_runs_per_s"], r["n"] / m["nochange_runs_per_s"]],
        ["sync after a tenth of the runs changed", m["tenth_changed_runs_per_s"], m["tenth_changed_s"]],
    ]  # fmt: skip
    reps = len(r["samples"]["first_w1_runs_per_s"])
    return (
        f"mlflow-sync of {r['n']:,} runs (20 params, 5 metrics x 3 points, 5 tags each; 10 "
        f"sweeps) into a local `mlflow server` (sqlite), median of {reps}\n\n"
        + table(["sync", "runs/s", "seconds"], rows)
    )


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n", type=int, default=None, help="runs (default 1,000)")
    ap.add_argument("--reps", type=int, default=None, help="repetitions (default 3)")
    ap.add_argument("--quick", action="store_true", help="100 runs, 1 repetition")
    ap.add_argument("--out", default=os.path.join(HERE, "results"))
    a = ap.parse_args()
    n = a.n or (100 if a.quick else 1000)
    reps = a.reps or (1 if a.quick else 3)
    os.makedirs(a.out, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix="runrec-bench-mlflow-", dir=os.environ.get("BENCH_TMP"))
    res: dict[str, Any] = {"machine": machine(), "load_before": loadavg(), "quick": a.quick}
    t0 = time.perf_counter()
    try:
        r = bench(tmp, n, reps)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    res["sync"] = r
    res["load_after"] = loadavg()
    res["seconds"] = time.perf_counter() - t0
    md = report(r)
    print(md + "\n", flush=True)
    name = "mlflow_sync-quick" if a.quick else "mlflow_sync"
    with open(os.path.join(a.out, f"{name}.json"), "w") as f:
        json.dump(res, f, indent=1, default=str)
    with open(os.path.join(a.out, f"{name}.md"), "w") as f:
        f.write(md + "\n")
    print(
        f"bench_mlflow_sync: {res['seconds']:.0f} s; load average {res['load_before']} -> "
        f"{res['load_after']}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
