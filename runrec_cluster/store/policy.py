"""Permissions of a store shared by a Unix group: the settings, and how every write applies them.

A store's permission settings are chosen once (``runrec init STORE --mode group --group lab`` or
``Store(path).ensure_writable(mode="group", group="lab")``) and kept in the store's own metadata
file, so every writer (every user, every job, every node) reads the same settings and applies
them: the process's umask cannot make a store unusable for the group.

    mode      directories   record files   promoted files / dirs   who can do what
    umask     umask         0444 - umask   0444 / 0555             the process's umask decides
    private   0700          0400           0400 / 0500             the owner only
    group     2770          0440           0440 / 2550             the group reads and adds; others nothing
    all       2775          0444           0444 / 2555             the group reads and adds; others read

``umask`` is the default and what stores made before these settings have: nothing is changed
after creation. In the other modes every directory made under the store is ``chmod``ed to the
mode above right after ``mkdir``, every file is ``fchmod``ed before it is renamed into place (so a
temporary file already has the final mode), directories are setgid (new entries inherit the
store's group) and are ``chgrp``ed to the group when they did not inherit it. Files are never
group-writable: they are never rewritten, only added, and adding needs the directory's write bit.

The writer side finds a path's settings here (``policy_for``): ``Store()`` registers its root,
and the settings are read from the metadata file once per process, at the first write.
"""

from __future__ import annotations

import grp
import os
import pwd
import stat
import threading
import time
from dataclasses import dataclass, field
from typing import Any

from runrec_cluster.errors import ConfigError, CorruptRecord, StoreError
from runrec_cluster.store import codec, layout

MODES = ("umask", "private", "group", "all")
MODE_HELP = (
    "umask: files and directories follow each process's umask (the default); "
    "private: the owner only (0700 directories, 0400 files); "
    "group: the group reads and adds runs, others nothing (2770 / 0440); "
    "all: the group reads and adds runs, everyone reads (2775 / 0444)"
)

_DIR = {"private": 0o700, "group": 0o2770, "all": 0o2775}
_RO_DIR = {"private": 0o500, "group": 0o2550, "all": 0o2555}
LEGACY_RO_FILE = 0o444  # promoted copies in a umask-mode store (as before the settings existed)
LEGACY_RO_DIR = 0o555
# a directory just made by another member stays without its group bits between its mkdir and
# its chmod; a writer denied there waits this long for the chmod before it gives up
RACE_WAIT_S = 2.0


@dataclass(frozen=True)
class Policy:
    """The permission settings of one store. ``gid`` is what goes on disk; ``group`` its name
    when it was set (for messages)."""

    mode: str = "umask"
    gid: int | None = None
    group: str = field(default="", compare=False)

    @property
    def enforced(self) -> bool:
        """False for ``umask``: writes then do no chmod at all (the historic behaviour)."""
        return self.mode != "umask"

    @property
    def dir_mode(self) -> int | None:
        return _DIR.get(self.mode)

    @property
    def ro_dir_mode(self) -> int:
        """Directories of a promoted copy, once complete."""
        return _RO_DIR.get(self.mode, LEGACY_RO_DIR)

    def file_mode(self, requested: int) -> int:
        """The mode a new file gets: the owner keeps ``requested``'s owner bits; the group (and
        others, in ``all``) get them without the write bit. ``umask`` mode: ``requested``."""
        if not self.enforced:
            return requested
        u = (requested >> 6) & 0o7
        if self.mode == "private":
            return u << 6
        shared = u & 0o5
        if self.mode == "group":
            return (u << 6) | (shared << 3)
        return (u << 6) | (shared << 3) | shared

    @property
    def ro_file_mode(self) -> int:
        """Files of a promoted copy."""
        return self.file_mode(0o444) if self.enforced else LEGACY_RO_FILE

    def describe(self) -> str:
        if not self.enforced:
            return "mode umask (files and directories follow each writer's umask)"
        d = self.dir_mode or 0
        who = f", group {self.group or self.gid} (gid {self.gid})" if self.gid is not None else ""
        return (
            f"mode {self.mode} (directories {d:04o}, files {self.file_mode(0o444):04o}, "
            f"promoted copies {self.ro_file_mode:04o}){who}"
        )

    def to_meta(self) -> dict[str, Any]:
        out: dict[str, Any] = {"mode": self.mode}
        if self.gid is not None:
            out["gid"] = self.gid
            out["group"] = self.group
        return out


UMASK = Policy()


# -- choosing settings ------------------------------------------------------------------------


