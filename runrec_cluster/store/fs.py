"""Atomic, crash-safe file writes without locks (no flock: it is unreliable on NFS).

A file is written under a unique temporary name beside its target, then renamed into place.
``rename`` within one directory is atomic on local filesystems and on NFS, so a reader sees
either no file or the whole file, and a process killed at any instant leaves at most a
``.tmp-*`` file that readers ignore and ``runrec fsck`` names.

Inside a store whose permission settings are not ``umask`` (``perms.py``), every directory made
here gets the store's group and mode right after ``mkdir``, and every file its final mode before
the rename, whatever the process's umask.
"""

from __future__ import annotations

import errno
import os
import secrets
from typing import BinaryIO

from runrec_cluster.errors import StoreError
from runrec_cluster.store import policy as perms
from runrec_cluster.store.layout import TMP_PREFIX

IMMUTABLE_MODE = 0o444  # records and blobs are never rewritten (umask still applies)
APPEND_MODE = 0o644  # logs and journals: appended by their one writer, read by the others
_DENIED = (errno.EACCES, errno.EPERM)


def makedirs(path: str) -> None:
    """``os.makedirs(path, exist_ok=True)``; inside a store, with its group and mode."""
    pol = perms.policy_for(path)
    try:
        if pol.dir_mode is None:
            os.makedirs(path, exist_ok=True)
        else:
            _makedirs_store(path, pol)
    except OSError as exc:
        raise StoreError(explain(exc, path, "create the directory")) from exc


def _makedirs_store(path: str, pol: perms.Policy) -> None:
    root = perms.store_root_of(path) or path
    missing = []
    d = path
    while not os.path.isdir(d):
        missing.append(d)
        if d == root:
            break
        d = os.path.dirname(d)
    if missing and missing[-1] == root:
        os.makedirs(os.path.dirname(root), exist_ok=True)  # above the store: not its business
    for d in reversed(missing):
        mkdir(d, exist_ok=True, _pol=pol)


def mkdir(path: str, *, exist_ok: bool = False, _pol: perms.Policy | None = None) -> None:
    """``os.mkdir`` (the parent must exist; OSError as ``os.mkdir`` raises it), then, inside a
    store, the store's group and mode. With ``exist_ok`` a directory made by another writer is
    left as it is (its maker set its mode)."""
    pol = _pol or perms.policy_for(path)
    mode = pol.dir_mode & 0o777 if pol.dir_mode else 0o777
    try:
        try:
            os.mkdir(path, mode)
        except OSError as exc:
            if exc.errno not in _DENIED or not perms.wait_for_group(os.path.dirname(path), pol):
                raise
            os.mkdir(path, mode)
    except FileExistsError:
        if exist_ok and os.path.isdir(path):
            return
        raise
    perms.set_dir(path, pol)


def write_atomic(
    path: str, data: bytes, *, fsync: bool = False, mode: int = IMMUTABLE_MODE
) -> None:
    """Write ``data`` to ``path`` atomically. Replaces an existing file."""
    tmp, fd = _open_tmp(path, mode)
    _finish(tmp, fd, path, data, fsync, replace=True)


def create_atomic(
    path: str, data: bytes, *, fsync: bool = False, mode: int = IMMUTABLE_MODE
) -> bool:
    """Like ``write_atomic``, but never replaces: False (and nothing written) when ``path``
    already exists, also when another writer creates it at the same instant."""
    tmp, fd = _open_tmp(path, mode)
    return _finish(tmp, fd, path, data, fsync, replace=False)


def _open_tmp(path: str, mode: int) -> tuple[str, int]:
    directory = os.path.dirname(path)
    tmp = os.path.join(directory, f"{TMP_PREFIX}{secrets.token_hex(8)}")
    pol = perms.policy_for(path)
    final = pol.file_mode(mode)
    try:
        fd = _open_excl(tmp, final, pol)
    except FileNotFoundError:
        fd = _open_in_new_dir(tmp, final, pol, directory)
    except OSError as exc:
        raise StoreError(explain(exc, path, "write")) from exc
    if pol.enforced:
        try:
            os.fchmod(fd, final)  # the umask may have taken bits away: the temp file is final
        except OSError as exc:
            _discard(tmp, fd)
            raise StoreError(explain(exc, path, "set the mode of")) from exc
    return tmp, fd


def _open_excl(tmp: str, mode: int, pol: perms.Policy) -> int:
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL
    try:
        return os.open(tmp, flags, mode)
    except OSError as exc:
        if exc.errno not in _DENIED or not perms.wait_for_group(os.path.dirname(tmp), pol):
            raise
    return os.open(tmp, flags, mode)


