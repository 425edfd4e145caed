"""The derived index: the flat run view (``columns.py``) as one Arrow IPC file, kept up to date
incrementally. Never the source of truth: delete it and the next query rebuilds it.

    STORE/index/runs-v1.arrow       the default place
    DIR/<sha256(store root)[:16]>/runs-v1.arrow
                                    with ``index_dir=DIR`` / ``--index-dir`` / $RUNREC_INDEX_DIR
                                    (a local disk when the store is on NFS), and automatically
                                    under ~/.cache/runrec/index when the store is read-only

One row per run, plus ``_dir_mtime_ns``: the modification time of the run's directory when it
was read. Every record version is a new file in that directory, so a new version changes it.

How an update finds what changed, without reading every record:

- **The change journal** (the usual way). ``Store.write_version`` appends ``<run_id> <seq>`` to
  ``STORE/changes/<UTC hour>/<host>-<pid>-<token>.log`` once the version is in place: one file
  per writing process and hour, so a file has one writer and appends never interleave. The
  index keeps how far it has read each file of the last ``JOURNAL_WINDOW_S`` (3 h); an update
  lists those few buckets, stats their files and reads only the new lines, then reads the runs
  they name. No stat per run: a warm update of 100,000 runs costs a few directory listings. A
  run whose listing does not yet show the version its journal line names (an NFS client's
  cached directory) stays *pending* and is read again next time.
- **A full scan**: the shards are listed and every run directory stat'ed; runs that are new or
  whose directory time changed are read, runs that vanished drop out. Made when there is no
  index, on ``rebuild``/``full``, and when the last full scan is older than ``FULL_SCAN_S``
  (15 min, ``$RUNREC_INDEX_FULL_SCAN_S``). It finds what the journal cannot tell: runs deleted,
  moved or copied in by hand, a writer killed between its version and its journal line, a
  writer whose clock is more than 3 h behind, writers of a runrec without the journal. A file
  system with coarse times (NFS: a second or more) may give a write the same directory time as
  the stat before an earlier read: so runs changed within ``SLACK_NS`` of the newest change
  seen are *hot*, read again at the next full scan, and settle once a full scan starts more
  than ``SLACK_NS`` after the one that read them.

Two files: ``runs-v1.arrow`` (the base) and ``runs-v1.delta.arrow`` (the rows changed since the
base was written, with the latest metadata). An update that finds new or changed runs rewrites
only the delta (small), unless runs vanished or the delta holds more than ``DELTA_MIN_ROWS``
rows and a tenth of the base: then both are folded into a new base and the delta removed. A
query reads both side by side without copying the base and hides the base rows the delta
supersedes. Each base has a random ``gen``; a delta names the ``base_gen`` it belongs to, and
a delta of another base (a concurrent updater's, written around a fold) is ignored.

Concurrency: each file is written to a temporary file beside it and renamed into place, so a
reader sees a whole old file or a whole new one, never a part (also on NFS). Two updaters at
once both write a complete index; the last rename wins and the other's work is redone next
time. A record written while an update runs is read next time: its directory's time moved
after the stat. No lock anywhere.

The trust flags (``retired``, ``suspect``) depend on every run's lineage, so they are not stored:
they are computed when a query asks for them, from the ``_lineage`` column and the retirement
records (nothing is computed when nothing was ever retired).
"""

from __future__ import annotations

import hashlib
import json
import os
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import msgspec

from runrec_cluster.errors import StoreError
from runrec_cluster.expr import Expr
from runrec_cluster.lineage.records import list_retirements, problem_text
from runrec_cluster.lineage.trust import trust_for
from runrec_cluster.query.autopack import maybe_pack
from runrec_cluster.query.columns import (
    BASE_COLUMNS,
    LINEAGE_COLUMN,
    TRUST_COLUMNS,
    ColumnNames,
    flat_row,
    lineage_part,
    order_columns,
    package_reader,
    query_libs,
    sort_order,
)
from runrec_cluster.query.index_changes import read_journal, scan_runs
from runrec_cluster.query.index_packs import packed_rows
from runrec_cluster.query.index_table import (
    column_values,
    combine,
    concat,
    join_columns,
    json_columns,
    live_mask,
    live_rows,
    rows_to_table,
    run_ids,
    without,
)
from runrec_cluster.record import RunRecord, fold
from runrec_cluster.store import ReadProblem, Store, fs, layout
from runrec_cluster.store import policy as perms

