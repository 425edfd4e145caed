"""Blobs as fsck sees them: ``verify_blob`` (does a blob file decompress and hash to its name,
streaming, whatever its size) and ``blob_refs`` (every blob digest a record version names)."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterator
from typing import Any

import zstandard

from runrec_cluster.record import CONTEXT_KEY
from runrec_cluster.store.codec import MAX_RATIO

CHUNK = 1 << 20  # bytes read and hashed at a time

# patch fields holding blob digests; user data (config, metrics, tags, backend options, rerun
# values) is never read as a reference
BLOB_KEYS = frozenset({"patch_blob", "packages_blob", "call_blob", "manifest_blob", "batch_script"})
SKIP_TOP = frozenset({"config", "metrics", "tags", "warnings", "annotations"})
SKIP_NESTED = frozenset(
    {"options", "hardware_expect", "hardware_request", "pinned", "intended", "env_vars"}
)


def verify_blob(path: str, hexd: str) -> int | str:
    """The uncompressed size when the blob at ``path`` decompresses and hashes to ``hexd``; else
    what is wrong. Streams (a bounded read at a time): memory stays small whatever the blob's
    size, and a frame claiming more than it can hold is refused before reading it."""
    h = hashlib.sha256()
    size = 0
    declared = -1
    try:
        with open(path, "rb") as f:
            head = f.read(18)  # the longest zstd frame header
            try:
                declared = zstandard.frame_content_size(head)
            except zstandard.ZstdError:
                declared = -1  # not a frame: the reader below says why
            if declared > os.fstat(f.fileno()).st_size * MAX_RATIO:
                return (
                    f"the zstd header claims {declared:,} bytes, more than the file can hold: "
                    "the file is damaged or was not written by runrec"
                )
            f.seek(0)
            reader = zstandard.ZstdDecompressor().stream_reader(f, read_across_frames=False)
            while chunk := reader.read(CHUNK):
                size += len(chunk)
                h.update(chunk)
                if 0 <= declared < size:
                    break
    except zstandard.ZstdError as exc:
        if size and size == declared:
            return "trailing bytes after the compressed data: the file was not written by runrec"
        return f"not a valid zstd frame ({exc}): the file is damaged or was not written by runrec"
    except OSError as exc:
        return f"cannot read: {exc.strerror}"
    if declared >= 0 and size != declared:
        return (
            f"holds {size:,} bytes where its header declares {declared:,}: the file is truncated"
            if size < declared
            else f"holds more than the {declared:,} bytes its header declares: the file is damaged"
        )
    got = h.hexdigest()
    if got != hexd:
        return f"its content hashes to sha256:{got}, not to its name sha256:{hexd}"
    return size


def blob_refs(patch: dict[str, Any]) -> Iterator[tuple[str, str]]:
    """(field path, value) of every blob reference in a version's patch."""
    for k, v in patch.items():
        if k in SKIP_TOP:
            continue
        if k == CONTEXT_KEY:
            if isinstance(v, str):
                yield CONTEXT_KEY, v
            continue
        if k == "result" and isinstance(v, dict):
            b = v.get("blob")
            if isinstance(b, str):
                yield "result.blob", b
            continue
        yield from _walk(v, k)


def _walk(v: Any, where: str) -> Iterator[tuple[str, str]]:
    if isinstance(v, dict):
        for k, x in v.items():
            if not isinstance(k, str) or k in SKIP_NESTED:
                continue
            if k in BLOB_KEYS:
                if isinstance(x, str):
                    yield f"{where}.{k}", x
            else:
                yield from _walk(x, f"{where}.{k}")
    elif isinstance(v, list):
        for i, x in enumerate(v):
            yield from _walk(x, f"{where}[{i}]")
