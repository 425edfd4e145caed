"""Packs: the version files of finished runs folded into a few large immutable files.

    STORE/packs/<shard>/<pack id>.pack

A store of a million runs would otherwise hold some ten million small files: cluster
filesystems put quotas on inodes and make every file a metadata round trip. ``pack_store``
moves the version files of finished runs of a shard into one pack, then deletes them.

The file (``PACK_MAGIC`` opens and closes it)::

    PACK_MAGIC
    chunk 0, chunk 1, ...   zstd frames, each msgpack {run_id: [[file name, version bytes], ...]}
                            for up to CHUNK_RUNS runs, in run id order
    index                   a zstd frame, msgpack {"format": 1, "chunks": [[offset, length]...],
                            "runs": {run_id: [chunk number, highest seq]}}
    footer                  index offset and length (8 bytes each, little endian), PACK_MAGIC

A version keeps its loose file name (``v<seq>-<writer>.msgpack.zst``) and its bytes (the msgpack
of the ``RecordVersion``, uncompressed): the name is what deduplicates a version present both
loose and packed. Reading one run reads the footer, the index (cached: a pack never changes)
and one chunk; reading every run of a pack (the query index) reads each chunk once.

Safety without locks (docs/store-layout.md, *Packs*):

1. the pack is written to ``.tmp-<random>`` beside its name, fsynced, and linked to its name
   (never replacing anything): readers see all of it or nothing;
2. only then are the packed loose files deleted, in ascending seq order per run, then the run's
   directory if it is empty.

A reader lists the loose files of a run *first* and the packs *after*: a version deleted between
the two was packed before it was deleted, so the second look finds it. A version present in both
places (a packer killed between 1 and 2, two packers at once) is read once. ``kill -9`` at any
instant leaves at worst an orphan ``.tmp-`` file (fsck names it) or versions in both places
(the next ``pack_store`` deletes those loose copies). Because deletions go in ascending seq, the
loose versions left of a run are always its newest ones: a writer that sees any loose version
takes the next seq from them, and one that sees none asks the packs (``PackCache.max_seq``).
"""

from __future__ import annotations

import errno
import os
import re
import struct
import time
from collections import OrderedDict
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import msgspec

from runrec_cluster.errors import CorruptRecord
from runrec_cluster.record import CONTEXT_KEY, RecordVersion, RunState, fold_patches
from runrec_cluster.store import codec, fs, layout

PACKS_DIR = "packs"
PACK_MAGIC = b"RRPACK1\n"
PACK_FORMAT = 1
PACK_RE = re.compile(r"^([0-9a-hjkmnp-tv-z]{26})\.pack\Z")
# beside a pack: the flat index rows of its runs (query/index_packs.py), derived, safe to delete
ROWS_SUFFIX = ".rows.arrow"
ROWS_RE = re.compile(r"^([0-9a-hjkmnp-tv-z]{26})\.rows\.arrow\Z")
CHUNK_RUNS = 64  # runs per compressed chunk: random access decodes at most this many
MAX_PACK_RUNS = 20_000  # runs per pack (a shard holds the runs of ~2.3 hours)
_FOOTER = struct.Struct("<QQ")
_FOOTER_LEN = _FOOTER.size + len(PACK_MAGIC)
_INDEX_LIMIT = 64 * 2**20
_chunk_decoder = msgspec.msgpack.Decoder(dict[str, list[tuple[str, bytes]]])
_index_decoder = msgspec.msgpack.Decoder(dict[str, Any])

_TERMINAL = frozenset(s.value for s in RunState if s.is_terminal())
Entry = tuple[str, bytes]  # (loose file name, msgpack bytes of the version)


def packs_dir(root: str) -> str:
    return os.path.join(root, PACKS_DIR)


def shard_dir(root: str, shard: str) -> str:
    return os.path.join(root, PACKS_DIR, shard)


def entry_label(pack: str, run_id: str, name: str) -> str:
    """How a packed version is named in messages: ``<pack path>#<run id>/<file name>``."""
    return f"{pack}#{run_id}/{name}"


@dataclass(frozen=True)
class PackIndex:
    path: str
    chunks: list[tuple[int, int]]
    runs: dict[str, tuple[int, int]]  # run id -> (chunk number, highest seq)
    mtime_ns: int


# ---------------------------------------------------------------------------------------------
# Reading and writing one pack
# ---------------------------------------------------------------------------------------------


