"""Atomic, crash-safe file writes without locks (no flock: it is unreliable on NFS).

A file is written under a unique temporary name beside its target, then renamed into place.
``rename`` within one directory is atomic on local filesystems and on NFS, so a reader sees
either no file or the whole file, and a process killed at any instant leaves at most a
``.tmp-*`` file that readers ignore and ``runrec fsck`` names.
"""

from __future__ import annotations

import errno
import os
import secrets

from ..errors import StoreError
from .layout import TMP_PREFIX

IMMUTABLE_MODE = 0o444  # records and blobs are never rewritten (umask still applies)


def makedirs(path: str) -> None:
    try:
        os.makedirs(path, exist_ok=True)
    except OSError as exc:
        raise StoreError(_explain(exc, path, "create the directory")) from exc


def write_atomic(
    path: str, data: bytes, *, fsync: bool = False, mode: int = IMMUTABLE_MODE
) -> None:
    """Write ``data`` to ``path`` atomically. Replaces an existing file."""
    directory = os.path.dirname(path)
    tmp = os.path.join(directory, f"{TMP_PREFIX}{secrets.token_hex(8)}")
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    except FileNotFoundError:
        makedirs(directory)
        fd = _open_or_raise(tmp, mode)
    except OSError as exc:
        raise StoreError(_explain(exc, path, "write")) from exc
    try:
        try:
            view = memoryview(data)
            while view:
                n = os.write(fd, view)
                view = view[n:]
            if fsync:
                os.fsync(fd)
        finally:
            os.close(fd)
        os.rename(tmp, path)
        if fsync:
            _fsync_dir(directory)
    except OSError as exc:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise StoreError(_explain(exc, path, "write")) from exc


def _open_or_raise(tmp: str, mode: int) -> int:
    try:
        return os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    except OSError as exc:
        raise StoreError(_explain(exc, tmp, "write")) from exc


def _fsync_dir(directory: str) -> None:
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def read_bytes(path: str) -> bytes:
    with open(path, "rb") as f:
        return f.read()


def _explain(exc: OSError, path: str, action: str) -> str:
    if exc.errno == errno.ENOSPC:
        hint = "the disk is full: free space or point --store / RUNREC_STORE elsewhere"
    elif exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        hint = "no permission: check the store's owner and mode, or use another store"
    else:
        hint = "check that the store directory exists and is on a working filesystem"
    return f"cannot {action} {path}: {exc.strerror or exc} ({hint})"