INDEX_FORMAT = 1
# every index row has these; an index without one of them was written before that column was
# added (BASE_COLUMNS only grows): it is rebuilt, never read as a column of nulls
STORED_COLUMNS = frozenset(BASE_COLUMNS) - frozenset(TRUST_COLUMNS)
INDEX_FILE = f"runs-v{INDEX_FORMAT}.arrow"
DELTA_FILE = f"runs-v{INDEX_FORMAT}.delta.arrow"  # rows changed since the base file was written
DELTA_MIN_ROWS = 2000  # the delta is folded into the base when it holds more rows than this
DELTA_SHARE = 10  # ... and more than 1/DELTA_SHARE of the base's rows
MTIME_COLUMN = "_dir_mtime_ns"
SLACK_NS = 2_000_000_000
FULL_SCAN_S = 900.0  # a full scan at least this often ($RUNREC_INDEX_FULL_SCAN_S)
JOURNAL_WINDOW_S = 3 * 3600  # journal buckets read: from this long before now
_META = b"runrec.index"


def full_scan_seconds() -> float:
    try:
        return float(os.environ.get("RUNREC_INDEX_FULL_SCAN_S", FULL_SCAN_S))
    except ValueError:
        return FULL_SCAN_S


def default_cache_dir() -> str:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "runrec", "index")


def _store_key(store: Store) -> str:
    return hashlib.sha256(store.root.encode()).hexdigest()[:16]


def resolve_dir(store: Store, index_dir: str | os.PathLike[str] | None = None) -> str:
    """Where the index of ``store`` lives (see the module docstring)."""
    explicit = index_dir or os.environ.get("RUNREC_INDEX_DIR")
    if explicit:
        return os.path.join(os.path.abspath(os.fspath(explicit)), _store_key(store))
    here = store.check_inside(os.path.join(store.root, "index"))  # never through a link out
    if os.access(here if os.path.isdir(here) else store.root, os.W_OK):
        return here
    return os.path.join(default_cache_dir(), _store_key(store))


@dataclass
class UpdateStats:
    path: str
    runs: int = 0  # rows in the index after the update
    read: int = 0  # runs whose records were read
    removed: int = 0
    scanned: int = 0  # run directories stat'ed
    rebuilt: bool = False
    full_scan: bool = False
    seconds: float = 0.0
    problems: list[str] = field(default_factory=list)
    packing: bool = False  # a background `runrec pack` was started (autopack.py)


@dataclass
class _Changes:
    """What an update found to do: the runs to read again, the runs gone, and what the new
    metadata keeps (journal positions, hot runs, the scan time)."""

    full: bool
    changed: set[str]
    gone: set[str]
    expect: dict[str, int]  # run id -> the highest seq the journal (or a pending run) names
    dir_mtime: dict[str, int]  # run id -> directory mtime (ns) when stat'ed
    positions: dict[str, int]  # journal file -> bytes read, after this update
    old_positions: dict[str, int]
    old_hot: dict[str, int]
    settle: bool  # hot runs read again now settle
    scan_time: float  # of the last full scan


def _ints(meta: dict[str, Any], key: str) -> dict[str, int]:
    return {k: int(v) for k, v in meta.get(key, {}).items()}


def _old_signatures(base_t: Any, delta_t: Any) -> dict[str, int]:
    """run id -> directory mtime when last read; the delta's rows replace the base's."""
    sig: dict[str, int] = {}
    for t in (base_t, delta_t):
        if t is not None:
            ids = t.column("run_id").to_pylist()
            mts = t.column(MTIME_COLUMN).to_pylist()
            sig.update(zip(ids, mts, strict=True))
    return sig


