"""Scale (issue 17): a realistic store of N runs (``scale_gen.py``: sweeps, failures with
tracebacks, annotations, reruns, retirements, through the library's own write path), and what
it costs at that size.

1. ``write``: runs/s of the generator (launch + job side + annotations; packing excluded),
   and MLflow's sqlite store in the same run (``bench_query.write_mlflow``: ``create_run`` +
   ``log_batch`` + ``set_terminated``, ``--mlflow-n`` runs).
2. ``loose`` / ``packed``: inodes (files + directories) and bytes (apparent, allocated) per
   run: under ``runs/`` + ``packs/`` (the records), and the whole store (blobs, logs, the
   change journal; the index apart). Up to ``--pack-every`` runs (default: no packing while
   writing up to 100,000 runs, every 100,000 above) the store is measured loose, then packed
   as ``runrec pack`` does (timed); above it, loose figures are of the runs written since the
   last pack, just before packing them.
3. Each of these in a fresh process (``runrec`` or ``python``; what a user waits for):
   a cold query (``rr.query(store, where=FILTER)``, no index: built from the packs' kept
   rows), loose too where the store was measured loose; the index's bytes per run; a warm
   query (index present and current: a second ``rr.query`` in a new process, the change
   check included; the interpreter's start and imports timed apart); ``runrec table --where``
   cold and warm, ``runrec ls --limit 50``, ``runrec show <id>``, ``runrec export <id>``,
   ``runrec fsck``.

Prints Markdown tables and writes ``scale.json`` / ``scale.md`` (``scale-<n>`` for --n).

    python bench/bench_scale.py [--n 100000] [--quick] [--mlflow-n 2000] [--out DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from typing import Any

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
from bench_foundation import loadavg, machine, make_repo, table  # noqa: E402
from bench_query import FILTER, mlflow_client, write_mlflow  # noqa: E402
from scale_gen import generate, generate_simple, pack_now  # noqa: E402

RECORD_PARTS = ("runs", "packs")
STORE_PARTS = ("runs", "packs", "blobs", "logs", "changes", "contexts")
PROBE_TIMEOUT_S = 3600


def usage(root: str, parts: tuple[str, ...]) -> dict[str, int]:
    """Entries (files and directories), apparent and allocated bytes under ``parts``."""
    n = size = blocks = 0
    for part in parts:
        for d, dirs, files in os.walk(os.path.join(root, part)):
            n += len(dirs) + len(files)
            for f in files:
                try:
                    st = os.lstat(os.path.join(d, f))
                except FileNotFoundError:
                    continue
                size += st.st_size
                blocks += st.st_blocks * 512
    return {"entries": n, "bytes": size, "allocated": blocks}


def store_usage(root: str) -> dict[str, Any]:
    whole = tuple(
        p for p in os.listdir(root) if p != "index" and os.path.isdir(os.path.join(root, p))
    )
    return {"records": usage(root, RECORD_PARTS), "store": usage(root, whole), "parts": whole}


# ---------------------------------------------------------------------------------------------
# Probes: each in a fresh process, timed from inside (after imports) and from outside
# ---------------------------------------------------------------------------------------------


def probe(kind: str, store: str, index_dir: str) -> dict[str, Any]:
    """Run in a child process (``--probe``): one query, timed after the imports."""
    t_imp = time.perf_counter()
    import runrec_cluster as rr
    from runrec_cluster.expr import parse
    from runrec_cluster.query.columns import query_libs
    from runrec_cluster.query.index import Index

    query_libs()  # pyarrow, pandas, numpy: imported on first use, timed with the imports
    out: dict[str, Any] = {"import_s": time.perf_counter() - t_imp}
    t0 = time.perf_counter()
    if kind == "query":  # rr.query as a user calls it: a DataFrame of every column
        df = rr.query(store, where=FILTER, index_dir=index_dir)
        out["rows"] = len(df)
    elif kind == "select":  # the index's part alone: the change check, the filter, one column
        idx = Index(rr.Store(store), index_dir)
        st = idx.update()
        t1 = time.perf_counter()
        tab = idx.select(parse(FILTER), columns=["run_id"], as_arrow=True)
        out["update_s"] = t1 - t0
        out["rows"] = tab.num_rows
        out["runs"] = st.runs
    out["seconds"] = time.perf_counter() - t0
    return out


def run_probe(kind: str, store: str, index_dir: str) -> dict[str, Any]:
    t0 = time.perf_counter()
    p = subprocess.run(
        [sys.executable, __file__, "--probe", kind, store, index_dir],
        capture_output=True,
        text=True,
        timeout=PROBE_TIMEOUT_S,
    )
    wall = time.perf_counter() - t0
    if p.returncode != 0:
        return {"error": p.stderr[-2000:], "wall_s": wall}
    out = json.loads(p.stdout.strip().splitlines()[-1])
    out["wall_s"] = wall
    return out


def cli(args: list[str], env: dict[str, str] | None = None) -> dict[str, Any]:
    runrec = os.path.join(os.path.dirname(sys.executable), "runrec")
    t0 = time.perf_counter()
    p = subprocess.run(
        [runrec, *args],
        capture_output=True,
        text=True,
        timeout=PROBE_TIMEOUT_S,
        env={**os.environ, **(env or {})},
    )
    out = {"wall_s": time.perf_counter() - t0, "rc": p.returncode, "stdout_bytes": len(p.stdout)}
    if p.returncode not in (0,):
        out["stderr"] = p.stderr[-1500:]
    return out


def index_bytes(index_dir: str) -> int:
    total = 0
    for d, _, files in os.walk(index_dir):
        total += sum(os.path.getsize(os.path.join(d, f)) for f in files if f.endswith(".arrow"))
    return total


def measure_queries(tmp: str, root: str, tag: str, r: dict[str, Any]) -> None:
    """Cold and warm queries, the index's size; CLI commands (``tag``: loose / packed)."""
    cold_dir = os.path.join(tmp, f"index-{tag}")
    r[f"cold_query_{tag}"] = run_probe("query", root, cold_dir)
    r[f"index_bytes_{tag}"] = index_bytes(cold_dir)
    r[f"warm_query_{tag}"] = [run_probe("query", root, cold_dir) for _ in range(3)]
    r[f"warm_select_{tag}"] = [run_probe("select", root, cold_dir) for _ in range(3)]
    cli_dir = os.path.join(tmp, f"index-cli-{tag}")
    env = {"RUNREC_INDEX_DIR": cli_dir}
    args = ["table", "--store", root, "--where", FILTER, "--format", "csv"]
    r[f"table_cold_{tag}"] = cli(args, env)
    r[f"table_warm_{tag}"] = cli(args, env)
    r[f"ls50_{tag}"] = cli(["ls", "--store", root, "--limit", "50"], env)
    r[f"ls50_warm_{tag}"] = cli(["ls", "--store", root, "--limit", "50"], env)
    shutil.rmtree(cli_dir, ignore_errors=True)


