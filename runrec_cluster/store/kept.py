"""Kept copies of artifacts: content-addressed, read-only, never rewritten.

``log_artifact`` (job/artifacts.py) keeps a copy of an artifact in the store, so that a later
run writing the same path (a rerun of code that writes ``model.pt``) does not take the
original's artifact away: ``promote``, ``rr.Artifact("RUN:name")`` and ``runrec verify`` use the
kept copy when the original path changed or vanished. Paths: ``layout.kept_rel``.

How a file is kept, in order of preference:

1. **already there**: the store keeps one copy per content; nothing is written (``existing``);
2. **reflink** (``ioctl FICLONE``: btrfs, XFS, bcachefs, OCFS2...): a copy-on-write clone on
   the same filesystem, made in constant time, sharing the blocks until either side is written;
   a later in-place write to the user's file changes the user's file only;
3. **copy** otherwise (``shutil.copyfile``: ``sendfile`` in the kernel).

The user's file is never hard-linked: a hard link is the same file under a second name, so a
later in-place write to the user's path (``open(path, "wb")``, which truncates and rewrites the
same inode: what most code does) would change the kept copy too, and a file whose writes are
all rename-based cannot be told apart in advance. Hard links are used only between files the
store owns (a kept directory's files are links to the objects), which are read-only.

Every copy is hashed again before it takes its name (``check``: the caller's hash function;
the store layer hashes nothing itself) and must give the recorded digest; it gets its name with
``link`` (never replacing an existing object: a copy is never changed once kept), then is
read-only (the store's promoted-copy modes, ``policy.py``).
"""

from __future__ import annotations

import errno
import fcntl
import os
import secrets
import shutil
import stat
from collections.abc import Callable
from typing import Any

from runrec_cluster.errors import StoreError
from runrec_cluster.store import fs, layout
from runrec_cluster.store import policy as perms

FICLONE = 0x40049409  # linux/fs.h: _IOW(0x94, 9, int)
# errors that mean "no reflink here", not "the copy failed"
_NO_CLONE = (
    errno.EOPNOTSUPP,
    errno.ENOTSUP,
    errno.EXDEV,
    errno.EINVAL,
    errno.ENOTTY,
    errno.ENOSYS,
    errno.EPERM,
    errno.EBADF,
)

Check = Callable[[str], str]  # a path -> its digest (capture.data, with the recorded algorithm)