class Index:
    """The index of one store. ``update()`` brings it up to date; ``select()`` queries it."""

    def __init__(self, store: Store, index_dir: str | os.PathLike[str] | None = None) -> None:
        self.store = store
        self.dir = resolve_dir(store, index_dir)
        self.path = os.path.join(self.dir, INDEX_FILE)
        self.delta_path = os.path.join(self.dir, DELTA_FILE)

    # -- reading -------------------------------------------------------------------------------

    def load(self) -> tuple[Any, dict[str, Any]] | None:
        """(table, metadata) of the index: the base file with the delta's rows in place of the
        ones they supersede (a copy), or None when there is no index (or it is from another
        format or store: then it is rebuilt)."""
        parts = self.load_parts()
        if parts is None:
            return None
        table, meta, live = combine(*parts)
        return (table if live is None else table.filter(live)), meta

    def load_parts(self) -> tuple[Any, dict[str, Any], Any, dict[str, Any] | None] | None:
        """(base table, base metadata, delta table or None, delta metadata or None). A delta
        written for another base (one folded in by a concurrent update) is ignored."""
        base = self._read(self.path)
        if base is None:
            return None
        delta = self._read(self.delta_path)
        if delta is not None and delta[1].get("base_gen") != base[1].get("gen"):
            delta = None
        if delta is None:
            return base[0], base[1], None, None
        return base[0], base[1], delta[0], delta[1]

    def _read(self, path: str) -> tuple[Any, dict[str, Any]] | None:
        libs = query_libs()
        pa = libs.pa
        try:
            source = pa.memory_map(path, "r")
        except (FileNotFoundError, OSError):
            return None
        try:
            table = libs.ipc.open_file(source).read_all()
        except (pa.ArrowInvalid, OSError):
            return None  # a damaged index is rebuilt, never trusted
        raw = (table.schema.metadata or {}).get(_META)
        try:
            meta = json.loads(raw) if raw else {}
        except ValueError:
            return None
        if meta.get("format") != INDEX_FORMAT or meta.get("store") != self.store.root:
            return None
        if table.num_rows and not STORED_COLUMNS <= set(table.column_names):
            return None
        return table, meta

    # -- updating ------------------------------------------------------------------------------

    def update(self, rebuild: bool = False, full: bool = False) -> UpdateStats:
        """Read the runs written since the last update and replace the index atomically.

        Usually only the change journal is read (no stat per run). A *full scan* (a stat of
        every run directory) is made on ``rebuild``, ``full``, when there is no index yet, and
        when the last one is older than ``FULL_SCAN_S``: it finds what the journal cannot tell
        (runs deleted or copied in by hand, a writer killed between its version and its
        journal line, writers without a journal)."""
        query_libs()  # the error naming the extra, before anything is read
        t0 = time.perf_counter()
        st = UpdateStats(self.path, rebuilt=rebuild)
        parts = None if rebuild else self.load_parts()
        if parts is None:
            st.rebuilt = True
        base_t, base_meta, delta_t, delta_meta = parts or (None, {}, None, None)
        old_meta = delta_meta if delta_meta is not None else base_meta
        ch = self._find_changes(parts, old_meta, full, st)
        kept, covered = None, set()
        if ch.full and ch.changed:  # packed runs (new, or just packed): their kept rows
            kept, covered = packed_rows(
                self.store, ch.dir_mtime, STORED_COLUMNS, MTIME_COLUMN, ch.changed
            )
            ch.changed -= covered
        if (
            parts is not None
            and not ch.changed
            and not covered
            and not ch.gone
            and ch.positions == ch.old_positions
        ):
            # (an index written before "runs" was kept: count its rows)
            runs = old_meta.get("runs")
            st.runs = runs if isinstance(runs, int) else live_rows(base_t, delta_t)
            if ch.full:  # enough finished runs still loose: a background `runrec pack`
                st.packing = maybe_pack(self.store, self.dir, [base_t, delta_t])
            st.seconds = time.perf_counter() - t0
            return st  # nothing new: the index files are left as they are
        rows, new_pending = self._read_changed(ch, st)
        st.read = len(rows)
        st.removed = len(ch.gone)
        new = rows_to_table(rows)
        if kept is not None:
            new = concat(kept, new) if new.num_rows else kept
        delta, table = _new_tables(parts, new, ch.changed | covered | ch.gone, ch.gone)
        meta = {
            "format": INDEX_FORMAT,
            "store": self.store.root,
            "scan_time": ch.scan_time,
            "hot": _hot(ch),
            "journal": ch.positions,
            "pending": new_pending,
            "updated_at": datetime.now(UTC).isoformat(),
        }
        if delta is not None:  # base untouched; the delta names the base it belongs to
            st.runs = live_rows(base_t, delta)
            meta["base_gen"] = base_meta.get("gen")
            meta["json_columns"] = sorted(json_columns(delta))
            meta["runs"] = st.runs  # counted once here, not at every update that finds nothing
            self._write(
                delta.replace_schema_metadata({_META: json.dumps(meta).encode()}), self.delta_path
            )
        else:
            meta["gen"] = secrets.token_hex(8)  # a delta of an older base is ignored from now
            meta["json_columns"] = sorted(json_columns(table))
            meta["runs"] = table.num_rows
            self._write(
                table.replace_schema_metadata({_META: json.dumps(meta).encode()}), self.path
            )
            try:
                os.unlink(self.delta_path)
            except OSError:
                pass
            st.runs = table.num_rows
        if ch.full:  # enough finished runs still loose: a background `runrec pack` (autopack.py)
            st.packing = maybe_pack(self.store, self.dir, [table, base_t, delta])
        st.seconds = time.perf_counter() - t0
        return st

    def _find_changes(
        self, parts: Any, old_meta: dict[str, Any], full: bool, st: UpdateStats
    ) -> _Changes:
        """The runs to read: from the journal, the runs left pending, and (on a full scan) every
        run directory whose time changed, is new or is hot; the runs that vanished."""
        scan_time = time.time()
        since = layout.change_bucket(scan_time - JOURNAL_WINDOW_S)
        last_scan = float(old_meta.get("scan_time", 0))
        full = (
            full
            or parts is None
            or "journal" not in old_meta
            or scan_time - last_scan > full_scan_seconds()
        )
        old_hot, pending = _ints(old_meta, "hot"), _ints(old_meta, "pending")
        old_pos = _ints(old_meta, "journal")
        # the journal is read BEFORE a directory scan: a line appended after this is read next
        # time, and at worst reads a run twice
        positions, jchanged = read_journal(self.store.root, old_pos, since)
        ch = _Changes(
            full=full,
            changed=set(jchanged) | set(pending),
            gone=set(),
            expect={},
            dir_mtime={},
            positions=positions,
            old_positions=old_pos,
            old_hot=old_hot,
            settle=False,
            scan_time=last_scan,
        )
        if full:
            st.full_scan = True
            seen = scan_runs(self.store)
            st.scanned = len(seen)
            old_sig: dict[str, int] = {}
            if parts is not None:
                old_sig = _old_signatures(parts[0], parts[2])
                # long enough after the last update that a write in the same time tick as its
                # reads has happened by now: re-reading a hot run now settles it
                ch.settle = scan_time - last_scan > SLACK_NS / 1e9
            ch.changed = {
                rid for rid, m in seen.items() if old_sig.get(rid) != m or old_hot.get(rid) == m
            }
            ch.changed |= {rid for rid in jchanged if rid in seen}
            ch.changed |= {rid for rid in pending if rid in seen}
            ch.gone = {rid for rid in old_sig if rid not in seen}
            ch.dir_mtime = seen
            ch.scan_time = scan_time
        ch.expect = {rid: max(jchanged.get(rid, 0), pending.get(rid, 0)) for rid in ch.changed}
        return ch

    def _read_changed(
        self, ch: _Changes, st: UpdateStats
    ) -> tuple[list[dict[str, Any]], dict[str, int]]:
        """The flat rows of the changed runs, and the runs to read again next time (pending).
        A run whose directory is gone joins ``ch.gone``."""
        pk = package_reader(self.store)
        rows = []
        new_pending: dict[str, int] = {}
        for rid in sorted(ch.changed):
            if rid not in ch.dir_mtime:  # read from the journal: stat it now, before reading
                sig = self.store.run_signature(rid)  # its directory, or its packs
                if sig is None:
                    ch.gone.add(rid)
                    continue
                ch.dir_mtime[rid] = sig
            probs: list[ReadProblem] = []
            vs = self.store.versions(rid, probs)
            st.problems += [problem_text(p) for p in probs]
            if ch.expect.get(rid, 0) > max((v.seq for v in vs), default=0):
                # the journal names a version this listing does not show yet (an NFS client's
                # cached directory): read the run again next time
                new_pending[rid] = ch.expect[rid]
            if not vs:
                continue
            try:
                rec = fold(vs)
            except Exception as exc:  # a version that decodes but does not fold
                st.problems.append(f"run {rid} does not fold into a record ({exc})")
                continue
            row = flat_row(rec, pk)
            row[LINEAGE_COLUMN] = lineage_part(rec)
            row[MTIME_COLUMN] = ch.dir_mtime[rid]
            rows.append(row)
        return rows, new_pending

    def _write(self, table: Any, path: str) -> None:
        libs = query_libs()
        try:
            fs.makedirs(self.dir)  # the store's group and mode when the index is inside it
            tmp = os.path.join(self.dir, f"{layout.TMP_PREFIX}{secrets.token_hex(8)}")
            with libs.pa.OSFile(tmp, "wb") as sink, libs.ipc.new_file(sink, table.schema) as w:
                w.write_table(table)
            pol = perms.policy_for(tmp)
            if pol.enforced:  # readable by the store's group, whatever this process's umask
                os.chmod(tmp, pol.file_mode(0o444))
            os.replace(tmp, path)
        except OSError as exc:
            raise StoreError(
                f"cannot write the query index {path}: {exc.strerror or exc}. Pass "
                "--index-dir (or RUNREC_INDEX_DIR) pointing to a writable local directory."
            ) from exc
        self._clean_tmp()

    def _clean_tmp(self) -> None:
        """Remove temporary files an updater killed mid-write left behind (older than 1 h)."""
        now = time.time()
        try:
            with os.scandir(self.dir) as it:
                for e in it:
                    if e.name.startswith(layout.TMP_PREFIX):
                        try:
                            if now - e.stat().st_mtime > 3600:
                                os.unlink(e.path)
                        except OSError:
                            pass
        except OSError:
            pass

    # -- querying ------------------------------------------------------------------------------

    def select(
        self,
        expr: Expr | None = None,
        columns: list[str] | None = None,
        as_arrow: bool = False,
        sort: tuple[str, bool] | None = None,
    ) -> Any:
        """Rows matching ``expr`` (an ``expr.Expr``), with ``columns`` (default all), ordered by
        ``sort`` (column, descending); ``ExpressionError`` for an unknown name (``ColumnNames``)."""
        libs = query_libs()
        parts = self.load_parts()
        if parts is None:
            self.update()
            parts = self.load_parts()
        if parts is None:
            raise StoreError(f"the query index {self.path} cannot be read after writing it.")
        # the base and the delta are evaluated apart (no copy of the base); ``live`` hides the
        # base rows the delta supersedes; only the selected rows of each are put together
        base, _, delta, _ = parts
        pieces = [base] if delta is None or not delta.num_rows else [base, delta]
        live = live_mask(base, delta) if len(pieces) == 2 else None
        n = sum(p.num_rows for p in pieces)
        names = ColumnNames({c for p in pieces for c in p.column_names}, has_runs=n > 0)
        names.check(expr, columns, sort[0] if sort else None)
        asked = [*(expr.columns if expr else ()), *(sort[:1] if sort else ()), *(columns or ())]
        need_trust = columns is None or any(c in TRUST_COLUMNS for c in asked)
        trust = self._trust_of(pieces) if need_trust else None
        mask = None
        if expr is not None:
            mask = expr.mask(_column_getter(pieces, trust, n), n)
            if live is not None:
                mask = mask & live
        elif live is not None:
            mask = live
        table, idx = base, None
        if mask is not None:
            nb = base.num_rows
            chosen = [base.filter(libs.pa.array(mask[:nb]))]
            if len(pieces) == 2:
                chosen.append(delta.filter(libs.pa.array(mask[nb:])))
            table = chosen[0] if len(chosen) == 1 else concat(chosen[0], chosen[1])
            idx = libs.np.flatnonzero(mask)
        return _project(table, idx, columns, trust, n, as_arrow, sort)

    def _trust_of(self, pieces: list[Any]) -> dict[str, Any] | None:
        """retired / suspect arrays over the rows of every piece, or None when nothing was ever
        retired."""
        per = [self._trust(p) for p in pieces]
        found = [t for t in per if t is not None]
        if len(found) != len(per):
            return None
        return {k: query_libs().np.concatenate([t[k] for t in found]) for k in TRUST_COLUMNS}

    def _trust(self, table: Any) -> dict[str, Any] | None:
        """retired / suspect arrays for every row, or None when nothing was ever retired."""
        np = query_libs().np
        if not list_retirements(self.store):
            return None
        recs = [
            msgspec.json.decode(v.encode(), type=RunRecord, strict=False)
            for v in table.column(LINEAGE_COLUMN).to_pylist()
        ]
        trust = trust_for(self.store, recs)
        if trust is None:
            return None
        retired = np.zeros(len(recs), dtype=bool)
        suspect = np.zeros(len(recs), dtype=bool)
        for i, r in enumerate(recs):
            flags = trust.of_run(r.run_id)
            retired[i] = any(f.kind == "retired" for f in flags)
            suspect[i] = any(f.kind == "suspect" for f in flags)
        return {"retired": retired, "suspect": suspect}


