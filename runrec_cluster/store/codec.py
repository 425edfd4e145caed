"""Encoding of every stored file: msgpack via msgspec, then zstd.

One Encoder/Decoder pair per type is created once and reused (msgspec's performance advice).
zstd contexts are not thread-safe, so each thread gets its own.

Size limits (a damaged or hostile file must not exhaust memory: a 33 KB zstd frame can hold
1 GiB of zeros, and a forged header can claim any size):

- No frame can produce more than ``MAX_RATIO`` (32,768) bytes per byte of input: a zstd block
  holds at most 128 KiB and takes at least 4 bytes (an RLE block). A header that claims more
  is refused before anything is allocated; no real frame is refused.
- A record (``decode``: versions, promotions, retirements, caches, the store file) holds at most
  ``MAX_RECORD_BYTES`` (256 MiB) of msgpack; ``encode`` refuses to write a larger one, so a
  reader never refuses what runrec wrote.
- A blob (``decompress``) has no fixed ceiling (results and pickled calls can be large); one
  whose declared size exceeds the memory this process can still get (free memory, its cgroup's
  limit, its address-space limit) is refused with ``StoreError`` instead of being read until
  the process is killed.
- Every file runrec writes declares its content size in the frame header, so memory is
  allocated once, to a size checked above. A frame without it (never written by runrec) is
  read in small steps and stopped at ``MAX_RECORD_BYTES``, blob or record.
"""

from __future__ import annotations

import math
import os
import resource
import threading
from datetime import datetime
from typing import Any, TypeVar

import msgspec
import zstandard

from runrec_cluster.errors import CorruptRecord, StoreError

T = TypeVar("T")

ZSTD_LEVEL = 3
MAX_RATIO = 32768  # bytes out per byte in: 128 KiB blocks of at least 4 bytes
MAX_RECORD_BYTES = 256 * 2**20  # msgpack bytes of one record (a version is a few KB)
_MEMORY_CHECK_BYTES = 64 * 2**20  # above this, a blob's size is checked against free memory
_STEP = 4096  # input fed at a time to a frame of unknown size (at most 128 MiB out per step)
_local = threading.local()
_encoder = msgspec.msgpack.Encoder()
_decoders: dict[Any, msgspec.msgpack.Decoder[Any]] = {}


def _zc() -> zstandard.ZstdCompressor:
    c = getattr(_local, "c", None)
    if c is None:
        c = _local.c = zstandard.ZstdCompressor(level=ZSTD_LEVEL)
    return c


def _zd() -> zstandard.ZstdDecompressor:
    d = getattr(_local, "d", None)
    if d is None:
        d = _local.d = zstandard.ZstdDecompressor()
    return d


def compress(raw: bytes) -> bytes:
    return _zc().compress(raw)


def decompress(data: bytes, path: str = "", limit: int | None = None) -> bytes:
    """The content of one zstd frame. ``limit``: the most bytes it may hold (``decode`` passes
    ``MAX_RECORD_BYTES``); without it (a blob), what the frame can physically hold and the
    memory this process can get bound it. ``CorruptRecord`` for anything that is not a sound
    frame, ``StoreError`` for a blob too large for this machine."""
    where = path or "data"
    try:
        declared = zstandard.frame_content_size(data)  # -1: not in the header
        cap = len(data) * MAX_RATIO
        what = f"the {cap:,} bytes a frame of {len(data):,} bytes can hold"
        if limit is not None and limit < cap:
            cap, what = limit, f"the limit of {limit:,} bytes for a record"
        if declared > cap:
            raise CorruptRecord(
                f"{where}: the zstd header claims {declared:,} bytes of content, more than "
                f"{what}; the file is damaged or was not written by runrec. Run `runrec fsck` "
                "or move the file aside.",
                path=path,
            )
        if declared > _MEMORY_CHECK_BYTES:
            free = _free_memory()
            if free is not None and declared > free:
                raise StoreError(
                    f"{where}: the blob holds {declared:,} bytes, more than the {free:,} bytes "
                    "of memory this process can get; read it on a machine with more memory. "
                    "If it should be small, the file is damaged: run `runrec fsck`."
                )
        if declared >= 0:
            return _zd().decompress(data)  # allocates `declared` once; checks the size read
        if cap > MAX_RECORD_BYTES:  # runrec never writes a frame without its size
            cap = MAX_RECORD_BYTES
            what = f"the {cap:,} bytes read of a frame of unknown size"
        return _unsized(data, cap, what, where, path)
    except zstandard.ZstdError as exc:
        raise CorruptRecord(
            f"{where}: not a valid zstd frame ({exc}); the file is truncated or was "
            "not written by runrec. Run `runrec fsck` or move the file aside.",
            path=path,
        ) from exc


