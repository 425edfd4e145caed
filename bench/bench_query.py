"""Cross-run analysis benchmarks (issue #7): writing runs, querying them, record size.

1. ``write``: N runs (50 config values, 20 metrics, 10 tags each) written the way a sweep
   writes them: the launch versions (config and tags) of each call of 1,000 runs together
   (``Store.write_versions``: one pack, what ``map_array`` does), then each run's end version
   (the metrics) loose, as its job writes it (``Store.write_version``), fsync off and on,
   against MLflow's sqlite and file stores (``create_run`` + ``log_batch`` +
   ``set_terminated``, the batch path) with the same values. Runs per second.
2. ``query``: ``rr.query(store, 'config.lr == 0.01 and metrics.acc > 0.5')`` on the N runs of
   part 1 and on a store of BIG runs: cold (no index: the index build is included), warm (index
   up to date; the change journal read to find new records), and warm without that
   (``refresh=False``); against MLflow ``search_runs`` with the same filter on its sqlite store
   (``--mlflow-n`` runs, default 10,000) and file store (``--file-n``, default 1,000).
3. ``size``: bytes, files and versions per run in a real sweep (``map_array`` on the local
   backend): its loose version files plus its share of the sweep's launch and dispatch packs,
   and at rest after ``pack_store``; blobs excluded (shared: patch, package lists; per run:
   pickled call, result).

Every figure is the median of ``--reps`` repetitions (cold queries of the BIG store: fewer,
see the output). Prints Markdown tables and writes ``query.json`` to ``--out``.

    python bench/bench_query.py [--only write,query,size] [--quick] [--out DIR]
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import sys
import tempfile
import time
from datetime import UTC, datetime
from typing import Any

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
from bench_foundation import clock, loadavg, machine, make_repo, med, ratio, table  # noqa: E402

FILTER = "config.lr == 0.01 and metrics.acc > 0.5"
# these figures are of loose stores: no background `runrec pack` (query/autopack.py) meanwhile
os.environ.setdefault("RUNREC_AUTO_PACK", "0")
MLFLOW_FILTER = "params.lr = '0.01' and metrics.acc > 0.5"


def run_values(k: int) -> tuple[dict[str, Any], dict[str, float], dict[str, str]]:
    """50 config values (lr among them), 20 metrics (acc among them), 10 tags."""
    config: dict[str, Any] = {"lr": (0.01, 0.1, 0.001)[k % 3], "seed": k}
    for i in range(48):
        config[f"param_{i:02d}"] = (i * 10, 0.001 * (i + 1), f"value-{i}", bool(i % 2))[i % 4]
    metrics = {"acc": (k % 100) / 100.0}
    for i in range(19):
        metrics[f"metric_{i:02d}"] = 1.0 / (i + k + 1)
    tags = {f"tag_{i}": f"t{(k + i) % 7}" for i in range(10)}
    return config, metrics, tags


BATCH = 1_000  # runs per call of write_ours: a 1,000-task map_array


def write_ours(store: Any, n: int, start: int = 0, batch: int = BATCH) -> None:
    """``n`` runs written the way a sweep writes them: the launch versions of each call of
    ``BATCH`` runs together (``Store.write_versions``, what ``map_array`` does: one pack), then
    every run's end version loose, as its job writes it (``Store.write_version``)."""
    from runrec_cluster.capture import config as cfg
    from runrec_cluster.record import to_patch
    from runrec_cluster.store import layout

    for first in range(start, start + n, batch):
        ks = range(first, min(first + batch, start + n))
        launches, ends = [], []
        for k in ks:
            config, metrics, tags = run_values(k)
            rid = layout.new_id()
            now = datetime.now(UTC)
            launch = to_patch(
                run_id=rid,
                name="bench",
                created_at=now,
                submitted_at=now,
                config=cfg.entries(config, "given"),
                tags=tags,
            )
            launch.update(state="submitted", state_source="submitter", attempt=1)
            launches.append((rid, "launch", launch))
            ends.append((rid, metrics))
        store.write_versions(launches, new_runs=True)
        for rid, metrics in ends:
            end = to_patch(state="succeeded", state_source="job", ended_at=datetime.now(UTC))
            end["metrics"] = metrics
            store.write_version(rid, "end", end, role="job")


