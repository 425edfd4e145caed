"""Packs: the version files of finished runs folded into a few large immutable files.

    STORE/packs/<shard>/<pack id>.pack

A store of a million runs would otherwise hold some ten million small files: cluster
filesystems put quotas on inodes and make every file a metadata round trip. ``pack_store``
moves the version files of finished runs of a shard into one pack, then deletes them.
``Store.write_versions`` writes packs too: the launch versions of a call of many runs (a
``map_array``), and its dispatch versions, before any loose file exists (*launch packs*: they
hold unfinished runs, whose later versions are written loose beside them).

The file (``PACK_MAGIC`` opens and closes it)::

    PACK_MAGIC
    chunk 0, chunk 1, ...   zstd frames, each msgpack {run_id: [[file name, version bytes], ...]}
                            for up to CHUNK_RUNS runs, in run id order
    blob chunks             (format 2) zstd frames, each msgpack {sha256 hex: content}
    log chunks              (format 2) zstd frames, each msgpack {run_id: [[log name, bytes]...]}
    index                   a zstd frame, msgpack {"format": 1, "chunks": [[offset, length]...],
                            "runs": {run_id: [chunk number, highest seq]}}; format 2 adds
                            "blob_chunks", "blobs": {hex: blob chunk number}, "log_chunks",
                            "logs": {run_id: log chunk number}
    footer                  index offset and length (8 bytes each, little endian), PACK_MAGIC

Format 2 (a pack that also holds small blobs and logs, ``store/pack_extras.py``) is written only
when a pack holds some; a pack of versions alone stays format 1, readable by every runrec that
reads packs. A reader of format 1 only refuses a format 2 pack by name rather than missing its
blobs.

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
from runrec_cluster.record import (
    CONTEXT_KEY,
    TERMINAL_STATES,
    RecordVersion,
    fold_patches,
)
from runrec_cluster.store import codec, fs, layout, pack_extras

PACKS_DIR = "packs"
PACK_MAGIC = b"RRPACK1\n"
PACK_FORMAT = 1
PACK_FORMAT_EXTRAS = 2  # also small blobs and logs (store/pack_extras.py)
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
_blob_decoder = msgspec.msgpack.Decoder(dict[str, bytes])
EXTRA_CHUNK_BYTES = 1 << 20  # content per blob or log chunk: random access decodes about this
_index_decoder = msgspec.msgpack.Decoder(dict[str, Any])

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
    blob_chunks: list[tuple[int, int]] = field(default_factory=list)  # format 2
    blobs: dict[str, int] = field(default_factory=dict)  # sha256 hex -> blob chunk number
    log_chunks: list[tuple[int, int]] = field(default_factory=list)
    logs: dict[str, int] = field(default_factory=dict)  # run id -> log chunk number


# ---------------------------------------------------------------------------------------------
# Reading and writing one pack
# ---------------------------------------------------------------------------------------------


def encode_pack(
    runs: dict[str, list[Entry]],
    blobs: dict[str, bytes] | None = None,
    logs: dict[str, list[Entry]] | None = None,
) -> bytes:
    """The bytes of a pack holding ``runs`` (run id -> its versions as (name, bytes)), and
    (format 2) ``blobs`` (sha256 hex -> content) and ``logs`` (run id -> [(log name, bytes)])."""
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
    meta: dict[str, Any] = {"format": PACK_FORMAT, "chunks": chunks, "runs": index}
    if blobs or logs:
        meta["format"] = PACK_FORMAT_EXTRAS
        for kind, items, size in (
            ("blob", blobs or {}, len),
            ("log", logs or {}, lambda es: sum(len(b) for _, b in es)),
        ):
            frames, where = _extra_frames(items, size)
            meta[f"{kind}_chunks"] = []
            for frame in frames:
                meta[f"{kind}_chunks"].append([pos, len(frame)])
                out.append(frame)
                pos += len(frame)
            meta[f"{kind}s"] = where
    idx = codec.compress(codec.encode_raw(meta))
    out += [idx, _FOOTER.pack(pos, len(idx)), PACK_MAGIC]
    return b"".join(out)


def _extra_frames(items: dict[str, Any], size: Any) -> tuple[list[bytes], dict[str, int]]:
    """Blobs or logs in compressed chunks of about ``EXTRA_CHUNK_BYTES``: (frames, key ->
    chunk number)."""
    frames: list[bytes] = []
    where: dict[str, int] = {}
    part: dict[str, Any] = {}
    filled = 0
    for key in sorted(items):
        part[key] = items[key]
        where[key] = len(frames)
        filled += size(items[key])
        if filled >= EXTRA_CHUNK_BYTES:
            frames.append(codec.compress(codec.encode_raw(part)))
            part, filled = {}, 0
    if part:
        frames.append(codec.compress(codec.encode_raw(part)))
    return frames, where


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
        extras: dict[str, Any] = {}
        for kind in ("blob", "log"):
            extras[f"{kind}_chunks"] = [(int(o), int(n)) for o, n in meta.get(f"{kind}_chunks", [])]
            extras[f"{kind}s"] = {str(k): int(c) for k, c in meta.get(f"{kind}s", {}).items()}
    except (msgspec.DecodeError, AttributeError, KeyError, TypeError, ValueError) as exc:
        raise CorruptRecord(f"pack {path}: its index cannot be read ({exc}).", path=path) from exc
    if meta.get("format") not in (PACK_FORMAT, PACK_FORMAT_EXTRAS):
        raise CorruptRecord(
            f"pack {path} has format {meta.get('format')!r}, not 1 or 2: written by a newer "
            "runrec? Upgrade runrec to read it.",
            path=path,
        )
    return PackIndex(path, chunks, runs, st.st_mtime_ns, **extras)


def read_chunk(index: PackIndex, n: int) -> dict[str, list[Entry]]:
    """Chunk ``n`` of a pack: run id -> its versions."""
    return _read_extra(index, index.chunks, n, _chunk_decoder, "chunk")


def read_blob_chunk(index: PackIndex, n: int) -> dict[str, bytes]:
    """Blob chunk ``n`` of a pack: sha256 hex -> content (not verified here)."""
    return _read_extra(index, index.blob_chunks, n, _blob_decoder, "blob chunk")


def read_log_chunk(index: PackIndex, n: int) -> dict[str, list[Entry]]:
    """Log chunk ``n`` of a pack: run id -> its log files as (name, bytes)."""
    return _read_extra(index, index.log_chunks, n, _chunk_decoder, "log chunk")


def _read_extra(
    index: PackIndex, where: list[tuple[int, int]], n: int, decoder: Any, what: str
) -> Any:
    """Frame ``n`` of ``where`` (the version, blob or log chunks), decompressed and decoded."""
    try:
        off, length = where[n]
    except IndexError:
        raise CorruptRecord(f"pack {index.path}: no {what} {n}.", path=index.path) from None
    with open(index.path, "rb") as f:
        f.seek(off)
        raw = f.read(length)
    try:
        return decoder.decode(codec.decompress(raw, index.path, codec.MAX_RECORD_BYTES))
    except msgspec.DecodeError as exc:
        raise CorruptRecord(
            f"pack {index.path}: {what} {n} cannot be read ({exc}).", index.path
        ) from exc


def iter_pack(index: PackIndex) -> Iterator[tuple[str, list[Entry]]]:
    """Every run of a pack with its versions, reading each chunk once, in order."""
    for n in range(len(index.chunks)):
        yield from read_chunk(index, n).items()


def rows_path(pack: str) -> str:
    """Where the index rows of a pack's runs are kept (beside it)."""
    return pack[: -len(".pack")] + ROWS_SUFFIX