def encode_pack(runs: dict[str, list[Entry]]) -> bytes:
    """The bytes of a pack holding ``runs`` (run id -> its versions as (name, bytes))."""
    out = [PACK_MAGIC]
    pos = len(PACK_MAGIC)
    chunks: list[list[int]] = []
    index: dict[str, list[int]] = {}
    ids = sorted(runs)
    for start in range(0, len(ids), CHUNK_RUNS):
        part = {
            rid: [[n, b] for n, b in sorted(runs[rid])] for rid in ids[start : start + CHUNK_RUNS]
        }
        frame = codec.compress(codec.encode_raw(part))
        for rid in part:
            seqs = [layout.version_seq(n) or 0 for n, _ in runs[rid]]
            index[rid] = [len(chunks), max(seqs, default=0)]
        chunks.append([pos, len(frame)])
        out.append(frame)
        pos += len(frame)
    idx = codec.compress(codec.encode_raw({"format": PACK_FORMAT, "chunks": chunks, "runs": index}))
    out += [idx, _FOOTER.pack(pos, len(idx)), PACK_MAGIC]
    return b"".join(out)


def read_index(path: str) -> PackIndex:
    """The index of the pack at ``path``; ``CorruptRecord`` when it is not a whole pack,
    ``FileNotFoundError`` when it is gone."""
    with open(path, "rb") as f:
        st = os.fstat(f.fileno())
        size = st.st_size
        if size < len(PACK_MAGIC) + _FOOTER_LEN:
            raise CorruptRecord(f"pack {path} is truncated ({size} bytes).", path=path)
        f.seek(size - _FOOTER_LEN)
        foot = f.read(_FOOTER_LEN)
        f.seek(0)
        head = f.read(len(PACK_MAGIC))
        if head != PACK_MAGIC or foot[_FOOTER.size :] != PACK_MAGIC:
            raise CorruptRecord(f"pack {path} is truncated or not a pack (no end marker).", path)
        off, length = _FOOTER.unpack(foot[: _FOOTER.size])
        if off + length != size - _FOOTER_LEN or length > _INDEX_LIMIT:
            raise CorruptRecord(f"pack {path}: its footer does not match its size.", path=path)
        f.seek(off)
        raw = f.read(length)
    try:
        meta = _index_decoder.decode(codec.decompress(raw, path, _INDEX_LIMIT))
        chunks = [(int(o), int(n)) for o, n in meta["chunks"]]
        runs = {str(r): (int(c), int(s)) for r, (c, s) in meta["runs"].items()}
    except (msgspec.DecodeError, KeyError, TypeError, ValueError) as exc:
        raise CorruptRecord(f"pack {path}: its index cannot be read ({exc}).", path=path) from exc
    if meta.get("format") != PACK_FORMAT:
        raise CorruptRecord(f"pack {path} has format {meta.get('format')!r}, not 1.", path=path)
    return PackIndex(path, chunks, runs, st.st_mtime_ns)


def read_chunk(index: PackIndex, n: int) -> dict[str, list[Entry]]:
    """Chunk ``n`` of a pack: run id -> its versions."""
    try:
        off, length = index.chunks[n]
    except IndexError:
        raise CorruptRecord(f"pack {index.path}: no chunk {n}.", path=index.path) from None
    with open(index.path, "rb") as f:
        f.seek(off)
        raw = f.read(length)
    try:
        return _chunk_decoder.decode(codec.decompress(raw, index.path, codec.MAX_RECORD_BYTES))
    except msgspec.DecodeError as exc:
        raise CorruptRecord(
            f"pack {index.path}: chunk {n} cannot be read ({exc}).", index.path
        ) from exc


def iter_pack(index: PackIndex) -> Iterator[tuple[str, list[Entry]]]:
    """Every run of a pack with its versions, reading each chunk once, in order."""
    for n in range(len(index.chunks)):
        yield from read_chunk(index, n).items()


def rows_path(pack: str) -> str:
    """Where the index rows of a pack's runs are kept (beside it)."""
    return pack[: -len(".pack")] + ROWS_SUFFIX


def list_packs(root: str, shard: str) -> list[str]:
    """The packs of one shard (paths), oldest first."""
    d = shard_dir(root, shard)
    try:
        names = os.listdir(d)
    except (FileNotFoundError, NotADirectoryError):
        return []
    return [os.path.join(d, n) for n in sorted(names) if PACK_RE.match(n)]