def mlflow_client(uri: str) -> tuple[Any, str]:
    logging.getLogger("mlflow").setLevel(logging.ERROR)
    logging.getLogger("alembic").setLevel(logging.ERROR)
    os.environ["MLFLOW_ALLOW_FILE_STORE"] = "true"  # MLflow 3 keeps its file store behind this
    from mlflow.tracking import MlflowClient

    c = MlflowClient(tracking_uri=uri)
    return c, c.create_experiment("bench")


def write_mlflow(client: Any, exp: str, n: int, start: int = 0) -> None:
    from mlflow.entities import Metric, Param, RunTag

    for k in range(start, start + n):
        config, metrics, tags = run_values(k)
        r = client.create_run(exp)
        ts = int(time.time() * 1000)
        client.log_batch(
            r.info.run_id,
            metrics=[Metric(key, v, ts, 0) for key, v in metrics.items()],
            params=[Param(key, str(v)) for key, v in config.items()],
            tags=[RunTag(key, v) for key, v in tags.items()],
        )
        client.set_terminated(r.info.run_id)


def write_floor(root: str, n: int, start: int = 0) -> None:
    """The bare system calls of what a job's loose end version costs, and nothing else (no
    encoding, no launch, no capture): a new run directory in a shard directory, a file made
    with O_EXCL, written (530 bytes, about an end version of these runs) and closed, linked
    to its name and unlinked (``store/fs.py``, a name is never replaced), and a line appended to
    an open journal file. An upper bound for any store writing one file a run into a
    directory of its own."""
    payload = os.urandom(530)
    shard = os.path.join(root, "shard")
    os.makedirs(shard, exist_ok=True)
    jfd = os.open(os.path.join(root, "journal.log"), os.O_WRONLY | os.O_APPEND | os.O_CREAT)
    try:
        for k in range(start, start + n):
            d = os.path.join(shard, f"run{k:09d}")
            os.mkdir(d)
            tmp, final = os.path.join(d, ".tmp-v2"), os.path.join(d, "v000002-job.msgpack.zst")
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o444)
            os.write(fd, payload)
            os.close(fd)
            os.link(tmp, final)
            os.unlink(tmp)
            os.write(jfd, f"run{k:09d} 2\n".encode())
    finally:
        os.close(jfd)


WRITERS = ("default", "fsync", "loose", "floor", "mlflow_sqlite", "mlflow_file")


