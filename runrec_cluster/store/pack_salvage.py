"""What can still be read from a damaged pack (``store/packs.py``), for ``runrec fsck --repair``.

``salvage(path)`` reads a pack chunk by chunk, keeping every chunk that decodes; when the index
itself cannot be read (a truncated pack, a damaged footer), it scans the file for zstd frames
instead and sorts what it finds by content: versions (entries named ``v<seq>-<writer>.msgpack.zst``),
logs (``stdout.txt`` / ``stderr.txt``), blobs (``{hex: content}``, kept only when the content
hashes to its name). Every version is checked like a loose one (decodes, names its run and its
seq); one that does not goes to ``bad`` with the reason, never silently dropped.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass, field
from typing import Any

import msgspec
import zstandard

from runrec_cluster.errors import CorruptRecord
from runrec_cluster.record import RecordVersion
from runrec_cluster.store import codec, fs, layout, packs
from runrec_cluster.store.pack_extras import LOG_FILES

_ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"
Entry = tuple[str, bytes]


@dataclass
class Salvage:
    """The readable content of a pack, what is in it but damaged, and what is lost."""

    runs: dict[str, list[Entry]] = field(default_factory=dict)  # sound versions
    blobs: dict[str, bytes] = field(default_factory=dict)  # content that hashes to its name
    logs: dict[str, list[Entry]] = field(default_factory=dict)
    bad: list[tuple[str, str, bytes, str]] = field(default_factory=list)  # run, name, bytes, why
    lost: list[str] = field(default_factory=list)  # what could not be read, in words
    shard: str = ""  # the pack's shard: a run of another shard is not readable there


def salvage(
    path: str, drop: set[tuple[str, str]] | frozenset[tuple[str, str]] = frozenset()
) -> Salvage:
    """Everything readable in the pack at ``path``; the versions named in ``drop`` ((run id,
    file name): found damaged by fsck, e.g. a version that breaks its run's fold) go to
    ``bad``."""
    out = Salvage(shard=os.path.basename(os.path.dirname(path)))
    try:
        idx = packs.read_index(path)
    except CorruptRecord as exc:
        out.lost.append(f"its index cannot be read ({exc}); its chunks were found by scanning")
        _scan(fs.read_bytes(path), out, drop)
        return out
    for n in range(len(idx.chunks)):
        try:
            _versions(packs.read_chunk(idx, n), out, drop)
        except (CorruptRecord, OSError) as exc:
            runs = sorted(r for r, (c, _) in idx.runs.items() if c == n)
            out.lost.append(f"chunk {n} cannot be read ({exc}): versions of {', '.join(runs)}")
    for n in range(len(idx.blob_chunks)):
        try:
            _blobs(packs.read_blob_chunk(idx, n), out)
        except (CorruptRecord, OSError) as exc:
            out.lost.append(f"blob chunk {n} cannot be read ({exc})")
    for n in range(len(idx.log_chunks)):
        try:
            _logs(packs.read_log_chunk(idx, n), out)
        except (CorruptRecord, OSError) as exc:
            out.lost.append(f"log chunk {n} cannot be read ({exc})")
    return out


def _versions(
    chunk: dict[str, list[Entry]],
    out: Salvage,
    drop: set[tuple[str, str]] | frozenset[tuple[str, str]],
) -> None:
    for rid, entries in chunk.items():
        for name, raw in entries:
            why = _why_bad(rid, name, raw)
            if why is None and rid[: layout.SHARD_LEN] != out.shard:
                why = f"run {rid} is not of the pack's shard {out.shard}: readers cannot find it"
            if why is None and (rid, name) in drop:
                why = "found damaged by fsck (the run does not fold from this version on)"
            if why is None:
                out.runs.setdefault(rid, []).append((name, raw))
            else:
                out.bad.append((rid, name, raw, why))


def _why_bad(rid: str, name: str, raw: bytes) -> str | None:
    seq = layout.version_seq(name)
    if not layout.RUN_ID_RE.match(rid) or seq is None:
        return f"{rid!r}/{name!r} is not a run id and a version file name"
    try:
        v = codec.unpack(raw, RecordVersion, name)
    except CorruptRecord as exc:
        return str(exc)
    if v.run_id != rid or v.seq != seq:
        return f"holds version {v.seq} of run {v.run_id}, not version {seq} of run {rid}"
    return None


def _blobs(chunk: dict[str, bytes], out: Salvage) -> None:
    for hexd, data in chunk.items():
        if hashlib.sha256(data).hexdigest() == hexd:
            out.blobs[hexd] = data
        else:
            out.lost.append(f"blob sha256:{hexd} does not match its hash")


def _logs(chunk: dict[str, list[Entry]], out: Salvage) -> None:
    for rid, files in chunk.items():
        if layout.RUN_ID_RE.match(rid) and all(n in LOG_FILES for n, _ in files):
            out.logs[rid] = files
        else:
            out.lost.append(f"logs of {rid!r} are not the logs of a run")


def _scan(
    data: bytes, out: Salvage, drop: set[tuple[str, str]] | frozenset[tuple[str, str]]
) -> None:
    """Find the zstd frames of a pack without its index and keep what decodes."""
    view = memoryview(data)
    pos = len(packs.PACK_MAGIC) if data.startswith(packs.PACK_MAGIC) else 0
    while (i := data.find(_ZSTD_MAGIC, pos)) >= 0:
        d = zstandard.ZstdDecompressor().decompressobj()
        try:
            raw = d.decompress(view[i:])
        except zstandard.ZstdError:
            pos = i + 1
            continue
        if not d.eof:
            out.lost.append(f"a truncated chunk at byte {i}")
            break
        pos = len(data) - len(d.unused_data)
        try:
            obj = msgspec.msgpack.decode(raw)
        except msgspec.DecodeError:
            out.lost.append(f"a chunk at byte {i} does not decode")
            continue
        _sort(obj, out, drop)


def _sort(obj: Any, out: Salvage, drop: set[tuple[str, str]] | frozenset[tuple[str, str]]) -> None:
    if not isinstance(obj, dict) or "format" in obj:
        return  # the index, or not runrec's
    if all(isinstance(v, bytes) for v in obj.values()):
        _blobs(obj, out)
        return
    try:
        chunk = {str(k): [(str(n), bytes(b)) for n, b in v] for k, v in obj.items()}
    except (TypeError, ValueError):
        out.lost.append("a chunk of unknown shape")
        return
    names = [n for files in chunk.values() for n, _ in files]
    if names and all(n in LOG_FILES for n in names):
        _logs(chunk, out)
    else:
        _versions(chunk, out, drop)