def pack_shards(root: str) -> list[str]:
    try:
        return sorted(n for n in os.listdir(packs_dir(root)) if layout.SHARD_RE.match(n))
    except (FileNotFoundError, NotADirectoryError):
        return []


# ---------------------------------------------------------------------------------------------
# The reader's cache (one per Store)
# ---------------------------------------------------------------------------------------------


class PackCache:
    """Pack indexes (a pack never changes: cached by path) and the last chunks decoded, so
    that reading the runs of a pack in run id order reads each chunk once."""

    def __init__(self, root: str) -> None:
        self.root = root
        self._indexes: dict[str, PackIndex] = {}
        self._chunks: OrderedDict[tuple[str, int], dict[str, list[Entry]]] = OrderedDict()

    def index(self, path: str) -> PackIndex:
        idx = self._indexes.get(path)
        if idx is None:
            idx = read_index(path)
            if len(self._indexes) > 4096:
                self._indexes.clear()
            self._indexes[path] = idx
        return idx

    def shard_indexes(self, shard: str, problems: list[tuple[str, str]] | None) -> list[PackIndex]:
        """The readable packs of a shard; a damaged one goes to ``problems`` (or raises)."""
        out = []
        for path in list_packs(self.root, shard):
            try:
                out.append(self.index(path))
            except FileNotFoundError:
                continue  # removed by hand (or quarantined by fsck --repair)
            except (CorruptRecord, OSError) as exc:
                if problems is None:
                    raise CorruptRecord(f"{exc}. Run `runrec fsck`.", path=path) from exc
                problems.append((path, str(exc)))
        return out

    def entries(
        self, run_id: str, problems: list[tuple[str, str]] | None = None
    ) -> list[tuple[str, str, bytes]]:
        """(pack path, name, bytes) of every packed version of ``run_id``, in pack order."""
        out = []
        for idx in self.shard_indexes(run_id[: layout.SHARD_LEN], problems):
            where = idx.runs.get(run_id)
            if where is None:
                continue
            try:
                chunk = self._chunk(idx, where[0])
            except (CorruptRecord, OSError) as exc:
                if problems is None:
                    raise CorruptRecord(f"{exc}. Run `runrec fsck`.", path=idx.path) from exc
                problems.append((idx.path, str(exc)))
                continue
            out += [(idx.path, n, b) for n, b in chunk.get(run_id, [])]
        return out

    def _chunk(self, idx: PackIndex, n: int) -> dict[str, list[Entry]]:
        key = (idx.path, n)
        got = self._chunks.get(key)
        if got is None:
            got = read_chunk(idx, n)
            self._chunks[key] = got
            if len(self._chunks) > 8:
                self._chunks.popitem(last=False)
        return got

    def max_seq(self, run_id: str) -> int:
        """The highest seq of ``run_id`` in any pack (0: none); unreadable packs are skipped."""
        top = 0
        for idx in self.shard_indexes(run_id[: layout.SHARD_LEN], []):
            where = idx.runs.get(run_id)
            if where is not None:
                top = max(top, where[1])
        return top

    def run_ids(self, shard: str) -> set[str]:
        return {r for idx in self.shard_indexes(shard, []) for r in idx.runs}

    def signatures(self, shard: str) -> dict[str, int]:
        """run id -> modification time (ns) of the newest pack holding it."""
        out: dict[str, int] = {}
        for idx in self.shard_indexes(shard, []):
            for r in idx.runs:
                out[r] = max(out.get(r, 0), idx.mtime_ns)
        return out


# ---------------------------------------------------------------------------------------------
# Packing
# ---------------------------------------------------------------------------------------------


@dataclass
class PackStats:
    packs: list[str] = field(default_factory=list)  # packs written
    runs: int = 0  # runs whose loose versions went into a pack
    versions: int = 0  # loose version files packed
    deleted: int = 0  # loose files deleted (packed now, or found packed before)
    skipped: int = 0  # runs left loose: not finished, or unreadable
    seconds: float = 0.0