def bench_write_query(
    tmp: str,
    n: int,
    mlflow_n: int,
    file_n: int,
    big: int,
    reps: int,
    big_cold_reps: int,
    query: bool = True,
) -> dict[str, Any]:
    """Write N runs to ours (fsync off, on), MLflow sqlite (``mlflow_n`` runs) and the MLflow
    file store (``file_n``), in ``reps`` interleaved batches; then query each."""
    import runrec_cluster as rr
    from runrec_cluster.query.index import Index

    out: dict[str, Any] = {
        "n": n,
        "mlflow_n": mlflow_n,
        "file_n": file_n,
        "big": big,
        "samples": {},
    }
    s = out["samples"]
    stores = {
        "default": rr.Store(os.path.join(tmp, "ours")),
        "fsync": rr.Store(os.path.join(tmp, "ours-fsync"), fsync=True),
        "loose": rr.Store(os.path.join(tmp, "ours-loose")),  # one run per call: all loose
    }
    for st in stores.values():
        st.ensure_writable()
    clients = {
        "mlflow_sqlite": mlflow_client(f"sqlite:///{os.path.join(tmp, 'mlflow.db')}"),
        "mlflow_file": mlflow_client("file://" + os.path.join(tmp, "mlruns")),
    }
    total = {
        "default": n,
        "fsync": n,
        "loose": n,
        "floor": n,
        "mlflow_sqlite": mlflow_n,
        "mlflow_file": file_n,
    }
    written = dict.fromkeys(WRITERS, 0)
    for rep in range(reps):
        order = list(WRITERS[rep % len(WRITERS) :] + WRITERS[: rep % len(WRITERS)])
        for who in order:
            per = total[who] // reps + (1 if rep < total[who] % reps else 0)
            w = written[who]
            if who in clients:
                c, e = clients[who]
                dt = clock(lambda c=c, e=e, per=per, w=w: write_mlflow(c, e, per, w))
            elif who == "floor":
                root = os.path.join(tmp, "floor")
                dt = clock(lambda per=per, w=w, root=root: write_floor(root, per, w))
            else:
                b = 1 if who == "loose" else BATCH
                dt = clock(lambda who=who, per=per, w=w, b=b: write_ours(stores[who], per, w, b))
            s.setdefault(f"write_{who}_runs_per_s", []).append(per / dt)
            written[who] += per
    out["written"] = written
    if not query:  # --only write
        out["medians"] = {k: med(v) for k, v in s.items()}
        return out
    # -- query the N runs: ours cold / warm, MLflow search_runs on its sqlite and file stores
    store = stores["default"]
    idx = Index(store)
    expect = len(rr.query(store, FILTER))
    for _rep in range(reps):
        os.unlink(idx.path)
        s.setdefault("query_n_cold_s", []).append(clock(lambda: rr.query(store, FILTER)))
    idx.update()
    got: dict[str, int] = {}
    for _rep in range(reps):
        s.setdefault("query_n_warm_s", []).append(clock(lambda: rr.query(store, FILTER)))
        s.setdefault("query_n_warm_norefresh_s", []).append(
            clock(lambda: rr.query(store, FILTER, refresh=False))
        )
        for who, (c, e) in clients.items():

            def search(who: str = who, c: Any = c, e: str = e) -> None:
                got[who] = len(c.search_runs([e], MLFLOW_FILTER, max_results=50000))

            s.setdefault(f"query_{who}_s", []).append(clock(search))
    out["matches"] = {"ours": expect, "ours_runs": sum(1 for _ in store.run_ids()), **got}
    # -- query a BIG store (ours only)
    bs = rr.Store(os.path.join(tmp, "big"))
    bs.ensure_writable()
    out["big_write_s"] = clock(lambda: write_ours(bs, big))
    bidx = Index(bs)
    for _rep in range(big_cold_reps):
        if os.path.exists(bidx.path):
            os.unlink(bidx.path)
        s.setdefault("query_big_cold_s", []).append(clock(lambda: rr.query(bs, FILTER)))
    bidx.update()
    out["big_matches"] = len(rr.query(bs, FILTER))
    for _rep in range(reps):
        s.setdefault("query_big_warm_s", []).append(clock(lambda: rr.query(bs, FILTER)))
        s.setdefault("query_big_warm_norefresh_s", []).append(
            clock(lambda: rr.query(bs, FILTER, refresh=False))
        )
        s.setdefault("index_big_update_noop_s", []).append(clock(bidx.update))
        s.setdefault("index_big_full_scan_s", []).append(clock(lambda: bidx.update(full=True)))
    # a warm update that finds new runs: 100 written since the last one
    for _rep in range(reps):
        write_ours(bs, 100, big + 100 * _rep)
        s.setdefault("query_big_warm_after_100_new_s", []).append(
            clock(lambda: rr.query(bs, FILTER))
        )
    out["index_bytes"] = {"n": os.path.getsize(idx.path), "big": os.path.getsize(bidx.path)}
    out["medians"] = {k: med(v) for k, v in s.items()}
    return out


