"""The derived index: the flat run view (``query.py``) as one Arrow IPC file, kept up to date
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
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from runrec_cluster.errors import StoreError
from runrec_cluster.query.columns import (
    LINEAGE_COLUMN,
    TRUST_COLUMNS,
    flat_row,
    lineage_part,
    need_query_extra,
)
from runrec_cluster.store import ReadProblem, Store, fs, layout
from runrec_cluster.store import policy as perms

INDEX_FORMAT = 1
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
        table, meta, live = _combine(*parts)
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
        _, pa = need_query_extra()
        import pyarrow.ipc as ipc

        try:
            source = pa.memory_map(path, "r")
        except (FileNotFoundError, OSError):
            return None
        try:
            table = ipc.open_file(source).read_all()
        except (pa.ArrowInvalid, OSError):
            return None  # a damaged index is rebuilt, never trusted
        raw = (table.schema.metadata or {}).get(_META)
        try:
            meta = json.loads(raw) if raw else {}
        except ValueError:
            return None
        if meta.get("format") != INDEX_FORMAT or meta.get("store") != self.store.root:
            return None
        return table, meta

    # -- updating ------------------------------------------------------------------------------

    def _scan(self) -> dict[str, int]:
        """run id -> directory mtime (ns), for every run directory of the store."""
        base = layout.runs_dir(self.store.root)
        out: dict[str, int] = {}
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
                                out[e.name] = e.stat().st_mtime_ns
                            except FileNotFoundError:
                                continue
            except (NotADirectoryError, FileNotFoundError):
                continue
        return out

    def _read_journal(
        self, positions: dict[str, int], since: str
    ) -> tuple[dict[str, int], dict[str, int]]:
        """Read the change journal (``STORE/changes``) past ``positions`` (file -> bytes already
        read), in buckets from ``since`` on. Returns the new positions (of those buckets only)
        and run id -> highest seq named in the new lines. A last line without its newline is
        being written: it is read next time."""
        base = layout.changes_dir(self.store.root)
        new_pos: dict[str, int] = {}
        changed: dict[str, int] = {}
        try:
            buckets = sorted(
                b for b in os.listdir(base) if layout.BUCKET_RE.match(b) and b >= since
            )
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
                    for line in data[:done].split(b"\n"):
                        parts = line.split(b" ")
                        if len(parts) != 2:
                            continue
                        rid = parts[0].decode("ascii", "replace")
                        if not layout.RUN_ID_RE.match(rid) or not parts[1].isdigit():
                            continue
                        changed[rid] = max(changed.get(rid, 0), int(parts[1]))
                    off += done
                new_pos[rel] = off
        return new_pos, changed

    def update(self, rebuild: bool = False, full: bool = False) -> UpdateStats:
        """Read the runs written since the last update and replace the index atomically.

        Usually only the change journal is read (no stat per run). A *full scan* (a stat of
        every run directory) is made on ``rebuild``, ``full``, when there is no index yet, and
        when the last one is older than ``FULL_SCAN_S``: it finds what the journal cannot tell
        (runs deleted or copied in by hand, a writer killed between its version and its
        journal line, writers without a journal)."""
        from runrec_cluster.query.columns import package_reader
        from runrec_cluster.record import fold

        _, pa = need_query_extra()
        t0 = time.perf_counter()
        st = UpdateStats(self.path, rebuilt=rebuild)
        parts = None if rebuild else self.load_parts()
        if parts is None:
            st.rebuilt = True
        base_t, base_meta, delta_t, delta_meta = parts or (None, {}, None, None)
        scan_time = time.time()
        since = layout.change_bucket(scan_time - JOURNAL_WINDOW_S)
        old_meta = delta_meta if delta_meta is not None else base_meta
        old = parts  # (for the checks below: is there an index at all)
        full = (
            full
            or old is None
            or "journal" not in old_meta
            or scan_time - float(old_meta.get("scan_time", 0)) > full_scan_seconds()
        )
        old_hot: dict[str, int] = {k: int(v) for k, v in old_meta.get("hot", {}).items()}
        pending: dict[str, int] = {k: int(v) for k, v in old_meta.get("pending", {}).items()}
        old_pos: dict[str, int] = {k: int(v) for k, v in old_meta.get("journal", {}).items()}
        # the journal is read BEFORE a directory scan: a line appended after this is read next
        # time, and at worst reads a run twice
        positions, jchanged = self._read_journal(old_pos, since)
        dir_mtime: dict[str, int] = {}
        if full:
            st.full_scan = True
            seen = self._scan()
            st.scanned = len(seen)
            old_sig: dict[str, int] = {}
            settle = False
            if old is not None:
                for t in (base_t, delta_t):  # the delta's rows replace the base's
                    if t is not None:
                        ids = t.column("run_id").to_pylist()
                        mts = t.column(MTIME_COLUMN).to_pylist()
                        old_sig.update(zip(ids, mts, strict=True))
                # long enough after the last update that a write in the same time tick as its
                # reads has happened by now: re-reading a hot run now settles it
                settle = scan_time - float(old_meta.get("scan_time", 0)) > SLACK_NS / 1e9
            changed = {
                rid for rid, m in seen.items() if old_sig.get(rid) != m or old_hot.get(rid) == m
            }
            changed |= {rid for rid in jchanged if rid in seen}
            changed |= {rid for rid in pending if rid in seen}
            gone = {rid for rid in old_sig if rid not in seen}
            dir_mtime = seen
            meta_scan_time = scan_time
        else:
            changed = set(jchanged) | set(pending)
            gone = set()
            settle = False
            meta_scan_time = float(old_meta.get("scan_time", 0))
        expect = {rid: max(jchanged.get(rid, 0), pending.get(rid, 0)) for rid in changed}
        if old is not None and not changed and not gone and positions == old_pos:
            # (an index written before "runs" was kept: count its rows)
            runs = old_meta.get("runs")
            st.runs = runs if isinstance(runs, int) else _live_rows(base_t, delta_t)
            st.seconds = time.perf_counter() - t0
            return st  # nothing new: the index files are left as they are
        pk = package_reader(self.store)
        rows = []
        new_pending: dict[str, int] = {}
        for rid in sorted(changed):
            if rid not in dir_mtime:  # read from the journal: stat it now, before reading
                try:
                    dir_mtime[rid] = os.stat(layout.run_dir(self.store.root, rid)).st_mtime_ns
                except FileNotFoundError:
                    gone.add(rid)
                    continue
            probs: list[ReadProblem] = []
            vs = self.store.versions(rid, probs)
            st.problems += [f"skipped unreadable record file {p.path}: {p.message}" for p in probs]
            if expect.get(rid, 0) > max((v.seq for v in vs), default=0):
                # the journal names a version this listing does not show yet (an NFS client's
                # cached directory): read the run again next time
                new_pending[rid] = expect[rid]
            if not vs:
                continue
            try:
                rec = fold(vs)
            except Exception as exc:  # a version that decodes but does not fold
                st.problems.append(f"run {rid} does not fold into a record ({exc})")
                continue
            row = flat_row(rec, pk)
            row[LINEAGE_COLUMN] = lineage_part(rec)
            row[MTIME_COLUMN] = dir_mtime[rid]
            rows.append(row)
        st.read = len(rows)
        st.removed = len(gone)
        new = rows_to_table(rows)
        drop = changed | gone
        # the new rows go to the delta file (small, rewritten each time) unless runs vanished,
        # there is no base, or the delta has grown: then everything is folded into a new base
        delta = None
        if old is not None and not gone:
            kept = _without(delta_t, drop) if delta_t is not None else None
            delta = concat(kept, new) if kept is not None and new.num_rows else (kept or new)
            if delta.num_rows > max(DELTA_MIN_ROWS, base_t.num_rows // DELTA_SHARE):
                delta = None
        if delta is None:
            if old is not None:
                base_kept = _without(base_t, drop | _ids(delta_t))
                if delta_t is not None:
                    base_kept = concat(base_kept, _without(delta_t, drop))
                table = concat(base_kept, new) if new.num_rows else base_kept
            else:
                table = new
            if table.num_columns and table.num_rows:
                table = table.sort_by("run_id")
        if full:
            # runs changed within SLACK_NS of the newest change may get another write in the
            # same (coarse) time tick after their stat: read them again at the next full scan
            hot_from = max(dir_mtime.values(), default=0) - SLACK_NS
            hot = {
                rid: dir_mtime[rid]
                for rid in changed
                if rid in dir_mtime
                and dir_mtime[rid] >= hot_from
                and not (settle and old_hot.get(rid) == dir_mtime[rid])
            }
        else:
            hot = old_hot
        meta = {
            "format": INDEX_FORMAT,
            "store": self.store.root,
            "scan_time": meta_scan_time,
            "hot": hot,
            "journal": positions,
            "pending": new_pending,
            "updated_at": datetime.now(UTC).isoformat(),
        }
        if delta is not None:  # base untouched; the delta names the base it belongs to
            st.runs = _live_rows(base_t, delta)
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
        st.seconds = time.perf_counter() - t0
        return st

    def _write(self, table: Any, path: str) -> None:
        import pyarrow as pa
        import pyarrow.ipc as ipc

        try:
            fs.makedirs(self.dir)  # the store's group and mode when the index is inside it
            tmp = os.path.join(self.dir, f"{layout.TMP_PREFIX}{secrets.token_hex(8)}")
            with pa.OSFile(tmp, "wb") as sink, ipc.new_file(sink, table.schema) as w:
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
        self, expr: Any = None, columns: list[str] | None = None, as_arrow: bool = False
    ) -> Any:
        """Rows matching ``expr`` (an ``expr.Expr``), with ``columns`` (default all)."""
        import numpy as np
        import pyarrow as pa

        from runrec_cluster.query.columns import order_columns

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
        live = _live_mask(base, delta) if len(pieces) == 2 else None
        n = sum(p.num_rows for p in pieces)
        need_trust = any(c in TRUST_COLUMNS for c in (expr.columns if expr else ())) or (
            columns is None or any(c in TRUST_COLUMNS for c in columns)
        )
        trust = None
        if need_trust:
            per = [self._trust(p) for p in pieces]
            if all(t is not None for t in per):
                trust = {k: np.concatenate([t[k] for t in per]) for k in TRUST_COLUMNS}
        cache: dict[str, Any] = {}

        def get(name: str) -> Any:
            if name not in cache:
                vals = [
                    column_values(p, name, json_columns(p), trust, p.num_rows)
                    if name not in TRUST_COLUMNS
                    else column_values(p, name, set(), trust, n)
                    for p in pieces
                ]
                cache[name] = vals[0] if len(vals) == 1 or name in TRUST_COLUMNS else _join(vals)
            return cache[name]

        mask = None
        if expr is not None:
            mask = expr.mask(get, n)
            if live is not None:
                mask = mask & live
        elif live is not None:
            mask = live
        if mask is not None:
            nb = base.num_rows
            chosen = [base.filter(pa.array(mask[:nb]))]
            if len(pieces) == 2:
                chosen.append(delta.filter(pa.array(mask[nb:])))
            table = chosen[0] if len(chosen) == 1 else concat(chosen[0], chosen[1])
            idx = np.flatnonzero(mask)
        else:
            table = base
            idx = None
        jcols = json_columns(table)
        pos = {c: i for i, c in enumerate(table.column_names)}
        names = columns if columns is not None else order_columns(list(pos))
        if columns is None:
            names = order_columns([*pos, *TRUST_COLUMNS])
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
        if as_arrow:
            return out
        df = out.to_pandas()
        for c in names:
            if c in jcols and c in df.columns:
                df[c] = [json.loads(v) if isinstance(v, str) else None for v in df[c]]
        return df

    def _trust(self, table: Any) -> dict[str, Any] | None:
        """retired / suspect arrays for every row, or None when nothing was ever retired."""
        import msgspec
        import numpy as np

        from runrec_cluster.lineage.records import list_retirements
        from runrec_cluster.lineage.trust import trust_for
        from runrec_cluster.record import RunRecord

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


def _ids(table: Any) -> set[str]:
    if table is None or not table.num_rows or "run_id" not in table.column_names:
        return set()
    return set(table.column("run_id").to_pylist())


def _without(table: Any, ids: set[str]) -> Any:
    """``table`` less the rows of these run ids."""
    import pyarrow as pa
    import pyarrow.compute as pc

    if not ids or not table.num_rows or "run_id" not in table.column_names:
        return table
    drop = pa.array(sorted(ids), pa.string())
    return table.filter(pc.invert(pc.is_in(table.column("run_id"), value_set=drop)))


def _live_mask(base: Any, delta: Any) -> Any:
    """True for the rows that count in base-then-delta order: a base row whose run is in the
    delta is superseded."""
    import numpy as np
    import pyarrow.compute as pc

    if base.num_rows and "run_id" in base.column_names:
        superseded = pc.is_in(
            base.column("run_id"), value_set=delta.column("run_id").combine_chunks()
        ).to_numpy(zero_copy_only=False)
    else:
        superseded = np.zeros(base.num_rows, bool)
    return np.concatenate([np.logical_not(superseded), np.ones(delta.num_rows, bool)])


def _join(parts: list[Any]) -> Any:
    """Column values of the base then the delta, as one numpy array for the expression."""
    import numpy as np

    if all(p.dtype == parts[0].dtype for p in parts):
        return np.concatenate(parts)
    return np.concatenate([p.astype(object) for p in parts])


def _live_rows(base: Any, delta: Any) -> int:
    if base is None:
        return 0
    if delta is None or not delta.num_rows:
        return base.num_rows
    return int(_live_mask(base, delta).sum())


def _combine(
    base: Any, base_meta: dict[str, Any], delta: Any, delta_meta: dict[str, Any] | None
) -> tuple[Any, dict[str, Any], Any]:
    """(table, metadata, live): the base and the delta's rows one after the other (no copy of
    the base's columns when their types agree), and a numpy mask of the rows that count (None
    when there is no delta): a base row whose run is in the delta is superseded."""

    if delta is None or not delta.num_columns or not delta.num_rows:
        return base, base_meta, None
    table = concat(base, delta)
    live = _live_mask(base, delta)
    meta = dict(delta_meta or {})
    meta["json_columns"] = sorted(json_columns(table))
    return table, meta, live


# ---------------------------------------------------------------------------------------------
# Rows to Arrow, and back to numpy for the expression
# ---------------------------------------------------------------------------------------------


def _kind(values: list[Any]) -> str:
    kinds = set()
    for v in values:
        if v is None:
            continue
        if isinstance(v, bool):
            kinds.add("bool")
        elif isinstance(v, int):
            kinds.add("int" if -(2**63) <= v < 2**63 else "json")
        elif isinstance(v, float):
            kinds.add("float")
        elif isinstance(v, str):
            kinds.add("str")
        else:
            kinds.add("json")
        if len(kinds) > 2:
            return "json"
    if not kinds:
        return "null"
    if len(kinds) == 1:
        return kinds.pop()
    if kinds == {"int", "float"}:
        return "float"
    return "json"


def _json(v: Any) -> str | None:
    if v is None:
        return None
    return json.dumps(v, sort_keys=True, default=str, ensure_ascii=False)


def rows_to_table(rows: list[dict[str, Any]]) -> Any:
    """An Arrow table from flat rows; a column whose values have mixed types (or lists,
    dicts) is stored as JSON text and named in the metadata's ``json_columns``."""
    import pyarrow as pa

    names: dict[str, None] = {}
    for r in rows:
        for k in r:
            names.setdefault(k, None)
    arrays, fields, jcols = [], [], []
    for name in names:
        vals = [r.get(name) for r in rows]
        kind = _kind(vals)
        if kind == "json":
            arr = pa.array([_json(v) for v in vals], pa.string())
            jcols.append(name)
        else:
            typ = {
                "null": pa.null(),
                "bool": pa.bool_(),
                "int": pa.int64(),
                "float": pa.float64(),
                "str": pa.string(),
            }[kind]
            arr = pa.array(vals, typ)
        arrays.append(arr)
        fields.append(pa.field(name, arr.type, metadata={b"json": b"1"} if name in jcols else None))
    return pa.Table.from_arrays(arrays, schema=pa.schema(fields))


