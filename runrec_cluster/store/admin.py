"""Changing an existing store's permission settings (``runrec init STORE --mode M [--fix]``):
the new settings into its metadata file (``change_policy``), and onto the files already there
(``fix_tree``). How the settings are applied to every new write is in ``store/policy.py``."""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from dataclasses import dataclass

from runrec_cluster.errors import StoreError
from runrec_cluster.store import codec, fs, layout
from runrec_cluster.store.policy import Policy, read_meta, remember, set_root


def change_policy(root: str, policy: Policy, *, fsync: bool = False) -> None:
    """New settings for an existing store: its top directory first (refused when it belongs to
    another user), then the metadata file, replaced atomically. Existing entries keep their
    modes until ``fix_tree``; writers that already read the old settings keep them until they
    restart."""
    meta = read_meta(root)
    if meta is None:
        raise StoreError(
            f"no store at {root} (no {layout.META_FILE}). Create it with `runrec init`."
        )
    set_root(root, policy)
    remember(root, policy)
    if policy.enforced:
        meta["permissions"] = policy.to_meta()
    else:
        meta.pop("permissions", None)
    fs.write_atomic(os.path.join(root, layout.META_FILE), codec.encode(meta), fsync=fsync)


@dataclass
class FixReport:
    fixed: int = 0  # entries whose group or mode changed
    ok: int = 0  # entries already right
    not_ours: list[str] | None = None  # entries another user owns, left as they were
    failed: list[str] | None = None  # entries we own but could not change (with the reason)


def fix_tree(root: str, policy: Policy) -> FixReport:
    """Give every entry of the store that this process may change (as root: all; else the ones
    it owns) the group and mode of ``policy``; promoted copies stay read-only. Symlinks are
    left alone."""
    rep = FixReport(not_ours=[], failed=[])
    me = os.geteuid()
    promoted = os.path.join(root, "promoted")
    for path, is_dir in _walk(root):
        try:
            st = os.lstat(path)
        except FileNotFoundError:
            continue
        if stat.S_ISLNK(st.st_mode):
            continue
        ro = _in_promoted_version(promoted, path)
        if is_dir:
            want = policy.ro_dir_mode if ro else policy.dir_mode
        else:
            want = policy.ro_file_mode if ro else policy.file_mode(stat.S_IMODE(st.st_mode))
        if want is None:  # umask mode: nothing to impose on directories
            want = stat.S_IMODE(st.st_mode)
        gid_ok = policy.gid is None or st.st_gid == policy.gid
        if gid_ok and stat.S_IMODE(st.st_mode) == want:
            rep.ok += 1
            continue
        if me != 0 and st.st_uid != me:
            rep.not_ours.append(path)  # type: ignore[union-attr]
            continue
        try:
            if not gid_ok:
                os.chown(path, -1, policy.gid)  # type: ignore[arg-type]
            os.chmod(path, want)
            rep.fixed += 1
        except OSError as exc:
            rep.failed.append(f"{path}: {exc.strerror}")  # type: ignore[union-attr]
    return rep


def _walk(root: str) -> Iterator[tuple[str, bool]]:
    """Every entry, parents before children (a directory is opened up before its children are
    read, so a 0500 directory of ours does not hide them)."""
    yield root, True
    stack = [root]
    while stack:
        d = stack.pop()
        try:
            entries = list(os.scandir(d))
        except OSError:
            continue
        for e in entries:
            is_dir = e.is_dir(follow_symlinks=False)
            yield e.path, is_dir
            if is_dir:
                stack.append(e.path)


def _in_promoted_version(promoted: str, path: str) -> bool:
    """``promoted/NAME/vN`` or anything inside it (a completed or interrupted copy)."""
    if not path.startswith(promoted + os.sep):
        return False
    parts = path[len(promoted) + 1 :].split(os.sep)
    return len(parts) >= 2