# shard directory -> (its mtime when listed, the time the listing began, pack paths)
_listed: dict[str, tuple[int, int, list[str]]] = {}
# a listing is reused while the directory's mtime is unchanged, if it began at least this long
# after that mtime: a pack linked later falls in a later time tick of even a coarse clock (NFS:
# a second or more), so it changes the mtime; the same rule as the index's (index.SLACK_NS),
# with room for the file server's clock being a few seconds behind this host's
LISTING_SLACK_NS = 5_000_000_000


def list_packs(root: str, shard: str) -> list[str]:
    """The packs of one shard (paths), oldest first. A new pack is seen at once: the shard
    directory is stat'ed every time and listed again when its mtime changed (or is recent);
    a shard of thousands of launch packs is not listed once per run read or written."""
    d = shard_dir(root, shard)
    began = time.time_ns()
    try:
        mtime = os.stat(d).st_mtime_ns
    except (FileNotFoundError, NotADirectoryError):
        return []
    last = _listed.get(d)
    if last is not None and last[0] == mtime and last[1] - mtime > LISTING_SLACK_NS:
        return list(last[2])
    try:
        names = os.listdir(d)
    except (FileNotFoundError, NotADirectoryError):
        return []
    paths = [os.path.join(d, n) for n in sorted(names) if PACK_RE.match(n)]
    if len(_listed) > 64:
        _listed.clear()
    _listed[d] = (mtime, began, paths)
    return list(paths)


