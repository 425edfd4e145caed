"""Packs (issue 17): inodes and bytes per run loose and packed, the cost of packing, and a cold
index build of packed runs against loose ones.

N runs (50 config values, 20 metrics, 10 tags: ``bench_query.write_ours``, the real write path)
are written loose; then:

1. ``loose``: entries (files + directories) and bytes under ``runs/`` per run (apparent size,
   and the blocks the filesystem allocates), a cold index build (``Index.update(rebuild=True)``
   into a fresh index directory: every run folded);
2. ``pack``: ``packs.pack_store`` (the version files into packs, loose files deleted) and the
   kept index rows (``index_packs.write_rows``), as ``runrec pack`` does;
3. ``packed``: entries and bytes under ``runs/`` and ``packs/`` per run, a cold index build
   (median of ``--reps``), a warm query (``Index.select`` with ``FILTER``).

The change journal and the index are left out of the counts (derived, deletable). Prints a
Markdown table and writes ``packs.json`` / ``packs.md`` to ``--out``.

    python bench/bench_packs.py [--n 100000] [--quick] [--reps 3] [--out DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from typing import Any

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
from bench_foundation import loadavg, machine, med, table  # noqa: E402
from bench_query import FILTER, write_ours  # noqa: E402  (sets RUNREC_AUTO_PACK=0: packed here)


def usage(root: str, parts: tuple[str, ...]) -> dict[str, int]:
    """Entries (files and directories), apparent bytes and allocated bytes under ``parts``."""
    n = size = blocks = 0
    for part in parts:
        for d, dirs, files in os.walk(os.path.join(root, part)):
            n += len(dirs) + len(files)
            for f in files:
                st = os.lstat(os.path.join(d, f))
                size += st.st_size
                blocks += st.st_blocks * 512
    return {"entries": n, "bytes": size, "allocated": blocks}


def cold_index(root: str, where: str) -> float:
    from runrec_cluster.query.index import Index
    from runrec_cluster.store import Store

    t0 = time.perf_counter()
    Index(Store(root), index_dir=where).update(rebuild=True)
    return time.perf_counter() - t0


def bench(tmp: str, n: int, reps: int) -> dict[str, Any]:
    from runrec_cluster.expr import parse
    from runrec_cluster.query.columns import package_reader
    from runrec_cluster.query.index import Index
    from runrec_cluster.query.index_packs import write_rows
    from runrec_cluster.store import Store, packs

    root = os.path.join(tmp, "store")
    store = Store(root)
    store.ensure_writable()
    t0 = time.perf_counter()
    write_ours(store, n)
    r: dict[str, Any] = {"n": n, "write_s": time.perf_counter() - t0}
    r["loose"] = usage(root, ("runs",))
    r["cold_loose_s"] = cold_index(root, os.path.join(tmp, "index-loose"))
    t0 = time.perf_counter()
    st = packs.pack_store(root)
    r["pack_s"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    pk = package_reader(store)
    for p in st.packs:
        write_rows(store, p, pk)
    r["rows_s"] = time.perf_counter() - t0
    r["packs"] = len(st.packs)
    r["packed"] = usage(root, ("runs", "packs"))
    r["packed_without_rows"] = {
        "bytes": sum(os.path.getsize(p) for p in st.packs),
        "entries": usage(root, ("runs", "packs"))["entries"] - len(st.packs),
    }
    r["cold_packed_s"] = [cold_index(root, os.path.join(tmp, f"index-{i}")) for i in range(reps)]
    idx = Index(Store(root), index_dir=os.path.join(tmp, "index-0"))
    expr = parse(FILTER)
    warm = []
    for _ in range(reps):
        t0 = time.perf_counter()
        idx.update()
        idx.select(expr, columns=["run_id"], as_arrow=True)
        warm.append(time.perf_counter() - t0)
    r["warm_query_s"] = warm
    return r


def report(r: dict[str, Any]) -> str:
    n = r["n"]
    lo, pa_, pw = r["loose"], r["packed"], r["packed_without_rows"]
    rows = [
        ["entries (inodes) per run, loose", f"{lo['entries'] / n:.3f}"],
        ["entries (inodes) per run, packed (packs + kept rows)", f"{pa_['entries'] / n:.4f}"],
        [
            "bytes per run, loose (apparent / allocated)",
            f"{lo['bytes'] / n:.0f} / {lo['allocated'] / n:.0f}",
        ],
        [
            "bytes per run, packed with kept rows (apparent / allocated)",
            f"{pa_['bytes'] / n:.0f} / {pa_['allocated'] / n:.0f}",
        ],
        ["bytes per run, packs alone", f"{pw['bytes'] / n:.0f}"],
        ["write, runs/s (loose)", f"{n / r['write_s']:,.0f}"],
        ["pack, runs/s (version files into packs, loose deleted)", f"{n / r['pack_s']:,.0f}"],
        ["kept index rows, runs/s", f"{n / r['rows_s']:,.0f}"],
        ["cold index build, loose, s", f"{r['cold_loose_s']:.2f}"],
        ["cold index build, packed, s (median)", f"{med(r['cold_packed_s']):.2f}"],
        ["warm query, packed, ms (median)", f"{med(r['warm_query_s']) * 1000:.1f}"],
    ]
    return "\n".join(
        [f"### Packs, {n:,} runs ({r['packs']} packs)", "", table(["measure", "value"], rows)]
    )


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default=os.path.join(HERE, "results"))
    p.add_argument("--quick", action="store_true")
    p.add_argument("--n", type=int, default=None, help="runs (default 100,000; --quick 2,000)")
    p.add_argument("--reps", type=int, default=3)
    a = p.parse_args()
    n = a.n or (2_000 if a.quick else 100_000)
    os.makedirs(a.out, exist_ok=True)
    base = os.environ.get("BENCH_TMP") or tempfile.gettempdir()
    tmp = tempfile.mkdtemp(prefix="runrec-bench-packs-", dir=base)
    res: dict[str, Any] = {"machine": machine(), "load_before": loadavg(), "quick": a.quick}
    t0 = time.perf_counter()
    try:
        res["packs"] = bench(tmp, n, a.reps)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    res["load_after"] = loadavg()
    res["seconds"] = time.perf_counter() - t0
    md = report(res["packs"])
    print(md + "\n", flush=True)
    name = "packs-quick" if a.quick else "packs"
    with open(os.path.join(a.out, f"{name}.json"), "w") as f:
        json.dump(res, f, indent=1, default=str)
    with open(os.path.join(a.out, f"{name}.md"), "w") as f:
        f.write(md + "\n")
    print(
        f"bench_packs: {res['seconds']:.0f} s; load average {res['load_before']} -> {res['load_after']}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