def _new_tables(parts: Any, new: Any, drop: set[str], gone: set[str]) -> tuple[Any, Any]:
    """(delta, None) when the new rows go to the delta file (small, rewritten each time), or
    (None, base table) when everything is folded into a new base: no base yet, runs vanished,
    or the delta has grown past ``DELTA_MIN_ROWS`` and a ``DELTA_SHARE``-th of the base."""
    base_t, _, delta_t, _ = parts or (None, {}, None, None)
    if parts is not None and not gone:
        kept = without(delta_t, drop) if delta_t is not None else None
        delta = concat(kept, new) if kept is not None and new.num_rows else (kept or new)
        if delta.num_rows <= max(DELTA_MIN_ROWS, base_t.num_rows // DELTA_SHARE):
            return delta, None
    if parts is not None:
        base_kept = without(base_t, drop | run_ids(delta_t))
        if delta_t is not None:
            base_kept = concat(base_kept, without(delta_t, drop))
        table = concat(base_kept, new) if new.num_rows else base_kept
    else:
        table = new
    if table.num_columns and table.num_rows:
        table = table.sort_by("run_id")
    return None, table


def _hot(ch: _Changes) -> dict[str, int]:
    """After a full scan, the runs changed within ``SLACK_NS`` of the newest change: they may
    get another write in the same (coarse) time tick after their stat, so they are read again
    at the next full scan. Otherwise the hot runs stay as they were."""
    if not ch.full:
        return ch.old_hot
    hot_from = max(ch.dir_mtime.values(), default=0) - SLACK_NS
    return {
        rid: ch.dir_mtime[rid]
        for rid in ch.changed
        if rid in ch.dir_mtime
        and ch.dir_mtime[rid] >= hot_from
        and not (ch.settle and ch.old_hot.get(rid) == ch.dir_mtime[rid])
    }


def _column_getter(pieces: list[Any], trust: dict[str, Any] | None, n: int) -> Callable[[str], Any]:
    """``get(name)`` for ``Expr.mask``: a column over the rows of every piece, as numpy."""
    cache: dict[str, Any] = {}

    def get(name: str) -> Any:
        if name not in cache:
            vals = [
                column_values(p, name, json_columns(p), trust, p.num_rows)
                if name not in TRUST_COLUMNS
                else column_values(p, name, set(), trust, n)
                for p in pieces
            ]
            cache[name] = vals[0] if len(vals) == 1 or name in TRUST_COLUMNS else join_columns(vals)
        return cache[name]

    return get


def _project(
    table: Any,
    idx: Any,
    columns: list[str] | None,
    trust: dict[str, Any] | None,
    n: int,
    as_arrow: bool,
    sort: tuple[str, bool] | None = None,
) -> Any:
    """The selected rows with ``columns`` (default all, trust flags included), as an Arrow
    table or a DataFrame (JSON text columns decoded), ordered by ``sort``."""
    libs = query_libs()
    pa, np = libs.pa, libs.np
    jcols = json_columns(table)
    pos = {c: i for i, c in enumerate(table.column_names)}
    names = columns if columns is not None else order_columns([*pos, *TRUST_COLUMNS])
    arrays, fields = [], []
    for c in names:
        if c in TRUST_COLUMNS:
            vals = trust[c] if trust is not None else np.zeros(n, dtype=bool)
            arr = pa.array(vals if idx is None else vals[idx], pa.bool_())
        elif c in pos:
            arr = table.column(pos[c])
        else:
            arr = pa.nulls(table.num_rows)
        arrays.append(arr)
        fields.append(pa.field(c, arr.type))
    out = pa.Table.from_arrays(arrays, schema=pa.schema(fields)) if arrays else table.select([])
    if sort is not None:
        key, desc = sort
        if key in TRUST_COLUMNS and trust is not None:
            values = (trust[key] if idx is None else trust[key][idx]).tolist()
        elif key in pos:
            values = table.column(pos[key]).to_pylist()
            if key in jcols:
                values = [json.loads(v) if isinstance(v, str) else None for v in values]
        else:  # no run has it (a trust flag when nothing was ever retired): the order stays
            values = [None] * table.num_rows
        out = out.take(sort_order(values, desc))
    if as_arrow:
        return out
    df = out.to_pandas()
    for c in names:
        if c in jcols and c in df.columns:
            df[c] = [json.loads(v) if isinstance(v, str) else None for v in df[c]]
    return df