def pack_shards(root: str) -> list[str]:
    try:
        return sorted(n for n in os.listdir(packs_dir(root)) if layout.SHARD_RE.match(n))
    except (FileNotFoundError, NotADirectoryError):
        return []


# ---------------------------------------------------------------------------------------------
# The reader's cache (one per Store)
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Holders:
    paths: tuple[str, ...]  # the shard's listing this was built from
    runs: dict[str, list[PackIndex]]  # run id -> readable packs holding it, oldest first
    bad: list[tuple[str, str]]  # (path, why) of the packs that could not be read


class PackCache:
    """Pack indexes (a pack never changes: cached by path) and the last chunks decoded, so
    that reading the runs of a pack in run id order reads each chunk once."""

    def __init__(self, root: str) -> None:
        self.root = root
        self._indexes: dict[str, PackIndex] = {}
        self._chunks: OrderedDict[tuple[str, int], dict[str, list[Entry]]] = OrderedDict()
        self._extras: OrderedDict[tuple[str, str, int], dict[str, Any]] = OrderedDict()
        self._recent: OrderedDict[str, None] = OrderedDict()  # shards read lately, newest last
        # per shard, for the listing it was built from: run id -> the readable packs holding it,
        # and the damaged packs; a run read is then one listdir and one lookup, however many
        # (launch) packs its shard holds
        self._holders: OrderedDict[str, _Holders] = OrderedDict()

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
            idx = self._readable(path, problems)
            if idx is not None:
                out.append(idx)
        return out

    def _readable(self, path: str, problems: list[tuple[str, str]] | None) -> PackIndex | None:
        """The index of the pack at ``path``; None when it is gone (removed by hand, or
        quarantined by fsck --repair) or damaged (then in ``problems``, or raised)."""
        try:
            return self.index(path)
        except FileNotFoundError:
            return None
        except (CorruptRecord, OSError) as exc:
            if problems is None:
                raise CorruptRecord(f"{exc}. Run `runrec fsck`.", path=path) from exc
            problems.append((path, str(exc)))
            return None

    def run_packs(
        self, run_id: str, problems: list[tuple[str, str]] | None = None
    ) -> list[PackIndex]:
        """The readable packs of ``run_id``'s shard that hold it, oldest first; the shard's
        damaged packs go to ``problems`` (or raise), as ``shard_indexes``. The shard's listing
        is checked every time (a new pack is seen at once, ``list_packs``); the map gains the
        new packs of a listing that only grew, and is rebuilt when a pack went away."""
        shard = run_id[: layout.SHARD_LEN]
        paths = tuple(list_packs(self.root, shard))
        got = self._holders.get(shard)
        if got is not None and got.paths != paths and set(got.paths) <= set(paths):
            got = self._add_packs(got, paths)  # only new packs (a sweep's launch pack)
            self._holders[shard] = got
        elif got is None or got.paths != paths:  # first read, or packs gone (merged, repaired)
            bad: list[tuple[str, str]] = []
            runs: dict[str, list[PackIndex]] = {}
            for idx in self.shard_indexes(shard, bad):
                for r in idx.runs:
                    runs.setdefault(r, []).append(idx)
            got = _Holders(paths, runs, bad)
            self._holders[shard] = got
            if len(self._holders) > 16:
                self._holders.popitem(last=False)
        if got.bad:
            if problems is None:
                path, msg = got.bad[0]
                raise CorruptRecord(f"{msg}. Run `runrec fsck`.", path=path)
            problems.extend(got.bad)
        return got.runs.get(run_id, [])

    def _add_packs(self, got: _Holders, paths: tuple[str, ...]) -> _Holders:
        """``got`` (the run -> packs map of an earlier listing) with the packs of ``paths``
        it lacks added: a shard that gains a launch pack a sweep is not re-read whole. The
        lists a run already had are replaced, never changed (a caller may hold one)."""
        runs = got.runs
        bad = list(got.bad)
        known = set(got.paths)
        for path in paths:
            idx = None if path in known else self._readable(path, bad)
            if idx is None:
                continue
            for r in idx.runs:
                held = [*runs.get(r, ()), idx]
                if len(held) > 1 and held[-2].path > path:  # a pack named out of order
                    held.sort(key=lambda i: i.path)
                runs[r] = held
        return _Holders(paths, runs, bad)

    def entries(
        self, run_id: str, problems: list[tuple[str, str]] | None = None
    ) -> list[tuple[str, str, bytes]]:
        """(pack path, name, bytes) of every packed version of ``run_id``, in pack order."""
        self._touch(run_id[: layout.SHARD_LEN])
        out = []
        for idx in self.run_packs(run_id, problems):
            where = idx.runs[run_id]
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
        self._touch(run_id[: layout.SHARD_LEN])
        return max((idx.runs[run_id][1] for idx in self.run_packs(run_id, [])), default=0)

    def run_ids(self, shard: str) -> set[str]:
        return {r for idx in self.shard_indexes(shard, []) for r in idx.runs}

    def _touch(self, shard: str) -> None:
        self._recent[shard] = None
        self._recent.move_to_end(shard)
        if len(self._recent) > 16:
            self._recent.popitem(last=False)

    def _extra(self, idx: PackIndex, kind: str, n: int) -> dict[str, Any]:
        key = (idx.path, kind, n)
        got = self._extras.get(key)
        if got is None:
            got = read_blob_chunk(idx, n) if kind == "blob" else read_log_chunk(idx, n)
            self._extras[key] = got
            if len(self._extras) > 8:
                self._extras.popitem(last=False)
        return got

    def shard_blob(self, shard: str, hexd: str) -> tuple[str, bytes] | None:
        """(pack path, content) of blob ``hexd`` from a readable pack of ``shard``; None when
        none holds it. The content is not verified here (``Store.get_blob`` does)."""
        for idx in self.shard_indexes(shard, []):
            n = idx.blobs.get(hexd)
            if n is None:
                continue
            try:
                got = self._extra(idx, "blob", n).get(hexd)
            except (CorruptRecord, OSError):
                continue  # a damaged pack: fsck names it; another pack may hold the blob
            if got is not None:
                return idx.path, got
        return None

    def blob(self, hexd: str) -> tuple[str, bytes] | None:
        """(pack path, content) of blob ``hexd`` from any pack; None when no pack holds it.
        A blob is packed with the runs that name it, so the shards of the runs this cache read
        lately are searched first, then every other shard (their indexes cached)."""
        recent = list(reversed(self._recent))
        for shard in recent + [s for s in pack_shards(self.root) if s not in self._recent]:
            got = self.shard_blob(shard, hexd)
            if got is not None:
                return got
        return None

    def logs(self, run_id: str) -> dict[str, bytes]:
        """The packed log files of ``run_id`` (name -> bytes); empty when none is packed."""
        out: dict[str, bytes] = {}
        # not run_packs: a run's logs may be packed after its versions, in another pack
        for idx in self.shard_indexes(run_id[: layout.SHARD_LEN], []):
            n = idx.logs.get(run_id)
            if n is None:
                continue
            try:
                chunk = self._extra(idx, "log", n)
            except (CorruptRecord, OSError):
                continue  # a damaged pack: fsck names it
            for name, data in chunk.get(run_id, []):
                out[name] = data  # packs in time order: the newest copy wins
        return out

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
    blobs: int = 0  # small blobs copied into a pack (store/pack_extras.py)
    logs: int = 0  # runs whose log files went into a pack
    journals: int = 0  # change-journal files of past hours deleted (``prune_changes``)


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
    return state.get("state") in TERMINAL_STATES


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