def _finished(root: str, run_id: str, loose: list[Entry], cache: PackCache) -> bool:
    """Whether the run, loose and packed versions together, is in a terminal state (succeeded,
    failed, cancelled)."""
    vs: dict[str, RecordVersion] = {}
    for path, name, raw in cache.entries(run_id):
        vs[name] = codec.unpack(raw, RecordVersion, path)
    for name, raw in loose:
        vs.setdefault(name, codec.unpack(raw, RecordVersion, name))
    if not vs:
        return False
    # the state alone: patches folded in ``record.fold``'s order, shared contexts (code, node
    # facts...) not read, no Struct built; a run that does not fold stays loose (fsck names it)
    ordered = sorted(vs.values(), key=lambda v: (v.seq, v.written_at, v.writer.host, v.writer.pid))
    state = fold_patches([{k: x for k, x in v.patch.items() if k != CONTEXT_KEY} for v in ordered])
    return state.get("state") in _TERMINAL


# what reading or folding a damaged run can raise
_UNREADABLE = (OSError, CorruptRecord, ValueError, TypeError, AttributeError, RecursionError)


def _loose(d: str) -> list[Entry]:
    """The loose versions of a run directory: (file name, msgpack bytes)."""
    out = []
    for n in sorted(os.listdir(d)):
        if layout.VERSION_RE.match(n):
            path = os.path.join(d, n)
            try:
                out.append((n, codec.decompress(fs.read_bytes(path), path, codec.MAX_RECORD_BYTES)))
            except FileNotFoundError:
                continue  # deleted by another packer since the listing
    return out


def pack_shard(root: str, shard: str, stats: PackStats, min_age_s: float = 0.0) -> None:
    """Pack the loose versions of the finished runs of one shard (see the module docstring)."""
    runs_d = os.path.join(layout.runs_dir(root), shard)
    try:
        names = sorted(n for n in os.listdir(runs_d) if layout.RUN_ID_RE.match(n))
    except (FileNotFoundError, NotADirectoryError):
        return
    cache = PackCache(root)
    now = time.time()
    todo: dict[str, list[Entry]] = {}
    for rid in names:
        d = os.path.join(runs_d, rid)
        try:
            if min_age_s and now - os.stat(d).st_mtime < min_age_s:
                stats.skipped += 1
                continue
            loose = _loose(d)
            if not loose and cache.max_seq(rid):  # packed; a packer killed before its rmdir
                _delete(d, [], stats)
                continue
            if not loose or not _finished(root, rid, loose, cache):
                stats.skipped += 1 if loose else 0
                continue
            packed = {n for _, n, _ in cache.entries(rid)}
        except _UNREADABLE:  # an unreadable run stays loose: fsck names it
            stats.skipped += 1
            continue
        new = [e for e in loose if e[0] not in packed]
        if new:
            todo[rid] = new
        else:  # all packed already (a packer killed before it deleted them)
            _delete(d, [n for n, _ in loose], stats)
        if len(todo) >= MAX_PACK_RUNS:
            _write_and_delete(root, shard, todo, stats)
            todo = {}
    if todo:
        _write_and_delete(root, shard, todo, stats)


def _write_and_delete(
    root: str, shard: str, todo: dict[str, list[Entry]], stats: PackStats
) -> None:
    path = os.path.join(shard_dir(root, shard), f"{layout.new_id()}.pack")
    data = encode_pack(todo)
    # fsynced whatever the store's setting: the loose copies are deleted next
    if not fs.create_atomic(path, data, fsync=True):
        raise OSError(errno.EEXIST, "pack name taken", path)
    stats.packs.append(path)
    stats.runs += len(todo)
    for rid, entries in todo.items():
        stats.versions += len(entries)
        _delete(os.path.join(layout.runs_dir(root), shard, rid), [n for n, _ in entries], stats)


def _delete(d: str, names: list[str], stats: PackStats) -> None:
    """Delete packed loose files in ascending seq order (the ones left are always the newest),
    then the run directory when nothing else is in it."""
    for n in sorted(names, key=lambda n: layout.version_seq(n) or 0):
        try:
            os.unlink(os.path.join(d, n))
            stats.deleted += 1
        except FileNotFoundError:
            pass
    try:
        os.rmdir(d)
    except OSError:
        pass  # a new version (or a writer's temporary file) arrived: the directory stays


def pack_store(root: str, min_age_s: float = 0.0) -> PackStats:
    """Pack every shard of the store at ``root``; see ``pack_shard``."""
    t0 = time.perf_counter()
    stats = PackStats()
    try:
        shards = sorted(n for n in os.listdir(layout.runs_dir(root)) if layout.SHARD_RE.match(n))
    except FileNotFoundError:
        shards = []
    for shard in shards:
        pack_shard(root, shard, stats, min_age_s)
    stats.seconds = time.perf_counter() - t0
    return stats