def report_write_query(r: dict[str, Any]) -> str:
    m = r["medians"]
    base = m["write_mlflow_sqlite_runs_per_s"]
    lines = [
        "### Write: runs per second (50 config values, 20 metrics, 10 tags per run)",
        "",
        f"Runs written: runrec {r['n']:,} per store (the launch versions of each {BATCH:,} "
        "runs in one pack, each run's end version loose), MLflow sqlite "
        f"{r['mlflow_n']:,}, MLflow file store {r['file_n']:,} (a file per value: slower to "
        f"fill), in {len(r['samples']['write_default_runs_per_s'])} interleaved batches; runs/s "
        "is the median over the batches.",
        "",
        table(
            ["store", "runs/s", "this / MLflow sqlite"],
            [
                [
                    "runrec, default (atomic, no fsync)",
                    m["write_default_runs_per_s"],
                    ratio(m["write_default_runs_per_s"], base),
                ],
                [
                    "runrec, fsync",
                    m["write_fsync_runs_per_s"],
                    ratio(m["write_fsync_runs_per_s"], base),
                ],
                [
                    "runrec, one run per call (launch loose too: a single submit)",
                    m["write_loose_runs_per_s"],
                    ratio(m["write_loose_runs_per_s"], base),
                ],
                [
                    "floor: the bare system calls of one loose version a run in a new "
                    "directory (`write_floor`; nothing else)",
                    m["write_floor_runs_per_s"],
                    ratio(m["write_floor_runs_per_s"], base),
                ],
                ["MLflow sqlite, log_batch", base, "1.0x"],
                [
                    "MLflow file store, log_batch",
                    m["write_mlflow_file_runs_per_s"],
                    ratio(m["write_mlflow_file_runs_per_s"], base),
                ],
            ],
        ),
    ]
    if "query_mlflow_sqlite_s" not in m:  # --only write
        return "\n".join(lines)
    q_sql, q_file = m["query_mlflow_sqlite_s"], m["query_mlflow_file_s"]
    lines += [
        "",
        f"### Query `{FILTER}`",
        "",
        f"Matches: runrec {r['matches']['ours']:,} of {r['matches']['ours_runs']:,}; MLflow sqlite "
        f"{r['matches']['mlflow_sqlite']:,} of {r['mlflow_n']:,}; MLflow file store "
        f"{r['matches']['mlflow_file']:,} of {r['file_n']:,}. BIG store: {r['big']:,} runs, "
        f"{r['big_matches']:,} match.",
        "",
        table(
            ["query", "ms", "MLflow sqlite search_runs / this"],
            [
                [
                    f"runrec, {r['n']:,} runs, cold (index build included)",
                    m["query_n_cold_s"] * 1000,
                    ratio(q_sql, m["query_n_cold_s"]),
                ],
                [
                    f"runrec, {r['n']:,} runs, warm (journal read included)",
                    m["query_n_warm_s"] * 1000,
                    ratio(q_sql, m["query_n_warm_s"]),
                ],
                [
                    f"runrec, {r['n']:,} runs, warm, refresh=False",
                    m["query_n_warm_norefresh_s"] * 1000,
                    ratio(q_sql, m["query_n_warm_norefresh_s"]),
                ],
                [f"MLflow search_runs, sqlite, {r['mlflow_n']:,} runs", q_sql * 1000, "1.0x"],
                [
                    f"MLflow search_runs, file store, {r['file_n']:,} runs",
                    q_file * 1000,
                    ratio(q_sql, q_file),
                ],
                [
                    f"runrec, {r['big']:,} runs, cold (index build included)",
                    m["query_big_cold_s"] * 1000,
                    "",
                ],
                [
                    f"**runrec, {r['big']:,} runs, warm (journal read included)**",
                    m["query_big_warm_s"] * 1000,
                    "",
                ],
                [
                    f"runrec, {r['big']:,} runs, warm, 100 runs new since the last query",
                    m["query_big_warm_after_100_new_s"] * 1000,
                    "",
                ],
                [
                    f"runrec, {r['big']:,} runs, warm, refresh=False",
                    m["query_big_warm_norefresh_s"] * 1000,
                    "",
                ],
                [
                    "… index.update() finding nothing new in the journal",
                    m["index_big_update_noop_s"] * 1000,
                    "",
                ],
                [
                    f"… index.update(full=True): the periodic full scan ({r['big']:,} stats)",
                    m["index_big_full_scan_s"] * 1000,
                    "",
                ],
            ],
        ),
        "",
        f"Index file: {r['index_bytes']['n'] / r['n']:.0f} bytes per run ({r['n']:,} runs), {r['index_bytes']['big'] / r['big']:.0f} bytes per run ({r['big']:,}). Writing the BIG store took {r['big_write_s']:.0f} s.",
    ]
    return "\n".join(lines)


