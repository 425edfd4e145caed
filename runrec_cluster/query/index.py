"""The derived index: the flat run view (``columns.py``) as one Arrow IPC file, kept up to date
incrementally. Never the source of truth: delete it and the next query rebuilds it.

    STORE/index/runs-v1.arrow       the default place
    DIR/<sha256(store root)[:16]>/runs-v1.arrow
                                    with ``index_dir=DIR`` / ``--index-dir`` / $RUNREC_INDEX_DIR
                                    (a local disk when the store is on NFS), and automatically
                                    under ~/.cache/runrec/index when the store is read-only

One row per run, plus ``_dir_mtime_ns``: the modification time of the run's directory when it
was read. Every record version is a new file in that directory, so a new version changes it.
The files are Arrow IPC with zstd-compressed column buffers (about 300 bytes a run of 50
config values, 20 metrics and 10 tags, against ~1 KB uncompressed): a query reads and
decompresses only the columns it names (``index_select.py``; the base's run ids only when it
asks for them: the delta's metadata lists the base rows it supersedes), an update that finds
nothing new only the files' metadata and the journal, and one that finds something only the
run id, the state and ``_dir_mtime_ns`` of the base unless it folds a new base.

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

from runrec_cluster.errors import StoreError
from runrec_cluster.expr import Expr
from runrec_cluster.lineage.records import problem_text
from runrec_cluster.query.autopack import maybe_pack
from runrec_cluster.query.columns import (
    BASE_COLUMNS,
    LINEAGE_COLUMN,
    TRUST_COLUMNS,
    flat_row,
    package_reader,
    query_libs,
)
from runrec_cluster.query.index_changes import read_journal, scan_runs
from runrec_cluster.query.index_packs import packed_rows
from runrec_cluster.query.index_select import NAMES_KEY, needed_columns, select_rows
from runrec_cluster.query.index_table import (
    combine,
    concat,
    json_columns,
    lineage_cell,
    live_rows,
    rows_to_table,
    run_ids,
    superseded_rows,
    without,
)
from runrec_cluster.record import fold
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
UPDATE_COLUMNS = frozenset({"run_id", MTIME_COLUMN, "state"})  # what an update reads of the base
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
        self._sources: dict[str, Any] = {}  # path -> the memory map last read

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

    def load_parts(
        self,
        columns: set[str] | None = None,
        *,
        whole_delta: bool = False,
        delta_columns: set[str] | None = None,
    ) -> tuple[Any, dict[str, Any], Any, dict[str, Any] | None] | None:
        """(base table, base metadata, delta table or None, delta metadata or None), with only
        ``columns`` read (None: all; the delta too unless ``whole_delta``). A delta written
        for another base (one folded in by a concurrent update) is ignored. Each metadata
        holds, under ``index_select.NAMES_KEY``, every column of its file."""
        base = self._read(self.path, columns)
        if base is None:
            return None
        delta_want = columns if columns is None else columns | (delta_columns or set())
        delta = self._read(self.delta_path, None if whole_delta else delta_want)
        if delta is not None and delta[1].get("base_gen") != base[1].get("gen"):
            delta = None
        if delta is None:
            return base[0], base[1], None, None
        return base[0], base[1], delta[0], delta[1]

    def heads(self) -> tuple[dict[str, Any], dict[str, Any] | None] | None:
        """(base metadata, delta metadata or None) read from the files' schemas alone: no
        column is read or decompressed. None when there is no usable index."""
        base = self._head(self.path)
        if base is None:
            return None
        delta = self._head(self.delta_path)
        if delta is not None and delta.get("base_gen") != base.get("gen"):
            delta = None
        return base, delta

    def _head(self, path: str) -> dict[str, Any] | None:
        libs = query_libs()
        try:
            with libs.pa.memory_map(path, "r") as source:
                schema = libs.ipc.open_file(source).schema
            raw = (schema.metadata or {}).get(_META)
            meta = json.loads(raw) if raw else {}
        except (FileNotFoundError, OSError, libs.pa.ArrowInvalid, ValueError):
            return None
        if meta.get("format") != INDEX_FORMAT or meta.get("store") != self.store.root:
            return None
        if schema.names and not STORED_COLUMNS <= set(schema.names):
            return None  # written before a column was added: rebuilt (as ``_read`` says)
        return meta

    def _read(
        self, path: str, columns: set[str] | None = None
    ) -> tuple[Any, dict[str, Any]] | None:
        libs = query_libs()
        pa = libs.pa
        try:
            source = pa.memory_map(path, "r")
        except (FileNotFoundError, OSError):
            return None
        try:
            reader = libs.ipc.open_file(source)
            schema = reader.schema
            raw = (schema.metadata or {}).get(_META)
            meta = json.loads(raw) if raw else {}
            if meta.get("format") != INDEX_FORMAT or meta.get("store") != self.store.root:
                return None
            names = schema.names
            if columns is not None:  # the other columns are neither read nor decompressed
                keep = [i for i, c in enumerate(names) if c in columns]
                if not keep and names:  # none of them in this file: one, for the row count
                    keep = [names.index("run_id") if "run_id" in names else 0]
                if keep:  # (an empty list would read every column)
                    opts = libs.ipc.IpcReadOptions(included_fields=keep)
                    reader = libs.ipc.open_file(source, options=opts)
            table = reader.read_all()
        except (pa.ArrowInvalid, OSError, ValueError):
            return None  # a damaged index is rebuilt, never trusted
        if table.num_rows and not STORED_COLUMNS <= set(names):
            return None
        self._sources[path] = source  # ``_whole``: the rest of this very file, if needed
        meta[NAMES_KEY] = names
        return table, meta

    def _whole(self, path: str) -> Any:
        """Every column of the file at ``path`` as ``_read`` read it (the same file, even if
        a concurrent update has replaced it since)."""
        return query_libs().ipc.open_file(self._sources[path]).read_all()

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
        if not (rebuild or full) and self._quiet(st):
            st.seconds = time.perf_counter() - t0
            return st  # nothing new, no full scan due: not one column of the index was read
        # the base's few columns an update needs (the rest only if it is folded anew)
        parts = None if rebuild else self.load_parts(UPDATE_COLUMNS, whole_delta=True)
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
        delta, table = _new_tables(
            parts, new, ch.changed | covered | ch.gone, ch.gone, lambda: self._whole(self.path)
        )
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
            # a query hides these base rows without reading the base's run ids
            meta["superseded"] = superseded_rows(base_t, delta)
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

    def _quiet(self, st: UpdateStats) -> bool:
        """True when an update has nothing to do, found from the files' metadata and the
        journal alone: no full scan due, no run pending, no journal line since the last
        update. ``st.runs`` is then the index's row count (kept in the metadata)."""
        heads = self.heads()
        if heads is None:
            return False
        old_meta = heads[1] if heads[1] is not None else heads[0]
        runs = old_meta.get("runs")
        if not isinstance(runs, int) or old_meta.get("pending") or _full_due(old_meta, time.time()):
            return False
        old_pos = _ints(old_meta, "journal")
        since = layout.change_bucket(time.time() - JOURNAL_WINDOW_S)
        positions, changed = read_journal(self.store.root, old_pos, since)
        if changed or positions != old_pos:
            return False
        st.runs = runs
        return True

    def _find_changes(
        self, parts: Any, old_meta: dict[str, Any], full: bool, st: UpdateStats
    ) -> _Changes:
        """The runs to read: from the journal, the runs left pending, and (on a full scan) every
        run directory whose time changed, is new or is hot; the runs that vanished."""
        scan_time = time.time()
        since = layout.change_bucket(scan_time - JOURNAL_WINDOW_S)
        last_scan = float(old_meta.get("scan_time", 0))
        full = full or parts is None or _full_due(old_meta, scan_time)
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
            row[LINEAGE_COLUMN] = lineage_cell(rec)
            row[MTIME_COLUMN] = ch.dir_mtime[rid]
            rows.append(row)
        return rows, new_pending

    def _write(self, table: Any, path: str) -> None:
        libs = query_libs()
        try:
            fs.makedirs(self.dir)  # the store's group and mode when the index is inside it
            tmp = os.path.join(self.dir, f"{layout.TMP_PREFIX}{secrets.token_hex(8)}")
            # zstd per column buffer: a query decompresses only the columns it reads
            opts = libs.ipc.IpcWriteOptions(compression="zstd")
            with (
                libs.pa.OSFile(tmp, "wb") as sink,
                libs.ipc.new_file(sink, table.schema, options=opts) as w,
            ):
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
        ``sort`` (column, descending); ``ExpressionError`` for an unknown name (``ColumnNames``).
        Only the columns the query names are read from the index file (``index_select.py``)."""
        want = needed_columns(expr, columns, sort)
        parts = self._select_parts(want)
        if parts is None:
            self.update()
            parts = self._select_parts(want)
        if parts is None:
            raise StoreError(f"the query index {self.path} cannot be read after writing it.")
        return select_rows(self.store, parts, expr, columns, as_arrow, sort)

    def _select_parts(self, want: set[str] | None) -> Any:
        """``load_parts`` for a query: the delta always with its run ids; the base's run ids
        only when asked, or when a delta of an index written before the ``superseded`` list
        (metadata) must hide base rows by run id."""
        parts = self.load_parts(want, delta_columns={"run_id"})
        if parts is None or want is None or "run_id" in want:
            return parts
        _, _, delta, delta_meta = parts
        if delta is not None and delta.num_rows and "superseded" not in (delta_meta or {}):
            return self.load_parts(want | {"run_id"})
        return parts


def _full_due(meta: dict[str, Any], now: float) -> bool:
    """Whether an update must make a full scan, by the index's metadata: none was made since
    the journal was kept, or the last is older than ``full_scan_seconds()``."""
    return "journal" not in meta or now - float(meta.get("scan_time", 0)) > full_scan_seconds()


def _new_tables(
    parts: Any, new: Any, drop: set[str], gone: set[str], whole_base: Callable[[], Any]
) -> tuple[Any, Any]:
    """(delta, None) when the new rows go to the delta file (small, rewritten each time), or
    (None, base table) when everything is folded into a new base: no base yet, runs vanished,
    or the delta has grown past ``DELTA_MIN_ROWS`` and a ``DELTA_SHARE``-th of the base.
    ``whole_base()``: every column of the base (``parts`` holds only ``UPDATE_COLUMNS``)."""
    base_t, _, delta_t, _ = parts or (None, {}, None, None)
    if parts is not None and not gone:
        kept = without(delta_t, drop) if delta_t is not None else None
        delta = concat(kept, new) if kept is not None and new.num_rows else (kept or new)
        if delta.num_rows <= max(DELTA_MIN_ROWS, base_t.num_rows // DELTA_SHARE):
            return delta, None
    if parts is not None:
        base_t = whole_base()
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