def make_policy(root: str, mode: str | None, group: str | int | None) -> Policy:
    """Settings from what a user asked for, checked: the mode exists, the group exists and the
    caller may give files to it. The group defaults to the one a new directory at ``root``
    gets (the store directory's, else its parent's when setgid, else the caller's primary)."""
    mode = mode or ("group" if group is not None else "umask")
    if mode not in MODES:
        raise ConfigError(
            f"unknown permission mode {mode!r}. Choose one of {', '.join(MODES)} ({MODE_HELP})."
        )
    if mode in ("umask", "private"):
        if group is not None:
            raise ConfigError(
                f"--group {group} does not apply to mode {mode!r}: a group is only used by the "
                "modes 'group' and 'all'. Pass --mode group (or all) with it, or drop --group."
            )
        return Policy(mode=mode)
    if group is None:
        gid = _default_gid(root)
    else:
        gid = _resolve_group(group)
    _check_member(gid)
    return Policy(mode=mode, gid=gid, group=_group_name(gid))


def _resolve_group(group: str | int) -> int:
    if isinstance(group, int) or (isinstance(group, str) and group.isdigit()):
        return int(group)
    try:
        return grp.getgrnam(group).gr_gid
    except KeyError:
        raise ConfigError(
            f"no Unix group named {group!r} on this host. Check the name with `getent group "
            f"{group}`; your groups are: {_my_groups()}."
        ) from None


def _group_name(gid: int) -> str:
    try:
        return grp.getgrgid(gid).gr_name
    except KeyError:
        return str(gid)


def _my_groups() -> str:
    gids = sorted(set(os.getgroups()) | {os.getegid()})
    return ", ".join(_group_name(g) for g in gids)


def _check_member(gid: int) -> None:
    if os.geteuid() == 0 or gid == os.getegid() or gid in os.getgroups():
        return
    raise ConfigError(
        f"you are not a member of group {_group_name(gid)} (gid {gid}), so the store's files "
        f"cannot be given to it. Your groups are: {_my_groups()}. Ask an administrator to add "
        "you to the group (then log in again), or choose one of yours with --group."
    )


def _default_gid(root: str) -> int:
    try:
        return os.stat(root).st_gid
    except FileNotFoundError:
        pass
    parent = os.path.dirname(root)
    try:
        st = os.stat(parent)
        if st.st_mode & stat.S_ISGID:
            return st.st_gid
    except OSError:
        pass
    return os.getegid()


# -- the metadata file ------------------------------------------------------------------------


def read_meta(root: str) -> dict[str, Any] | None:
    """The store's metadata, or None when the file does not exist."""
    path = os.path.join(root, layout.META_FILE)
    try:
        with open(path, "rb") as f:
            raw = f.read()
    except (FileNotFoundError, NotADirectoryError):
        return None  # no store here yet (creating it says what is in the way)
    except OSError as exc:
        raise StoreError(
            f"cannot read the store's metadata {path}: {exc.strerror}. Check that you may read "
            "the store (for a shared store: that you are in its group, `ls -ln` shows it)."
        ) from exc
    meta: dict[str, Any] = codec.decode(raw, dict, path)
    return meta


def policy_from_meta(meta: dict[str, Any] | None, path: str = "") -> Policy:
    p = (meta or {}).get("permissions")
    if not p:
        return UMASK
    mode = p.get("mode", "umask") if isinstance(p, dict) else None
    if mode not in MODES:
        raise StoreError(
            f"store metadata {path} asks for permission mode {mode!r}, which this version of "
            "runrec does not know. Upgrade runrec-cluster to write to this store."
        )
    gid = p.get("gid")
    if mode in ("group", "all") and not isinstance(gid, int):
        raise StoreError(
            f"store metadata {path}: mode {mode!r} without a group id. Rerun "
            "`runrec init STORE --mode MODE --group GROUP` to repair it."
        )
    return Policy(
        mode=mode, gid=gid if mode in ("group", "all") else None, group=str(p.get("group", ""))
    )


# -- the writer side: which settings apply to a path ------------------------------------------

_lock = threading.Lock()
_roots: dict[str, Policy | None] = {}  # store root -> its settings (None: not read yet)


def register(root: str) -> None:
    """A store this process may write to; its settings are read at the first write."""
    if root not in _roots:
        with _lock:
            _roots.setdefault(root, None)


def remember(root: str, policy: Policy) -> None:
    with _lock:
        _roots[root] = policy


def forget(root: str) -> None:
    """Read the settings again at the next write (after they changed)."""
    with _lock:
        if root in _roots:
            _roots[root] = None


def store_root_of(path: str) -> str | None:
    best = None
    for root in tuple(_roots):  # a snapshot: another thread may register meanwhile
        if (path == root or path.startswith(root + os.sep)) and (
            best is None or len(root) > len(best)
        ):
            best = root
    return best