def bench(
    tmp: str,
    n: int,
    pack_every: int,
    mlflow_n: int,
    fsck: bool,
    writer: str,
    build_only: bool = False,
) -> dict[str, Any]:
    repo = make_repo(tmp)
    root = os.path.join(tmp, "store")
    r: dict[str, Any] = {"n": n, "pack_every": pack_every, "filter": FILTER, "writer": writer}
    r["built_at_commit"] = commit()  # the code this process loaded
    r["disk_before"] = disk(tmp)
    loose_batches: list[dict[str, Any]] = []

    def before_pack(store: Any, batch: int) -> None:
        u = usage(store.root, ("runs",))
        u["runs"] = batch
        loose_batches.append(u)

    last = [time.perf_counter()]

    def progress(st: Any, secs: float) -> None:
        if time.perf_counter() - last[0] > 60:
            last[0] = time.perf_counter()
            print(f"  {st.runs:,} runs, {st.runs / secs:,.0f} runs/s, load {loadavg()}", flush=True)

    t0 = time.perf_counter()
    gen = (generate if writer == "full" else generate_simple)(
        root, n, pack_every=pack_every, cwd=repo, progress=progress, before_pack=before_pack
    )
    r["generate_wall_s"] = time.perf_counter() - t0
    r["gen"] = {k: v for k, v in vars(gen).items()}
    r["load_after_write"] = loadavg()
    # MLflow's sqlite store in the same run, same values (bench_query.run_values)
    try:
        client, exp = mlflow_client(f"sqlite:///{os.path.join(tmp, 'mlflow.db')}")
        t0 = time.perf_counter()
        write_mlflow(client, exp, mlflow_n)
        r["mlflow_write_s"] = time.perf_counter() - t0
        r["mlflow_n"] = mlflow_n
    except ImportError as exc:
        r["mlflow_error"] = f"mlflow not installed ({exc}); pip install '.[bench]'"
    if not pack_every:  # the whole store loose: measured, queried, then packed
        r["loose"] = store_usage(root)
        measure_queries(tmp, root, "loose", r)
        from runrec_cluster.store import Store

        packs_n, secs = pack_now(Store(root))
        r["pack_s"], r["packs"] = secs, packs_n
    else:
        for b in loose_batches:  # the per-run figures of the batches, just before packing
            b["per_run_entries"] = b["entries"] / b["runs"]
        r["loose_batches"] = loose_batches
        r["pack_s"], r["packs"] = gen.pack_s, gen.packs
        from runrec_cluster.store import Store

        packs_n, secs = pack_now(Store(root))  # what the last batch left loose
        r["pack_s"] += secs
        r["packs"] += packs_n
    r["packed"] = store_usage(root)
    if build_only:
        return r
    return measure_packed(tmp, r, fsck)


