"""Encoding of every stored file: msgpack via msgspec, then zstd.

One Encoder/Decoder pair per type is created once and reused (msgspec's performance advice).
zstd contexts are not thread-safe, so each thread gets its own.
"""

from __future__ import annotations

import threading
from datetime import datetime
from typing import Any, TypeVar

import msgspec
import zstandard

from ..errors import CorruptRecord

T = TypeVar("T")

ZSTD_LEVEL = 3
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


def decompress(data: bytes, path: str = "") -> bytes:
    try:
        return _zd().decompress(data)
    except zstandard.ZstdError as exc:
        raise CorruptRecord(
            f"{path or 'data'}: not a valid zstd frame ({exc}); the file is truncated or was "
            "not written by runrec. Run `runrec fsck` or move the file aside.",
            path=path,
        ) from exc


def encode(obj: Any) -> bytes:
    """msgpack + zstd."""
    return compress(_encoder.encode(obj))


def encode_raw(obj: Any) -> bytes:
    return _encoder.encode(obj)


def decode(data: bytes, type: type[T] = Any, path: str = "") -> T:  # type: ignore[assignment]
    raw = decompress(data, path)
    dec = _decoders.get(type)
    if dec is None:
        dec = _decoders[type] = msgspec.msgpack.Decoder(type)
    try:
        return dec.decode(raw)
    except (msgspec.DecodeError, msgspec.ValidationError) as exc:
        raise CorruptRecord(
            f"{path or 'data'}: does not decode as {getattr(type, '__name__', type)} ({exc}). "
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