def json_columns(table: Any) -> set[str]:
    return {f.name for f in table.schema if f.metadata and f.metadata.get(b"json") == b"1"}


def _as_json_column(col: Any, was_json: bool) -> Any:
    import pyarrow as pa

    if was_json:
        return col
    return pa.array([_json(v) for v in col.to_pylist()], pa.string())


def concat(a: Any, b: Any) -> Any:
    """Rows of ``a`` then ``b``; a column typed differently in the two is unified (null to the
    other type, int with float to float, anything else to JSON text)."""
    import pyarrow as pa

    ja, jb = json_columns(a), json_columns(b)
    # by position, once: ``column_names`` builds a list and ``column(name)`` searches it
    pos_a = {n: i for i, n in enumerate(a.column_names)}
    pos_b = {n: i for i, n in enumerate(b.column_names)}
    names = list(dict.fromkeys([*pos_a, *pos_b]))
    cols_a, cols_b, fields = [], [], []
    for name in names:
        ca = a.column(pos_a[name]) if name in pos_a else None
        cb = b.column(pos_b[name]) if name in pos_b else None
        ta = ca.type if ca is not None else None
        tb = cb.type if cb is not None else None
        is_json = name in ja or name in jb
        if not is_json:
            if ta is None or pa.types.is_null(ta):
                typ = tb
            elif tb is None or pa.types.is_null(tb) or ta == tb:
                typ = ta
            elif {str(ta), str(tb)} <= {"int64", "double"}:
                typ = pa.float64()
            else:
                is_json = True
        if is_json:
            typ = pa.string()
            ca = _as_json_column(ca, name in ja) if ca is not None else None
            cb = _as_json_column(cb, name in jb) if cb is not None else None
        ca = pa.nulls(a.num_rows, typ) if ca is None else (ca if ca.type == typ else ca.cast(typ))
        cb = pa.nulls(b.num_rows, typ) if cb is None else (cb if cb.type == typ else cb.cast(typ))
        cols_a.append(ca)
        cols_b.append(cb)
        fields.append(pa.field(name, typ, metadata={b"json": b"1"} if is_json else None))
    schema = pa.schema(fields)
    ta_ = pa.Table.from_arrays(cols_a, schema=schema)
    tb_ = pa.Table.from_arrays(cols_b, schema=schema)
    return pa.concat_tables([ta_, tb_])


def column_values(table: Any, name: str, jcols: set[str], trust: Any, n: int) -> Any:
    """A column as numpy for the expression: float64 (NaN for missing) for numbers, bool for a
    bool column without missing values, object (None for missing) otherwise."""
    import numpy as np
    import pyarrow as pa

    if name in TRUST_COLUMNS:
        return trust[name] if trust is not None else np.zeros(n, dtype=bool)
    if table.schema.get_field_index(name) < 0:
        return np.full(n, None, dtype=object)
    col = table.column(name)
    t = col.type
    if name in jcols:
        return np.array(
            [json.loads(v) if v is not None else None for v in col.to_pylist()] + [None],
            dtype=object,
        )[:-1]
    if pa.types.is_integer(t) or pa.types.is_floating(t):
        return col.to_numpy().astype(np.float64, copy=False)
    if pa.types.is_boolean(t) and col.null_count == 0:
        return col.to_numpy()
    if pa.types.is_null(t):
        return np.full(n, None, dtype=object)
    return np.array(col.to_pylist() + [None], dtype=object)[:-1]