def _unsized(data: bytes, cap: int, what: str, where: str, path: str) -> bytes:
    """A frame whose header does not declare its size (runrec never writes one): fed in small
    steps, stopped as soon as the output passes ``cap``."""
    dobj = zstandard.ZstdDecompressor().decompressobj()
    parts: list[bytes] = []
    total = 0
    for i in range(0, len(data), _STEP):
        out = dobj.decompress(data[i : i + _STEP])
        total += len(out)
        if total > cap:
            raise CorruptRecord(
                f"{where}: the zstd frame holds more than {what}; the file is damaged or was "
                "not written by runrec. Run `runrec fsck` or move the file aside.",
                path=path,
            )
        parts.append(out)
        if dobj.eof:
            break
    if not dobj.eof:
        raise CorruptRecord(
            f"{where}: the zstd frame ends early; the file is truncated. Run `runrec fsck` or "
            "move the file aside.",
            path=path,
        )
    return b"".join(parts)


def _free_memory() -> int | None:
    """Bytes this process can still allocate, as far as Linux tells: MemAvailable + SwapFree,
    less where the process's address-space limit or its cgroup's memory limit (a Slurm job, a
    container) is tighter; None where unknown."""
    known: list[int] = []
    try:
        with open("/proc/meminfo", "rb") as f:
            info = dict(line.split(b":", 1) for line in f.read().splitlines() if b":" in line)
        known.append(sum(int(info[k].split()[0]) * 1024 for k in (b"MemAvailable", b"SwapFree")))
    except (OSError, KeyError, ValueError, IndexError):
        pass
    try:
        soft, _ = resource.getrlimit(resource.RLIMIT_AS)
        if soft != resource.RLIM_INFINITY:
            with open("/proc/self/statm", "rb") as f:
                used = int(f.read().split()[0]) * resource.getpagesize()
            known.append(soft - used)
    except (OSError, ValueError, IndexError):
        pass
    known += _cgroup_room()
    return max(min(known), 0) if known else None


def _cgroup_room() -> list[int]:
    """Room left under this process's cgroup memory limit (v2 ``memory.max``, v1
    ``memory.limit_in_bytes``), where there is one."""
    try:
        with open("/proc/self/cgroup", "rb") as f:
            lines = f.read().decode(errors="replace").splitlines()
    except OSError:
        return []
    for line in lines:
        _, ctrl, rel = line.split(":", 2) if line.count(":") >= 2 else ("", "-", "")
        if ctrl == "":  # v2
            files, base = ("memory.max", "memory.current"), "/sys/fs/cgroup"
        elif "memory" in ctrl.split(","):  # v1
            files, base = (
                ("memory.limit_in_bytes", "memory.usage_in_bytes"),
                "/sys/fs/cgroup/memory",
            )
        else:
            continue
        # the path as this process sees it; in a container, the mount is the group itself
        for d in (os.path.join(base, rel.strip("/")), base):
            try:
                with open(os.path.join(d, files[0]), "rb") as f:
                    top = f.read().strip()
                with open(os.path.join(d, files[1]), "rb") as f:
                    used = int(f.read())
                limit = 2**63 if top == b"max" else int(top)
            except (OSError, ValueError):
                continue
            return [limit - used] if limit < 2**60 else []  # v1 says "none" with ~2**63
    return []