def _tree(root: str, sub: str) -> tuple[int, int, int]:
    """(files, directories, bytes of the files) under ``root/sub``."""
    files = dirs = size = 0
    for d, ds, fs in os.walk(os.path.join(root, sub)):
        dirs += len(ds)
        files += len(fs)
        size += sum(os.path.getsize(os.path.join(d, f)) for f in fs)
    return files, dirs, size


def bench_size(tmp: str, tasks: int) -> dict[str, Any]:
    """A real sweep on the local backend: bytes, files and versions per run right after it
    (loose versions, plus each run's share of the sweep's launch and dispatch packs), and at
    rest after ``pack_store`` (every version in packs). Blobs excluded (reported apart)."""
    import runrec_cluster as rr
    from runrec_cluster.record import RecordVersion
    from runrec_cluster.store import codec, packs

    sys.path.insert(0, HERE)
    repo = make_repo(tmp)
    store = rr.Store(os.path.join(tmp, "sweep-store"))
    ex = rr.Executor(backend="local", store=store, name="sweep", cwd=repo)
    import bench_foundation
    import cloudpickle

    cloudpickle.register_pickle_by_value(bench_foundation)  # the job need not import bench/
    t0 = time.perf_counter()
    hs = ex.map_array(bench_foundation.add_one, [{"x": i} for i in range(tasks)])
    for h in hs:
        h.wait(timeout=600)
    dt = time.perf_counter() - t0
    states: dict[str, int] = {}
    loose: list[int] = []
    per_event: dict[str, list[int]] = {}
    for h in hs:
        rec = h.record()
        states[rec.state.value] = states.get(rec.state.value, 0) + 1
        paths = store.version_files(h.run_id)
        loose.append(sum(os.path.getsize(p) for p in paths))
        for p in paths:
            v = codec.decode(fs_read(p), RecordVersion, p)
            per_event.setdefault(f"{v.event} ({v.writer.role}), loose", []).append(
                os.path.getsize(p)
            )
    pack_files, _, pack_bytes = _tree(store.root, packs.PACKS_DIR)
    run_files, run_dirs, _ = _tree(store.root, "runs")
    blobs = _tree(store.root, "blobs")[2]
    versions = [len(store.versions(h.run_id)) for h in hs]
    sizes = [n + pack_bytes / tasks for n in loose]
    packed = packs.pack_store(store.root)
    rest_files, rest_dirs, rest_bytes = _tree(store.root, packs.PACKS_DIR)
    left_files, left_dirs, left_bytes = _tree(store.root, "runs")
    return {
        "tasks": tasks,
        "states": states,
        "bytes_per_run": sizes,
        "median_bytes": med(sizes),
        "mean_bytes": sum(sizes) / len(sizes),
        "pack_bytes_per_run": pack_bytes / tasks,
        "sweep_packs": pack_files,
        "per_event_bytes": {k: med(v) for k, v in per_event.items()},
        "files_per_run": (run_files + run_dirs + pack_files) / tasks,
        "loose_files_per_run": run_files / tasks,
        "versions_per_run": med(versions),
        "rest_bytes_per_run": (rest_bytes + left_bytes) / tasks,
        "rest_files_per_run": (rest_files + rest_dirs + left_files + left_dirs) / tasks,
        "rest_packs": rest_files,
        "pack_seconds": packed.seconds,
        "shared_blob_bytes": blobs,
        "seconds": dt,
    }


def fs_read(path: str) -> bytes:
    with open(path, "rb") as f:
        return f.read()


