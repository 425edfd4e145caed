"""Packing in the background of ordinary commands (docs/store-layout.md, *Packs*).

After a full scan (``index.py``: at least every 15 minutes of queries), the index counts the
finished runs still loose; when there are ``AUTO_PACK_RUNS`` or more (``$RUNREC_AUTO_PACK``; 0
turns it off), it starts ``runrec pack --min-age AUTO_PACK_MIN_AGE_S`` as a detached process and
goes on: the command that triggered it does not wait. At most one start per index and
``AUTO_PACK_EVERY_S`` (a stamp file in the index directory); two packers at once (two users'
queries, two nodes) are safe anyway (store/packs.py).
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from typing import Any

from runrec_cluster.record import TERMINAL_STATES
from runrec_cluster.store import Store, layout

AUTO_PACK_RUNS = 10_000  # loose finished runs that start a background pack ($RUNREC_AUTO_PACK)
AUTO_PACK_MIN_AGE_S = 600.0  # only runs unchanged this long ($RUNREC_AUTO_PACK_MIN_AGE_S)
AUTO_PACK_EVERY_S = 3600.0  # at most one start per index directory and hour
STAMP = "autopack.stamp"
_started: list[subprocess.Popen[bytes]] = []  # reaped at the next call (no zombies left)


def _setting(name: str, default: float) -> float:
    try:
        return float(os.environ.get(name, default))
    except ValueError:
        return default


def loose_finished(store: Store, tables: list[Any], at_least: float = 0) -> int:
    """How many runs finished in the index ``tables`` (None: absent) still have a loose
    directory; 0 when fewer than ``at_least`` run directories exist at all (then the tables
    are not read)."""
    base = layout.runs_dir(store.root)
    loose: list[str] = []
    for shard in store.shards():
        try:
            loose += os.listdir(os.path.join(base, shard))
        except OSError:
            continue
    if len(loose) < at_least:
        return 0
    done: set[str] = set()
    for t in tables:
        if t is None or not t.num_rows or "state" not in t.column_names:
            continue
        ids, states = t.column("run_id").to_pylist(), t.column("state").to_pylist()
        done.update(r for r, s in zip(ids, states, strict=True) if s in TERMINAL_STATES)
    return sum(1 for r in loose if r in done)


def maybe_pack(store: Store, index_dir: str, tables: list[Any]) -> bool:
    """Start a background ``runrec pack`` when enough finished runs are loose; True if it did."""
    for p in list(_started):
        if p.poll() is not None:
            _started.remove(p)
    threshold = _setting("RUNREC_AUTO_PACK", AUTO_PACK_RUNS)
    if threshold <= 0:
        return False
    stamp = os.path.join(index_dir, STAMP)
    try:
        if time.time() - os.stat(stamp).st_mtime < AUTO_PACK_EVERY_S:
            return False
    except OSError:
        pass
    if loose_finished(store, tables, threshold) < threshold:
        return False
    try:
        with open(stamp, "w"):
            pass
        min_age = _setting("RUNREC_AUTO_PACK_MIN_AGE_S", AUTO_PACK_MIN_AGE_S)
        cmd = [sys.executable, "-m", "runrec_cluster", "pack", "--store", store.root]
        cmd += ["--min-age", str(min_age)]
        dev = subprocess.DEVNULL
        proc = subprocess.Popen(cmd, stdin=dev, stdout=dev, stderr=dev, start_new_session=True)
    except OSError:
        return False  # best effort: an explicit `runrec pack` does the same
    _started.append(proc)
    return True