def policy_for(path: str) -> Policy:
    """The settings of the registered store that holds ``path`` (``UMASK`` outside stores)."""
    if not _roots:
        return UMASK
    root = store_root_of(path)
    if root is None:
        return UMASK
    pol = _roots.get(root)
    if pol is None:
        meta_path = os.path.join(root, layout.META_FILE)
        try:
            meta = read_meta(root)
        except CorruptRecord:
            raise  # never guess a shared store's settings: say which file is damaged
        except StoreError:
            return UMASK  # unreadable metadata: the write itself will fail and say why
        pol = policy_from_meta(meta, meta_path)
        remember(root, pol)  # no metadata yet: umask, until ensure_writable says otherwise
    return pol


# -- applying settings ------------------------------------------------------------------------


def set_dir(path: str, policy: Policy, st: os.stat_result | None = None) -> None:
    """Give a directory this process just made its group and mode."""
    mode = policy.dir_mode
    if mode is None:
        return
    if st is None:
        st = os.stat(path)
    chowned = policy.gid is not None and st.st_gid != policy.gid
    if chowned:
        os.chown(path, -1, policy.gid)  # type: ignore[arg-type]
    if chowned or stat.S_IMODE(st.st_mode) != mode:
        os.chmod(path, mode)  # after chown, which may clear the setgid bit


def set_root(root: str, policy: Policy) -> None:
    """Give the store's top directory its group and mode when it is created (it may have been
    made by hand before ``runrec init``)."""
    try:
        set_dir(root, policy)
    except OSError as exc:
        d = policy.dir_mode or 0
        raise StoreError(
            f"cannot give the store directory {root} group {policy.group or policy.gid} and mode "
            f"{d:04o} ({exc.strerror}): it belongs to another user. Have its owner run "
            f"`chgrp {policy.group or policy.gid} {root} && chmod {d:04o} {root}`, or create "
            "the store in a directory of your own."
        ) from exc


def wait_for_group(directory: str, policy: Policy) -> bool:
    """After a write into ``directory`` was denied: True when the directory turns out to be
    group-writable (another member made it and had not yet chmodded it), False at once when it
    is ours or not in the store's group, or after ``RACE_WAIT_S``."""
    if policy.dir_mode is None or policy.mode == "private":
        return False
    deadline = time.monotonic() + RACE_WAIT_S
    delay = 0.005
    while True:
        try:
            st = os.stat(directory)
        except OSError:
            return False
        if st.st_uid == os.geteuid() or st.st_gid != policy.gid:
            return False
        if os.geteuid() != 0 and st.st_gid not in os.getgroups() and st.st_gid != os.getegid():
            return False  # not a member: waiting changes nothing
        if st.st_mode & 0o070 == 0o070:
            return True
        if time.monotonic() > deadline:
            return False
        time.sleep(delay)
        delay = min(delay * 2, 0.2)


def denied_hint(path: str, policy: Policy) -> str:
    """What to do after EACCES/EPERM on ``path`` in a store with ``policy``: names the directory
    that refuses this process, its owner, group and mode."""
    if not policy.enforced:
        return "no permission: check the store's owner and mode, or use another store"
    if policy.mode == "private":
        return "no permission: this store is private to its owner (mode private)"
    root = store_root_of(path) or os.path.dirname(path)
    culprit = _refusing_dir(root, path)
    where = ""
    if culprit is not None:
        try:
            st = os.stat(culprit)
            where = (
                f"; {culprit} belongs to {_user_name(st.st_uid)}, group {_group_name(st.st_gid)}, "
                f"mode {stat.S_IMODE(st.st_mode):04o}"
            )
        except OSError:
            where = f"; {culprit} cannot be examined"
    return (
        f"no permission: the store is shared with group {policy.group or policy.gid} "
        f"(mode {policy.mode}){where}. Check that you are in that group (`id -Gn`); a "
        "directory without group access was made by a program that ignored the store's "
        f"settings: its owner can fix it with `runrec init {root} --fix`"
    )


def _refusing_dir(root: str, path: str) -> str | None:
    """The first directory from the store's top down to ``path``'s parent that this process
    may not enter (or, the last one, write to)."""
    parent = path if os.path.isdir(path) else os.path.dirname(path)
    rel = os.path.relpath(parent, root)
    chain = [root]
    if rel != "." and not rel.startswith(".."):
        for part in rel.split(os.sep):
            chain.append(os.path.join(chain[-1], part))
    for d in chain[:-1]:
        if not os.access(d, os.X_OK):
            return d
    last = chain[-1]
    return None if os.access(last, os.W_OK | os.X_OK) else last


def _user_name(uid: int) -> str:
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return f"uid {uid}"