def pack_shard(
    root: str,
    shard: str,
    stats: PackStats,
    min_age_s: float = 0.0,
    log_quiet_s: float = pack_extras.LOG_QUIET_S,
) -> None:
    """Pack the loose versions of the finished runs of one shard (see the module docstring),
    the small blobs they name and the logs of finished runs (``store/pack_extras.py``)."""
    runs_d = os.path.join(layout.runs_dir(root), shard)
    try:
        names = sorted(n for n in os.listdir(runs_d) if layout.RUN_ID_RE.match(n))
    except (FileNotFoundError, NotADirectoryError):
        names = []  # every run packed: logs may still wait
    cache = PackCache(root)
    now = time.time()
    todo: dict[str, list[Entry]] = {}
    stale: dict[str, list[Entry]] = {}  # runs whose loose versions are all packed already
    # their versions in packs already (a sweep's launch pack): read for the blobs they name
    earlier: dict[str, list[Entry]] = {}
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
            in_packs = cache.entries(rid)
            packed = {n for _, n, _ in in_packs}
        except _UNREADABLE:  # an unreadable run stays loose: fsck names it
            stats.skipped += 1
            continue
        new = [e for e in loose if e[0] not in packed]
        if in_packs:
            earlier[rid] = [(n, b) for _, n, b in in_packs]
        if new:
            todo[rid] = new
        else:  # all packed already (a packer killed before it deleted them)
            stale[rid] = loose
        if len(todo) + len(stale) >= MAX_PACK_RUNS:
            _write_and_delete(root, shard, todo, stale, earlier, stats, cache, log_quiet_s, False)
            todo, stale, earlier = {}, {}, {}
    _write_and_delete(root, shard, todo, stale, earlier, stats, cache, log_quiet_s, True)


