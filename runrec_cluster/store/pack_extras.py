"""What a pack holds besides record versions: the small blobs its runs name, and the logs of
small finished runs (``store/packs.py`` writes them; readers find them with ``PackCache.blob``
and ``PackCache.logs``, after looking for the loose file first).

**Blobs.** A blob the packed runs name (``store/refs.py``: result, call, code patch, packages,
manifests, the shared launch context and what it names) whose content is at most
``BLOB_LIMIT`` bytes is copied into the pack, and its loose file deleted once the pack is
linked. Blobs are shared by content (a sweep's launch context, a code patch, a package list),
so a blob may also be named by runs that stay loose (still running) or by runs written later:
they read it from the pack (``Store.get_blob``: loose first, then the packs of the shards it read
runs from, then every pack). A writer that stores the same content again writes a new loose
file (``put_blob`` finds none), which the next pack of its runs deletes again. A blob is packed
in the shard of each run that names it, so a run's blobs are found in its own shard's packs: one
that only another shard's pack holds is copied into this pack too (small by definition). The
content is hashed before it is packed: a damaged loose blob stays loose, for fsck to report.
Larger blobs and kept artifact copies (``store/kept.py``) stay files.

**Logs.** ``logs/<shard>/<run>/`` of a finished run holding only ``stdout.txt`` / ``stderr.txt``,
together at most ``LOG_LIMIT`` bytes and unchanged for ``log_quiet_s`` seconds (a process the
job started may still write for a moment after the run's end version), is copied into the pack,
and the files and the directory deleted. A file that changed between the read and the delete
is left (the loose file is read first, so the newest content wins). Runs still running, and log
directories holding anything else (a submitit checkpoint, a rescue copy), stay loose.

The same ordering rules as versions hold: the pack is linked before anything is deleted, and a
packer killed in between leaves loose copies of packed content, which the next packer deletes.
"""

from __future__ import annotations

import hashlib
import os
import stat
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from runrec_cluster.errors import CorruptRecord, StoreError
from runrec_cluster.record import CONTEXT_KEY, RecordVersion
from runrec_cluster.store import codec, fs, layout
from runrec_cluster.store.refs import blob_refs

BLOB_LIMIT = 64 * 1024  # a blob's content, bytes: at most this is packed
LOG_LIMIT = 64 * 1024  # a run's log files together, bytes
LOG_FILES = frozenset({"stdout.txt", "stderr.txt"})  # what the local backend writes
LOG_QUIET_S = 300.0  # logs unchanged this long (seconds) may be packed

Entry = tuple[str, bytes]


@dataclass
class Extras:
    """What to put into one pack besides versions, and which loose files to delete after."""

    blobs: dict[str, bytes] = field(default_factory=dict)  # sha256 hex -> content
    logs: dict[str, list[Entry]] = field(default_factory=dict)  # run id -> [(log name, bytes)]
    loose_blobs: list[str] = field(default_factory=list)  # blob files packed (now or before)
    # log directory -> [(name, size, mtime ns)] of its files packed (now or before)
    loose_logs: dict[str, list[tuple[str, int, int]]] = field(default_factory=dict)


def gather(
    root: str,
    shard: str,
    runs: dict[str, list[Entry]],
    cache: Any,
    *,
    log_quiet_s: float,
    finished_packed: Callable[[str], bool] | None = None,
) -> Extras:
    """The small blobs that ``runs`` (run id -> versions being packed, or found packed) name,
    and their logs; with ``finished_packed``, also the logs of the shard's runs that are only
    packed (no run directory left) and finished. ``cache``: the packer's ``PackCache``."""
    ex = Extras()
    _blobs(root, shard, runs, cache, ex)
    now = time.time()
    for rid in runs:
        _logs(root, rid, cache, ex, now, log_quiet_s)
    if finished_packed is not None:
        for rid in _log_only_runs(root, shard, runs):
            if _logs_ready(layout.log_dir(root, rid), now, log_quiet_s) and finished_packed(rid):
                _logs(root, rid, cache, ex, now, log_quiet_s)
    return ex


def delete(ex: Extras) -> tuple[int, int]:
    """Delete the loose copies of what is packed: blob files, then log files unchanged since
    they were read, then their emptied directories. (files deleted, directories removed)."""
    files = dirs = 0
    for path in ex.loose_blobs:
        try:
            os.unlink(path)
            files += 1
        except FileNotFoundError:
            pass
    for d, entries in ex.loose_logs.items():
        for name, size, mtime in entries:
            path = os.path.join(d, name)
            try:
                st = os.lstat(path)
                if st.st_size == size and st.st_mtime_ns == mtime:
                    os.unlink(path)  # a file that grew since the read stays: it is newer
                    files += 1
            except FileNotFoundError:
                pass
        try:
            os.rmdir(d)
            dirs += 1
        except OSError:
            pass  # something else is in it (a newer file): the directory stays
    return files, dirs


# -- blobs ------------------------------------------------------------------------------------