def encode(obj: Any) -> bytes:
    """msgpack + zstd; ``StoreError`` for a record over ``MAX_RECORD_BYTES`` (which ``decode``
    would refuse)."""
    raw = _encoder.encode(obj)
    if len(raw) > MAX_RECORD_BYTES:
        raise StoreError(
            f"a {type(obj).__name__} record of {len(raw):,} bytes is over the limit of "
            f"{MAX_RECORD_BYTES:,} bytes for one record file. Keep large values out of config "
            "and metrics: log them as artifacts (run.log_artifact)."
        )
    return compress(raw)


def encode_raw(obj: Any) -> bytes:
    return _encoder.encode(obj)


def decode(data: bytes, type: type[T] = Any, path: str = "") -> T:  # type: ignore[assignment]
    """A record: zstd (at most ``MAX_RECORD_BYTES``), then msgpack as ``type``; anything else
    raises ``CorruptRecord`` naming the file."""
    return unpack(decompress(data, path, MAX_RECORD_BYTES), type, path)


def unpack(raw: bytes, type: type[T] = Any, path: str = "") -> T:  # type: ignore[assignment]
    """msgpack bytes as ``type`` (a record's content, or a msgpack blob); ``CorruptRecord``
    for anything that does not decode."""
    dec = _decoders.get(type)
    if dec is None:
        dec = _decoders[type] = msgspec.msgpack.Decoder(type)
    try:
        return dec.decode(raw)
    # ValidationError is a DecodeError; a string that is not UTF-8 raises UnicodeDecodeError
    except (msgspec.DecodeError, UnicodeDecodeError, RecursionError) as exc:
        why = "nested too deeply" if isinstance(exc, RecursionError) else str(exc)
        raise CorruptRecord(
            f"{path or 'data'}: does not decode as {getattr(type, '__name__', type)} ({why}). "
            "Run `runrec fsck` or move the file aside.",
            path=path,
        ) from exc


def to_json_builtins(obj: Any) -> Any:
    """Builtins suitable for JSON output (datetimes as ISO strings, bytes as hex)."""
    return msgspec.to_builtins(obj, enc_hook=_json_hook)


def _json_hook(obj: Any) -> Any:
    if isinstance(obj, datetime):
        return obj.isoformat()
    if isinstance(obj, bytes):
        return obj.hex()
    raise NotImplementedError(type(obj))


NONFINITE_KEY = "nonfinite"
"""The key of the map that carries the non-finite floats a JSON document wrote as ``null``."""


def finite_json(obj: Any, prefix: str = "") -> tuple[Any, dict[str, str]]:
    """``obj`` (JSON builtins) with every NaN / +Infinity / -Infinity float replaced by ``None``,
    and a map from the JSON Pointer (RFC 6901, under ``prefix``) of each replaced value to its
    spelling: ``"NaN"``, ``"Infinity"`` or ``"-Infinity"`` (docs/export.md, "Non-finite
    numbers"). Strict JSON has no such numbers; this is the one way runrec writes them."""
    found: dict[str, str] = {}
    return _finite(obj, prefix, found), found


def _finite(obj: Any, path: str, found: dict[str, str]) -> Any:
    if isinstance(obj, float) and not math.isfinite(obj):
        found[path] = "NaN" if obj != obj else ("Infinity" if obj > 0 else "-Infinity")
        return None
    if isinstance(obj, dict):
        return {k: _finite(v, f"{path}/{_pointer_token(str(k))}", found) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_finite(v, f"{path}/{i}", found) for i, v in enumerate(obj)]
    return obj


def _pointer_token(key: str) -> str:
    return key.replace("~", "~0").replace("/", "~1")


def strict_document(doc: dict[str, Any]) -> dict[str, Any]:
    """``doc`` with its non-finite floats as ``null`` and, when there were any, a top-level
    ``"nonfinite"`` map (JSON Pointer relative to ``doc`` -> ``"NaN"`` / ``"Infinity"`` /
    ``"-Infinity"``). The result serializes with ``json.dumps(..., allow_nan=False)``."""
    clean, found = finite_json(doc)
    if found:
        clean[NONFINITE_KEY] = found
    return clean