def _write_and_delete(
    root: str,
    shard: str,
    todo: dict[str, list[Entry]],
    stale: dict[str, list[Entry]],
    earlier: dict[str, list[Entry]],
    stats: PackStats,
    cache: PackCache,
    log_quiet_s: float,
    last: bool,
) -> None:
    """Write one pack (the versions of ``todo``, the small blobs of ``todo`` and ``stale``,
    logs), then delete what it holds loose: blobs and logs first, versions last (a packer
    killed before the versions' turn leaves the run loose, so the next one finds it and deletes
    the rest)."""

    def finished_packed(rid: str) -> bool:
        try:
            return _finished(root, rid, [], cache)
        except _UNREADABLE:
            return False

    ex = pack_extras.gather(
        root,
        shard,
        {r: [*stale.get(r, []), *todo.get(r, []), *earlier.get(r, [])] for r in {*stale, *todo}},
        cache,
        log_quiet_s=log_quiet_s,
        finished_packed=finished_packed if last else None,
    )
    if todo or ex.blobs or ex.logs:
        path = os.path.join(shard_dir(root, shard), f"{layout.new_id()}.pack")
        data = encode_pack(todo, ex.blobs, ex.logs)
        # fsynced whatever the store's setting: the loose copies are deleted next
        if not fs.create_atomic(path, data, fsync=True):
            raise OSError(errno.EEXIST, "pack name taken", path)
        stats.packs.append(path)
    stats.runs += len(todo)
    stats.blobs += len(ex.blobs)
    stats.logs += len(ex.logs)
    stats.deleted += pack_extras.delete(ex)[0]
    for rid, entries in todo.items():
        stats.versions += len(entries)
        _delete(os.path.join(layout.runs_dir(root), shard, rid), [n for n, _ in entries], stats)
    for rid, entries in stale.items():
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


def pack_store(
    root: str, min_age_s: float = 0.0, log_quiet_s: float = pack_extras.LOG_QUIET_S
) -> PackStats:
    """Pack every shard of the store at ``root``; see ``pack_shard``. ``log_quiet_s``: logs
    unchanged for this long may be packed (``store/pack_extras.py``)."""
    t0 = time.perf_counter()
    stats = PackStats()
    shards: set[str] = set()
    for top in (layout.runs_dir(root), os.path.join(root, "logs")):
        try:
            shards.update(n for n in os.listdir(top) if layout.SHARD_RE.match(n))
        except (FileNotFoundError, NotADirectoryError):
            pass
    for shard in sorted(shards):
        pack_shard(root, shard, stats, min_age_s, log_quiet_s)
    stats.journals = prune_changes(root, time.time())
    stats.seconds = time.perf_counter() - t0
    return stats


# change-journal hours kept: the index reads the last 3 hours (query/index.py JOURNAL_WINDOW_S)
CHANGES_KEEP_S = 24 * 3600


def prune_changes(root: str, now: float) -> int:
    """Delete the change-journal buckets (``changes/<YYYYMMDDHH>/``, one file per writer
    process) of hours older than ``CHANGES_KEEP_S``: derived data no index reads any more, and
    otherwise an inode per job process for ever. A writer whose clock is that far behind sends
    its lines to a deleted file; the index then sees those versions at its next full scan (as
    when ``changes/`` is deleted by hand: docs/store-layout.md). Returns the files deleted."""
    base = layout.changes_dir(root)
    oldest = layout.change_bucket(now - CHANGES_KEEP_S)
    try:
        buckets = [b for b in os.listdir(base) if len(b) == 10 and b.isdigit() and b < oldest]
    except (FileNotFoundError, NotADirectoryError):
        return 0
    n = 0
    for b in sorted(buckets):
        d = os.path.join(base, b)
        try:
            names = os.listdir(d)
        except (FileNotFoundError, NotADirectoryError):
            continue
        for name in names:
            try:
                os.unlink(os.path.join(d, name))
                n += 1
            except FileNotFoundError:
                pass
        try:
            os.rmdir(d)
        except OSError:
            pass  # a late writer's new file: the next pack takes it
    return n