def measure_packed(tmp: str, r: dict[str, Any], fsck: bool) -> dict[str, Any]:
    """The packed store's queries, ``runrec show`` and ``fsck`` (phase 3 on a packed store)."""
    root = os.path.join(tmp, "store")
    for tag in ("packed",):  # a fresh index each time: the cold figures are cold
        for d in (f"index-{tag}", f"index-cli-{tag}"):
            shutil.rmtree(os.path.join(tmp, d), ignore_errors=True)
    r["measured_at_commit"] = commit()
    measure_queries(tmp, root, "packed", r)
    rid = newest_run(root)
    r["show"] = cli(["show", "--store", root, rid])
    r["export"] = cli(["export", "--store", root, rid])  # json, with its trust section
    if fsck:
        r["fsck"] = cli(["fsck", "--store", root])
    r["disk_after"] = disk(tmp)
    return r


def commit() -> str:
    p = subprocess.run(
        ["git", "-C", HERE, "rev-parse", "--short", "HEAD"], capture_output=True, text=True
    )
    return p.stdout.strip() or "unknown"


def newest_run(root: str) -> str:
    from runrec_cluster.store import Store

    ids = list(Store(root).run_ids())
    return ids[-1]


def disk(path: str) -> dict[str, int]:
    s = os.statvfs(path)
    return {"free_bytes": s.f_bavail * s.f_frsize, "free_inodes": s.f_favail}


# ---------------------------------------------------------------------------------------------
# Report
# ---------------------------------------------------------------------------------------------