def _finish(tmp: str, fd: int, path: str, data: bytes, fsync: bool, *, replace: bool) -> bool:
    created = True
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
        if replace:
            os.rename(tmp, path)
        else:
            created = _link_new(tmp, path)
        if fsync and created:
            _fsync_dir(os.path.dirname(path))
    except OSError as exc:
        _unlink(tmp)
        raise StoreError(explain(exc, path, "write")) from exc
    return created


def _link_new(tmp: str, path: str) -> bool:
    """Give ``tmp`` the name ``path`` only if that name is free (``link`` never replaces)."""
    try:
        os.link(tmp, path)
    except FileExistsError:
        _unlink(tmp)
        return False
    except OSError as exc:
        if exc.errno not in (errno.EPERM, errno.EOPNOTSUPP, errno.ENOTSUP, errno.EMLINK):
            raise
        if os.path.lexists(path):  # no hard links here (some FUSE filesystems): best effort
            _unlink(tmp)
            return False
        os.rename(tmp, path)
        return True
    _unlink(tmp)
    return True


def open_append(path: str) -> BinaryIO:
    """A log or journal file opened for appending (created if missing, its directory too): in a
    store with settings, readable by whom the settings say, whatever the umask."""
    pol = perms.policy_for(path)
    mode = pol.file_mode(APPEND_MODE) if pol.enforced else 0o666
    flags = os.O_WRONLY | os.O_CREAT | os.O_APPEND
    try:
        try:
            fd = os.open(path, flags, mode)
        except FileNotFoundError:
            makedirs(os.path.dirname(path))
            fd = os.open(path, flags, mode)
    except OSError as exc:
        raise StoreError(explain(exc, path, "open for appending")) from exc
    if pol.enforced:
        try:
            st = os.fstat(fd)
            if st.st_uid == os.geteuid() and (st.st_mode & 0o7777) != mode:
                os.fchmod(fd, mode)
        except OSError as exc:
            os.close(fd)
            raise StoreError(explain(exc, path, "set the mode of")) from exc
    return os.fdopen(fd, "ab")


def append_bytes(path: str, data: bytes) -> None:
    """Append ``data`` with one ``write()`` (whole or nothing, even under ``kill -9``) to a file
    that has a single writer (a journal); created with the store's settings like
    ``open_append``. Raises OSError / StoreError: the caller decides whether it matters."""
    fd = open_append_fd(path)
    try:
        os.write(fd, data)
    finally:
        os.close(fd)


def open_append_fd(path: str) -> int:
    """A descriptor appending to ``path`` (created, its directory too, with the store's
    settings). The caller writes whole lines with one ``os.write`` each and closes it."""
    pol = perms.policy_for(path)
    mode = pol.file_mode(APPEND_MODE) if pol.enforced else 0o644
    flags = os.O_WRONLY | os.O_CREAT | os.O_APPEND
    try:
        fd = os.open(path, flags, mode)
    except FileNotFoundError:
        makedirs(os.path.dirname(path))
        fd = os.open(path, flags, mode)
    try:
        if pol.enforced and os.fstat(fd).st_size == 0:  # just made: give it its final mode
            os.fchmod(fd, mode)
    except OSError:
        os.close(fd)
        raise
    return fd


def _discard(tmp: str, fd: int) -> None:
    try:
        os.close(fd)
    except OSError:
        pass
    _unlink(tmp)


def _unlink(p: str) -> None:
    try:
        os.unlink(p)
    except OSError:
        pass


def _open_in_new_dir(tmp: str, mode: int, pol: perms.Policy, directory: str) -> int:
    """Make the directory and open ``tmp`` in it. Tried a few times: a packer
    (``store/packs.py``) removes a packed run's empty directory, and may do so between the
    ``mkdir`` and the ``open`` of a writer adding a late version to that run."""
    for _ in range(5):
        makedirs(directory)
        try:
            return _open_excl(tmp, mode, pol)
        except FileNotFoundError:
            continue
        except OSError as exc:
            raise StoreError(explain(exc, tmp, "write")) from exc
    return _open_or_raise(tmp, mode, pol)


def _open_or_raise(tmp: str, mode: int, pol: perms.Policy) -> int:
    try:
        return _open_excl(tmp, mode, pol)
    except OSError as exc:
        raise StoreError(explain(exc, tmp, "write")) from exc


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


def explain(exc: OSError, path: str, action: str) -> str:
    """A message for a failed filesystem call: what, where, why, and what to do next."""
    if exc.errno == errno.ENOSPC:
        hint = "the disk is full: free space or point --store / RUNREC_STORE elsewhere"
    elif exc.errno in _DENIED:
        hint = perms.denied_hint(path, perms.policy_for(path))
    elif exc.errno == errno.EROFS:
        hint = "the filesystem is read-only: point --store / RUNREC_STORE elsewhere"
    else:
        hint = "check that the store directory exists and is on a working filesystem"
    return f"cannot {action} {path}: {exc.strerror or exc} ({hint})"
