"""Process identity that survives PID reuse: PID + start time (clock ticks since boot) + boot id;
the user a record names (``current_user``, the one rule every writer uses)."""

from __future__ import annotations

import getpass
import os
import socket

from runrec_cluster.record import Process


def boot_id() -> str:
    try:
        with open("/proc/sys/kernel/random/boot_id") as f:
            return f.read().strip()
    except OSError:
        return ""


def start_ticks(pid: int) -> int | None:
    """Field 22 of /proc/PID/stat, or None when the process does not exist."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            data = f.read()
    except OSError:
        return None
    # the command name (field 2) may contain spaces and parentheses: split after the last ')'
    rest = data[data.rfind(b")") + 2 :].split()
    try:
        return int(rest[19])
    except (IndexError, ValueError):
        return None


def identity(pid: int | None = None) -> Process | None:
    pid = os.getpid() if pid is None else pid
    ticks = start_ticks(pid)
    if ticks is None:
        return None
    return Process(host=socket.gethostname(), pid=pid, start_ticks=ticks, boot_id=boot_id())


def is_alive(p: Process) -> bool | None:
    """True/False for a process on this host; None when it lives on another host (unknown)."""
    if p.host != socket.gethostname():
        return None
    if p.boot_id and p.boot_id != boot_id():
        return False
    ticks = start_ticks(p.pid)
    if ticks is None or ticks != p.start_ticks:
        return False
    try:
        with open(f"/proc/{p.pid}/stat", "rb") as f:
            state = f.read().rsplit(b")", 1)[1].split()[0]
        if state == b"Z":  # a zombie has finished; its parent just has not reaped it
            return False
    except (OSError, IndexError):
        return False
    return True


def current_user() -> str:
    """The user a record names (submitter, canceller, annotator, promoter): the login name as
    ``getpass`` finds it ($LOGNAME, $USER, ..., then the password database), else the uid."""
    try:
        return getpass.getuser()
    except Exception:  # no name for this uid (containers): the number still identifies it
        return str(os.getuid())