def report_size(r: dict[str, Any]) -> str:
    rows: list[list[Any]] = [
        [
            "bytes per run right after the sweep (median): its loose version files + its "
            "share of the sweep's packs",
            r["median_bytes"],
        ],
        ["… mean", r["mean_bytes"]],
        [
            f"… of which the share of the sweep's {r['sweep_packs']} pack(s) (launch, dispatch)",
            r["pack_bytes_per_run"],
        ],
    ]
    rows += [[f"… {k} (median)", v] for k, v in sorted(r["per_event_bytes"].items())]
    rows += [
        ["versions per run (median, loose and packed)", r["versions_per_run"]],
        [
            "files per run right after the sweep (version files, run directories, packs)",
            r["files_per_run"],
        ],
        [
            f"bytes per run at rest, after `pack_store` ({r['pack_seconds']:.2f} s; every "
            "version in packs)",
            r["rest_bytes_per_run"],
        ],
        [
            f"files per run at rest ({r['rest_packs']} pack files, shard directory included)",
            r["rest_files_per_run"],
        ],
        [
            "all blobs of the sweep, bytes (not counted above; per-run call and result blobs "
            "included)",
            r["shared_blob_bytes"],
        ],
    ]
    return "\n".join(
        [
            f"### Record size per run, {r['tasks']:,}-task sweep (`map_array` on the local "
            f"backend; states: {r['states']})",
            "",
            table(["measure", "value"], rows),
        ]
    )


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default=os.path.join(HERE, "results"))
    p.add_argument("--only", default="write,query,size")
    p.add_argument("--quick", action="store_true")
    p.add_argument("--n", type=int, default=None, help="runs written and queried (default 10,000)")
    p.add_argument(
        "--mlflow-n", type=int, default=None, help="runs written to MLflow sqlite (default 10,000)"
    )
    p.add_argument(
        "--file-n",
        type=int,
        default=None,
        help="runs written to MLflow's file store (default 1,000)",
    )
    p.add_argument("--big", type=int, default=None, help="runs of the big store (default 100,000)")
    p.add_argument(
        "--tasks", type=int, default=None, help="tasks of the sweep for the size (default 1,000)"
    )
    p.add_argument("--reps", type=int, default=None)
    a = p.parse_args()
    q = a.quick
    n = a.n or (300 if q else 10_000)
    mlflow_n = a.mlflow_n or (60 if q else 10_000)
    file_n = a.file_n or (30 if q else 1_000)
    big = a.big or (1_000 if q else 100_000)
    tasks = a.tasks or (8 if q else 1_000)
    reps = a.reps or (3 if q else 5)
    only = set(a.only.split(","))
    os.makedirs(a.out, exist_ok=True)
    base = os.environ.get("BENCH_TMP") or tempfile.gettempdir()
    tmp = tempfile.mkdtemp(prefix="runrec-bench-query-", dir=base)
    res: dict[str, Any] = {"machine": machine(), "load_before": loadavg(), "quick": q}
    md = []
    t0 = time.perf_counter()
    try:
        if only & {"write", "query"}:
            r = bench_write_query(
                tmp, n, mlflow_n, file_n, big, reps, 1 if big >= 50_000 else reps, "query" in only
            )
            res["write_query"] = r
            md.append(report_write_query(r))
            print(md[-1] + "\n", flush=True)
        if "size" in only:
            r = bench_size(tmp, tasks)
            res["size"] = r
            md.append(report_size(r))
            print(md[-1] + "\n", flush=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    res["load_after"] = loadavg()
    res["seconds"] = time.perf_counter() - t0
    name = "query-quick" if q else "query"
    with open(os.path.join(a.out, f"{name}.json"), "w") as f:
        json.dump(res, f, indent=1, default=str)
    with open(os.path.join(a.out, f"{name}.md"), "w") as f:
        f.write("\n\n".join(md) + "\n")
    print(
        f"bench_query: {res['seconds']:.0f} s; load average {res['load_before']} -> {res['load_after']}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