def _med(xs: list[dict[str, Any]], key: str) -> float:
    vals = sorted(x[key] for x in xs if key in x)
    return vals[len(vals) // 2] if vals else float("nan")


def report(r: dict[str, Any]) -> str:
    n = r["n"]
    g = r["gen"]
    rows = [
        [
            "store",
            f"{g['runs']:,} runs in {g['sweeps']} sweeps; {g['failed']:,} failed, "
            f"{g['annotated']} annotated, {g['reruns']} reruns, {g['retired']} retired",
        ],
        ["write (launch + job side), runs/s", f"{g['runs'] / g['write_s']:,.0f}"],
    ]
    if r.get("built_at_commit") != r.get("measured_at_commit"):
        rows.append(
            [
                "commits: store built / measured (--reuse)",
                f"{r.get('built_at_commit')} / {r.get('measured_at_commit')}",
            ]
        )
    if "mlflow_write_s" in r:
        ml = r["mlflow_n"] / r["mlflow_write_s"]
        rows.append([f"MLflow sqlite, runs/s ({r['mlflow_n']:,} runs)", f"{ml:,.1f}"])
        rows.append(["write ratio, ours / MLflow sqlite", f"{g['runs'] / g['write_s'] / ml:,.0f}x"])
    if "loose" in r:
        lo = r["loose"]
        rows.append(["inodes per run, loose: records / whole store", _per(lo, n, "entries", 2)])
        rows.append(
            ["bytes per run, loose: records apparent / allocated", _bytes(lo["records"], n)]
        )
        rows.append(["bytes per run, loose: store apparent / allocated", _bytes(lo["store"], n)])
    for b in r.get("loose_batches", [])[-1:]:
        rows.append(
            [
                f"inodes per run, loose (records, last batch of {b['runs']:,})",
                f"{b['per_run_entries']:.2f}",
            ]
        )
    pk = r["packed"]
    rows.append(["inodes per run, packed: records / whole store", _per(pk, n, "entries", 4)])
    rows.append(["bytes per run, packed: records apparent / allocated", _bytes(pk["records"], n)])
    rows.append(["bytes per run, packed: store apparent / allocated", _bytes(pk["store"], n)])
    rows.append(["packing, runs/s", f"{n / r['pack_s']:,.0f} ({r['packs']} packs)"])
    for tag in ("loose", "packed"):
        if f"cold_query_{tag}" not in r:
            continue
        c = r[f"cold_query_{tag}"]
        rows.append(
            [
                f"cold rr.query, {tag}, s (inside the process / with start and imports)",
                f"{c.get('seconds', float('nan')):.2f} / {c['wall_s']:.2f}",
            ]
        )
        rows.append([f"index bytes per run ({tag})", f"{r[f'index_bytes_{tag}'] / n:,.0f}"])
        wq, ws = r[f"warm_query_{tag}"], r[f"warm_select_{tag}"]
        rows.append(
            [
                f"warm rr.query (DataFrame, every column), {tag}, ms: inside / with start",
                f"{_med(wq, 'seconds') * 1000:,.0f} / {_med(wq, 'wall_s') * 1000:,.0f}",
            ]
        )
        rows.append(
            [
                f"warm index: change check + filter ({tag}), ms: inside / of it the check",
                f"{_med(ws, 'seconds') * 1000:,.1f} / {_med(ws, 'update_s') * 1000:,.1f}",
            ]
        )
        for key, label in (
            ("table_cold", "runrec table --where, cold"),
            ("table_warm", "runrec table --where, warm"),
            ("ls50", "runrec ls --limit 50, first"),
            ("ls50_warm", "runrec ls --limit 50, again"),
        ):
            c = r[f"{key}_{tag}"]
            rows.append([f"{label} ({tag}), s", f"{c['wall_s']:.2f}" + _rc(c)])
    rows.append(["runrec show <newest>, s", f"{r['show']['wall_s']:.2f}" + _rc(r["show"])])
    if "export" in r:
        rows.append(
            ["runrec export <newest>, s", f"{r['export']['wall_s']:.2f}" + _rc(r["export"])]
        )
    if "fsck" in r:
        rows.append(["runrec fsck, s", f"{r['fsck']['wall_s']:.1f}" + _rc(r["fsck"])])
    what = "full generator" if r.get("writer", "full") == "full" else "two versions a run"
    return "\n".join([f"### Scale, {n:,} runs ({what})", "", table(["measure", "value"], rows)])


def _rc(c: dict[str, Any]) -> str:
    return "" if c.get("rc", 0) == 0 else f" (exit {c['rc']})"


def _per(u: dict[str, Any], n: int, key: str, digits: int) -> str:
    return f"{u['records'][key] / n:.{digits}f} / {u['store'][key] / n:.{digits}f}"


def _bytes(u: dict[str, int], n: int) -> str:
    return f"{u['bytes'] / n:,.0f} / {u['allocated'] / n:,.0f}"


def main() -> int:
    if len(sys.argv) == 5 and sys.argv[1] == "--probe":
        print(json.dumps(probe(sys.argv[2], sys.argv[3], sys.argv[4])))
        return 0
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default=os.path.join(HERE, "results"))
    p.add_argument("--quick", action="store_true")
    p.add_argument("--n", type=int, default=None, help="runs (default 100,000; --quick 1,200)")
    p.add_argument("--pack-every", type=int, default=None)
    p.add_argument("--mlflow-n", type=int, default=None, help="default 2,000 (--quick 100)")
    p.add_argument("--no-fsck", action="store_true")
    p.add_argument(
        "--writer",
        choices=("full", "simple"),
        default="full",
        help="full: scale_gen.generate (sweeps, job side...); simple: two versions a run",
    )
    p.add_argument(
        "--keep",
        default=None,
        help="build the store in this new directory and keep it (with build.json) for --reuse",
    )
    p.add_argument(
        "--reuse",
        default=None,
        help="a directory --keep left: measure its packed store again (queries, ls, show, fsck) "
        "with the code as it is now; the write and size figures are those of the build",
    )
    p.add_argument(
        "--build-only", action="store_true", help="with --keep: build and pack, measure later"
    )
    a = p.parse_args()
    if a.reuse:
        return reuse(a.reuse, a.out, not a.no_fsck)
    n = a.n or (1_200 if a.quick else 100_000)
    pack_every = a.pack_every if a.pack_every is not None else (0 if n <= 100_000 else 100_000)
    mlflow_n = a.mlflow_n or (100 if a.quick else 2_000)
    os.makedirs(a.out, exist_ok=True)
    base = os.environ.get("BENCH_TMP") or tempfile.gettempdir()
    if a.keep:
        os.makedirs(a.keep)  # a new directory: never measured over an older store
        tmp = os.path.abspath(a.keep)
    else:
        tmp = tempfile.mkdtemp(prefix="runrec-bench-scale-", dir=base)
    res: dict[str, Any] = {"machine": machine(), "load_before": loadavg(), "quick": a.quick}
    print(f"bench_scale: {n:,} runs in {tmp}; free {disk(tmp)}", flush=True)
    t0 = time.perf_counter()
    try:
        res["scale"] = bench(
            tmp, n, pack_every, mlflow_n, not a.no_fsck, a.writer, bool(a.keep and a.build_only)
        )
        if a.keep and a.build_only:
            res["seconds"] = time.perf_counter() - t0
            print(f"bench_scale: built and kept in {tmp} ({res['seconds']:.0f} s); --reuse it")
            return 0
    finally:
        if a.keep:
            with open(os.path.join(tmp, "build.json"), "w") as f:
                json.dump(res, f, indent=1, default=str)
        else:
            shutil.rmtree(tmp, ignore_errors=True)
    res["load_after"] = loadavg()
    res["seconds"] = time.perf_counter() - t0
    md = report(res["scale"])
    print(md + "\n", flush=True)
    name = "scale-quick" if a.quick else ("scale" if a.n is None else f"scale-{n}")
    name += "-simple" if a.writer == "simple" else ""
    with open(os.path.join(a.out, f"{name}.json"), "w") as f:
        json.dump(res, f, indent=1, default=str)
    with open(os.path.join(a.out, f"{name}.md"), "w") as f:
        f.write(md + "\n")
    print(
        f"bench_scale: {res['seconds']:.0f} s; load average {res['load_before']} -> {res['load_after']}"
    )
    return 0


def reuse(tmp: str, out: str, fsck: bool) -> int:
    """``--reuse``: the packed measures again on the store ``--keep`` left in ``tmp``."""
    with open(os.path.join(tmp, "build.json")) as f:
        res = json.load(f)
    res["load_before_reuse"] = loadavg()
    t0 = time.perf_counter()
    measure_packed(tmp, res["scale"], fsck)
    res["reuse_seconds"] = time.perf_counter() - t0
    res["load_after"] = loadavg()
    md = report(res["scale"])
    print(md + "\n", flush=True)
    n = res["scale"]["n"]
    name = f"scale-{n}" + ("-simple" if res["scale"].get("writer") == "simple" else "")
    with open(os.path.join(out, f"{name}.json"), "w") as f:
        json.dump(res, f, indent=1, default=str)
    with open(os.path.join(out, f"{name}.md"), "w") as f:
        f.write(md + "\n")
    print(f"bench_scale --reuse: {res['reuse_seconds']:.0f} s; load {res['load_after']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
