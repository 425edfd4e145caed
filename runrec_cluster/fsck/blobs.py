"""Blobs as fsck sees them: ``verify_blob`` (does a blob file decompress and hash to its name,
streaming, whatever its size) and ``blob_refs`` (every blob digest a record version names; it
lives in ``store/refs.py``, where the packer uses it too)."""

from __future__ import annotations

import hashlib
import os

import zstandard

from runrec_cluster.store.codec import MAX_RATIO
from runrec_cluster.store.refs import blob_refs

__all__ = ["CHUNK", "blob_refs", "verify_blob"]

CHUNK = 1 << 20  # bytes read and hashed at a time


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