def clone_or_copy(src: str, dst: str) -> str:
    """Write ``dst`` (new) as a copy of ``src``: a reflink when the filesystem makes one, else
    a plain copy (``shutil.copyfile``: in the kernel on Linux). Returns ``"reflink"`` or
    ``"copy"``."""
    fd = os.open(dst, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with open(src, "rb") as fin:
            try:
                fcntl.ioctl(fd, FICLONE, fin.fileno())
                return "reflink"
            except OSError as exc:
                if exc.errno not in _NO_CLONE:
                    raise
    finally:
        os.close(fd)
    shutil.copyfile(src, dst)
    return "copy"


def kept_file(root: str, digest: str) -> str | None:
    """The kept copy of content ``digest`` (a file or a directory digest) if it is there."""
    try:
        path = layout.kept_path(root, digest)
    except Exception:
        return None
    return path if os.path.lexists(path) else None


def put_file(root: str, src: str, digest: str, check: Check) -> str:
    """Keep the file ``src`` as the object of ``digest``; how it was kept (``existing``,
    ``reflink``, ``copy``). ``StoreError`` when the copy does not hash to ``digest`` (the file
    changed meanwhile) or cannot be written."""
    dest = layout.kept_path(root, digest)
    if os.path.lexists(dest):
        return "existing"  # one copy per content, never rewritten
    directory = os.path.dirname(dest)
    fs.makedirs(directory)
    layout.inside(root, directory, StoreError)
    tmp = os.path.join(directory, f"{layout.TMP_PREFIX}{secrets.token_hex(6)}")
    try:
        how = clone_or_copy(src, tmp)
        got = check(tmp)
        if got != digest:
            raise StoreError(
                f"the copy of {src} hashes to {got}, not {digest}: the file changed while it "
                "was kept"
            )
        os.chmod(tmp, perms.policy_for(root).ro_file_mode)
        if not _link_new(tmp, dest):
            how = "existing"  # another job kept the same content meanwhile
    except OSError as exc:
        raise StoreError(fs.explain(exc, dest, "keep a copy at")) from exc
    finally:
        _unlink(tmp)
    return how


def put_tree(
    root: str,
    src: str,
    digest: str,
    manifest: list[tuple[str, int, str]],
    check: Check,
) -> str:
    """Keep the directory ``src`` (its ``manifest``: relpath, size, file digest) as the tree of
    ``digest``: every file as its object (``put_file``), then the tree directory of hard links
    to them, made aside and renamed into place. Returns the ways files were kept, "+"-joined
    (``existing`` alone when the whole tree was kept already)."""
    dest = layout.kept_path(root, digest)
    if os.path.lexists(dest):
        return "existing"
    hows: list[str] = []
    for rel, _size, fdigest in manifest:
        h = put_file(root, os.path.join(src, rel), fdigest, check)
        if h not in hows:
            hows.append(h)
    parent = os.path.dirname(dest)
    fs.makedirs(parent)
    layout.inside(root, parent, StoreError)
    tmp = os.path.join(parent, f"{layout.TMP_PREFIX}{secrets.token_hex(6)}")
    pol = perms.policy_for(root)
    try:
        fs.mkdir(tmp)
        for rel, _size, fdigest in manifest:
            target = os.path.join(tmp, rel)
            layout.inside(tmp, target, StoreError)
            fs.makedirs(os.path.dirname(target))
            obj = layout.kept_path(root, fdigest)
            try:
                os.link(obj, target)
            except OSError:  # no hard links here: a copy of the (read-only) object
                shutil.copyfile(obj, target)
                os.chmod(target, pol.ro_file_mode)
        for dirpath, _dirs, _files in os.walk(tmp, topdown=False):
            os.chmod(dirpath, pol.ro_dir_mode)
        try:
            os.rename(tmp, dest)
        except OSError as exc:
            if exc.errno not in (errno.EEXIST, errno.ENOTEMPTY) or not os.path.isdir(dest):
                raise
            return "existing"  # another job made the same tree meanwhile
    except OSError as exc:
        raise StoreError(fs.explain(exc, dest, "keep a copy at")) from exc
    finally:
        if os.path.lexists(tmp):
            remove_tree(tmp)
    return "+".join(hows)


def remove_tree(path: str) -> None:
    """Remove a read-only directory tree (a half-made kept tree)."""

    def writable(func: Any, p: str, _exc: Any) -> None:
        try:
            os.chmod(os.path.dirname(p), 0o700)
            if os.path.isdir(p) and not os.path.islink(p):
                os.chmod(p, stat.S_IRWXU)
            func(p)
        except OSError:
            pass

    for dirpath, _dirs, _files in os.walk(path):
        try:
            os.chmod(dirpath, stat.S_IRWXU)
        except OSError:
            pass
    shutil.rmtree(path, onerror=writable)


def _link_new(tmp: str, dest: str) -> bool:
    """Give ``tmp`` the name ``dest`` unless it is taken (``link`` never replaces); False when
    taken. Where hard links are refused (some FUSE filesystems), a rename when still free."""
    try:
        os.link(tmp, dest)
        return True
    except FileExistsError:
        return False
    except OSError as exc:
        if exc.errno not in (errno.EPERM, errno.EOPNOTSUPP, errno.ENOTSUP, errno.EMLINK):
            raise
        if os.path.lexists(dest):
            return False
        os.rename(tmp, dest)
        return True


def _unlink(p: str) -> None:
    try:
        os.unlink(p)
    except FileNotFoundError:
        pass
