"""The index rows of packed runs, kept beside their pack, so that a cold index build reads one
Arrow file per pack instead of folding every run (``store/packs.py``, docs/query.md).

    STORE/packs/<shard>/<pack id>.rows.arrow     derived, safe to delete; written by
                                                 ``runrec pack`` right after the pack

The rows are the flat view (``columns.flat_row``) of each run of the pack, folded from every
version of the run in any pack of its shard when the rows are written (format 2; a run's
launch version is often in an older *launch pack* of its sweep, ``Store.write_versions``).
A cold build uses the row of a run only when nothing can have changed it since: the run has
no loose directory (which may hold versions written later), and this pack is the newest pack
holding it (its signature, ``Store.run_signature``, is this pack's time, and no other pack
of that time holds it). Rows of format 1 (an earlier runrec: folded from that pack's versions
only) are used only for a run that one pack alone holds. A full scan of a warm index uses them
too, for the runs that were just packed (their signature changed, not their content). Any
other run, or a rows file that is missing, damaged or written by a runrec with fewer columns,
is folded from its versions as before.
"""

from __future__ import annotations

import os
import secrets
from collections import Counter
from typing import Any

from runrec_cluster.errors import CorruptRecord
from runrec_cluster.query.columns import LINEAGE_COLUMN, flat_row, query_libs
from runrec_cluster.query.index_table import concat_all, lineage_cell, rows_to_table
from runrec_cluster.record import CONTEXT_KEY, RecordVersion, fold
from runrec_cluster.store import Store, codec, layout, packs
from runrec_cluster.store import policy as perms

ROWS_FORMAT = b"2"  # rows folded from every pack holding the run (b"1": from this pack only)
ROWS_FORMATS = (b"1", ROWS_FORMAT)


def write_rows(store: Store, pack: str, pk: Any) -> int:
    """Fold every run of the pack at ``pack`` (with its versions in the other packs of the
    shard) and write their flat rows beside it; the number of rows. ``pk``:
    ``columns.package_reader(store)``."""
    idx = packs.read_index(pack)
    mine: dict[str, dict[str, bytes]] = {rid: dict(es) for rid, es in packs.iter_pack(idx)}
    shard = os.path.basename(os.path.dirname(pack))
    for other in store.pack_indexes(shard):  # e.g. the sweep's launch pack
        if other.path == idx.path:
            continue
        wanted = {other.runs[r][0] for r in mine if r in other.runs}
        for n in sorted(wanted):
            for rid, entries in packs.read_chunk(other, n).items():
                if rid in mine:
                    for name, raw in entries:  # a version in two packs is read once
                        mine[rid].setdefault(name, raw)
    rows = []
    for rid in sorted(mine):
        vs = []
        for name, raw in sorted(mine[rid].items()):
            label = packs.entry_label(pack, rid, name)
            v = codec.unpack(raw, RecordVersion, label)
            vs.append(store.expand_context(v, label, []) if CONTEXT_KEY in v.patch else v)
        try:
            rec = fold(vs)
        except CorruptRecord:
            continue  # folded (and reported) by the index from the versions
        row = flat_row(rec, pk)
        row[LINEAGE_COLUMN] = lineage_cell(rec)
        rows.append(row)
    table = rows_to_table(rows)
    meta = {b"runrec.pack_rows": ROWS_FORMAT, b"pack": os.path.basename(pack).encode()}
    table = table.replace_schema_metadata(meta)
    path = packs.rows_path(pack)
    tmp = os.path.join(os.path.dirname(path), f"{layout.TMP_PREFIX}{secrets.token_hex(8)}")
    libs = query_libs()
    opts = libs.ipc.IpcWriteOptions(compression="zstd")  # a few hundred bytes a run, not 1 KB
    with (
        libs.pa.OSFile(tmp, "wb") as sink,
        libs.ipc.new_file(sink, table.schema, options=opts) as w,
    ):
        w.write_table(table)
    pol = perms.policy_for(tmp)
    os.chmod(tmp, pol.file_mode(0o444) if pol.enforced else 0o444 & ~_umask())
    os.replace(tmp, path)
    return len(rows)


def _umask() -> int:
    m = os.umask(0)
    os.umask(m)
    return m


def packed_rows(
    store: Store,
    signatures: dict[str, int],
    required: frozenset[str],
    mtime_column: str,
    wanted: set[str],
) -> tuple[Any, set[str]]:
    """(table or None, run ids it covers): the kept rows of the ``wanted`` runs that only one
    pack holds and that changed nowhere else since (see the module docstring), with
    ``mtime_column`` set to their signature. A pack none of whose runs is wanted is not read."""
    libs = query_libs()
    pa, pc = libs.pa, libs.pc
    found = []
    covered: set[str] = set()
    for shard in store.shards():
        indexes = store.pack_indexes(shard)
        count: Counter[str] = Counter()
        newest: dict[str, int] = {}  # run id -> the newest time of a pack holding it
        for idx in indexes:
            for r in idx.runs:
                count[r] += 1
                newest[r] = max(newest.get(r, 0), idx.mtime_ns)
        at_newest = Counter(r for idx in indexes for r in idx.runs if newest[r] == idx.mtime_ns)
        try:  # a run with a loose directory may have versions the pack lacks: folded instead
            loose = set(os.listdir(os.path.join(layout.runs_dir(store.root), shard)))
        except OSError:
            loose = set()
        for idx in indexes:
            mine = [
                r
                for r in idx.runs
                if r in wanted
                and r not in loose
                and signatures.get(r) == idx.mtime_ns
                and at_newest[r] == 1
            ]
            got = _read_rows(packs.rows_path(idx.path), required) if mine else None
            if got is None:
                continue
            table, fmt = got
            if fmt != ROWS_FORMAT:  # folded from this pack alone: only runs no other pack holds
                mine = [r for r in mine if count[r] == 1]
                if not mine:
                    continue
            table = table.filter(
                pc.is_in(table.column("run_id"), value_set=pa.array(mine, pa.string()))
            )
            table = table.append_column(
                mtime_column, pa.array([idx.mtime_ns] * table.num_rows, pa.int64())
            )
            covered.update(table.column("run_id").to_pylist())
            found.append(table)
    return (concat_all(found) if found else None), covered


def _read_rows(path: str, required: frozenset[str]) -> tuple[Any, bytes] | None:
    """(table, rows format) of a rows file; None when it is missing, damaged, of an unknown
    format or lacks a column."""
    libs = query_libs()
    try:
        with libs.pa.memory_map(path, "r") as source:
            table = libs.ipc.open_file(source).read_all()
    except (FileNotFoundError, OSError, libs.pa.ArrowInvalid):
        return None
    fmt = (table.schema.metadata or {}).get(b"runrec.pack_rows")
    if fmt not in ROWS_FORMATS:
        return None
    if table.num_rows and not (required - {"_dir_mtime_ns"}) <= set(table.column_names):
        return None
    return table, fmt
