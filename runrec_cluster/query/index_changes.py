"""What changed in a store since the index last looked: the run directories and their times
(a full scan: loose run directories and packs), and the new lines of the change journal
(``STORE/changes``). ``index.py`` decides what to read."""

from __future__ import annotations

import os
import re

from runrec_cluster.store import Store, layout

# one journal line: ``<run id> <seq>`` (layout.RUN_ID_RE's alphabet)
_LINE_RE = re.compile(rb"^([0-9a-hjkmnp-tv-z]{26}) ([0-9]+)$", re.MULTILINE)


def scan_runs(store: Store) -> dict[str, int]:
    """run id -> signature (``Store.run_signature``): the directory mtime (ns) of every loose
    run, or the newest mtime of the packs holding it (``store/packs.py``), whichever is newer."""
    base = layout.runs_dir(store.root)
    out: dict[str, int] = {}
    for shard in store.shards():
        for rid, m in store.pack_signatures(shard).items():
            out[rid] = max(out.get(rid, 0), m)
    try:
        shards = os.listdir(base)
    except FileNotFoundError:
        return out
    for shard in shards:
        if shard.startswith("."):
            continue
        try:
            with os.scandir(os.path.join(base, shard)) as it:
                for e in it:
                    if layout.RUN_ID_RE.match(e.name):
                        try:
                            out[e.name] = max(out.get(e.name, 0), e.stat().st_mtime_ns)
                        except FileNotFoundError:
                            continue
        except (NotADirectoryError, FileNotFoundError):
            continue
    return out


def read_journal(
    root: str, positions: dict[str, int], since: str
) -> tuple[dict[str, int], dict[str, int]]:
    """Read the change journal (``STORE/changes``) past ``positions`` (file -> bytes already
    read), in buckets from ``since`` on. Returns the new positions (of those buckets only)
    and run id -> highest seq named in the new lines. A last line without its newline is
    being written: it is read next time."""
    base = layout.changes_dir(root)
    new_pos: dict[str, int] = {}
    changed: dict[str, int] = {}
    try:
        buckets = sorted(b for b in os.listdir(base) if layout.BUCKET_RE.match(b) and b >= since)
    except (FileNotFoundError, NotADirectoryError):
        return new_pos, changed
    for b in buckets:
        try:
            entries = list(os.scandir(os.path.join(base, b)))
        except (FileNotFoundError, NotADirectoryError):
            continue
        for e in entries:
            if not e.name.endswith(".log"):
                continue
            rel = f"{b}/{e.name}"
            off = positions.get(rel, 0)
            try:
                size = e.stat().st_size
            except FileNotFoundError:
                continue
            if size > off:
                try:
                    with open(e.path, "rb") as f:
                        f.seek(off)
                        data = f.read(size - off)
                except OSError:
                    data = b""
                done = data.rfind(b"\n") + 1
                for rid_b, seq_b in _LINE_RE.findall(data[:done]):  # other lines are skipped
                    rid, seq = rid_b.decode("ascii"), int(seq_b)
                    if changed.get(rid, 0) < seq:
                        changed[rid] = seq
                off += done
            new_pos[rel] = off
    return new_pos, changed
