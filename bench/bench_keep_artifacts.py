"""Cost of keeping a copy of an artifact (issue 15, store/kept.py, job/artifacts.py).

For a file of ``--mb`` MiB of random bytes (in the page cache), medians of ``--reps``:

1. ``hash``: what ``log_artifact`` did before (BLAKE3 of the file);
2. ``keep``: what it adds now (``job.artifacts.keep``: a reflink or a copy into a new store,
   then the re-hash of the copy);
3. the ways a file can be kept, alone: ``clone_or_copy`` (a reflink where the filesystem makes
   one, else a copy: the table says which), and a hard link (which runrec never makes to a
   user's file: shown for scale).

Prints a Markdown table.

    python bench/bench_keep_artifacts.py [--mb 100] [--reps 5]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time

import runrec_cluster as rr
from runrec_cluster.capture.data import hash_path
from runrec_cluster.job import artifacts
from runrec_cluster.store import kept


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--mb", type=int, default=100)
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--out", default=None)
    ap.add_argument("--quick", action="store_true")
    a = ap.parse_args()
    if a.quick:
        a.mb, a.reps = 1, 2
    tmp = tempfile.mkdtemp(prefix="runrec-bench-keep-", dir=os.environ.get("BENCH_TMP"))
    samples: dict[str, list[float]] = {"hash": [], "keep": [], "clone_or_copy": [], "link": []}
    how = ""
    try:
        src = os.path.join(tmp, "model.bin")
        for i in range(a.reps):
            with open(src, "wb") as f:
                f.write(os.urandom(a.mb << 20))
            store = rr.Store(os.path.join(tmp, f"store{i}"))
            store.ensure_writable()
            t0 = time.perf_counter()
            res, _ = hash_path(src)
            t1 = time.perf_counter()
            fields = artifacts.keep(store, res, float(a.mb + 1))
            t2 = time.perf_counter()
            samples["hash"].append((t1 - t0) * 1000)
            samples["keep"].append((t2 - t1) * 1000)
            dst = os.path.join(tmp, "dst")
            t0 = time.perf_counter()
            how = kept.clone_or_copy(src, dst)
            samples["clone_or_copy"].append((time.perf_counter() - t0) * 1000)
            os.unlink(dst)
            t0 = time.perf_counter()
            os.link(src, dst)
            samples["link"].append((time.perf_counter() - t0) * 1000)
            os.unlink(dst)
            assert fields.get("kept"), fields
            kept.remove_tree(store.root)  # read-only kept copies inside
    finally:
        kept.remove_tree(tmp)
    med = {k: statistics.median(v) for k, v in samples.items()}
    print(f"{a.mb} MiB file, median of {a.reps}; clone_or_copy made a **{how}** here\n")
    print("| step | ms |")
    print("|---|---|")
    print(f"| BLAKE3 of the file (log_artifact before) | {med['hash']:.1f} |")
    print(f"| keep: {how} + re-hash of the copy (added now) | {med['keep']:.1f} |")
    print(f"| clone_or_copy alone ({how}) | {med['clone_or_copy']:.1f} |")
    print(f"| hard link alone (never used for a user's file) | {med['link']:.3f} |")
    if a.out:
        with open(os.path.join(a.out, "keep_artifacts.json"), "w") as f:
            json.dump({"mb": a.mb, "how": how, "samples_ms": samples}, f, indent=1)


if __name__ == "__main__":
    main()