def _blobs(root: str, shard: str, runs: dict[str, list[Entry]], cache: Any, ex: Extras) -> None:
    contexts: dict[str, dict[str, Any]] = {}
    digests: set[str] = set()
    for entries in runs.values():
        for name, raw in entries:
            try:
                v = codec.unpack(raw, RecordVersion, name)
            except CorruptRecord:
                continue  # left for fsck; the packer skipped unreadable runs already
            digests.update(_refs(root, v.patch, contexts, cache))
    for hexd in sorted(digests):
        loose = layout.blob_path(root, "sha256:" + hexd)
        if cache.shard_blob(shard, hexd) is not None:
            if os.path.exists(loose):
                ex.loose_blobs.append(loose)  # packed here before: the loose copy goes
            continue
        data = _small_loose(loose, hexd)
        if data is not None:
            ex.blobs[hexd] = data
            ex.loose_blobs.append(loose)
            continue
        if not os.path.exists(loose):  # only another shard's pack holds it: copy it here
            got = cache.blob(hexd)
            if got is not None and len(got[1]) <= BLOB_LIMIT and _sha(got[1]) == hexd:
                ex.blobs[hexd] = got[1]


def _refs(
    root: str, patch: dict[str, Any], contexts: dict[str, dict[str, Any]], cache: Any
) -> Iterable[str]:
    """The sha256 hex digests a version names, with those its shared launch context names."""
    out = []
    for _, value in blob_refs(patch):
        m = layout.DIGEST_RE.match(value)
        if not m:
            continue
        out.append(m.group(1))
        if value == patch.get(CONTEXT_KEY):
            ctx = contexts.get(value)
            if ctx is None:
                ctx = contexts[value] = _context(root, m.group(1), cache)
            out += [
                m2.group(1)
                for _, v2 in blob_refs(ctx)
                if (m2 := layout.DIGEST_RE.match(v2)) is not None
            ]
    return out


def _context(root: str, hexd: str, cache: Any) -> dict[str, Any]:
    path = layout.blob_path(root, "sha256:" + hexd)
    try:
        data: bytes | None = codec.decompress(fs.read_bytes(path), path)
    except FileNotFoundError:
        got = cache.blob(hexd)
        data = got[1] if got is not None else None
    except (CorruptRecord, StoreError, OSError):
        data = None
    if data is None:
        return {}
    try:
        ctx = codec.unpack(data, dict[str, Any], path)
    except CorruptRecord:
        return {}
    return ctx if isinstance(ctx, dict) else {}


def _small_loose(path: str, hexd: str) -> bytes | None:
    """The content of a loose blob when it is small and sound; None otherwise."""
    try:
        if os.stat(path).st_size > BLOB_LIMIT + 64:  # a frame is never much larger than its content
            return None
        data = codec.decompress(fs.read_bytes(path), path, BLOB_LIMIT)
    except (OSError, CorruptRecord, StoreError):
        return None
    return data if _sha(data) == hexd else None


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


# -- logs -------------------------------------------------------------------------------------


def _log_only_runs(root: str, shard: str, runs: dict[str, list[Entry]]) -> list[str]:
    """Runs of the shard with a log directory and no run directory (packed whole)."""
    try:
        names = os.listdir(os.path.join(root, "logs", shard))
    except (FileNotFoundError, NotADirectoryError):
        return []
    return [
        n
        for n in sorted(names)
        if layout.RUN_ID_RE.match(n)
        and n not in runs
        and not os.path.lexists(layout.run_dir(root, n))
    ]


def _log_files(d: str) -> list[tuple[str, os.stat_result]] | None:
    """The log files of a directory that may be packed, with their stat; None when it holds
    anything else, nothing, or more than ``LOG_LIMIT`` bytes."""
    try:
        names = os.listdir(d)
    except OSError:
        return None
    if not names or any(n not in LOG_FILES for n in names):
        return None
    out = []
    for n in sorted(names):
        try:
            st = os.lstat(os.path.join(d, n))
        except OSError:
            return None
        if not stat.S_ISREG(st.st_mode):
            return None
        out.append((n, st))
    if sum(st.st_size for _, st in out) > LOG_LIMIT:
        return None
    return out


def _logs_ready(d: str, now: float, quiet_s: float) -> bool:
    files = _log_files(d)
    return files is not None and all(now - st.st_mtime >= quiet_s for _, st in files)


def _logs(root: str, rid: str, cache: Any, ex: Extras, now: float, quiet_s: float) -> None:
    d = layout.log_dir(root, rid)
    files = _log_files(d)
    if files is None or any(now - st.st_mtime < quiet_s for _, st in files):
        return
    entries = []
    for name, st in files:
        try:
            data = fs.read_bytes(os.path.join(d, name))
        except OSError:
            return
        if len(data) != st.st_size:
            return  # changed while read: next time
        entries.append((name, data))
    packed = cache.logs(rid)
    if any(packed.get(n) != b for n, b in entries):
        ex.logs[rid] = entries
    ex.loose_logs[d] = [(n, st.st_size, st.st_mtime_ns) for n, st in files]
