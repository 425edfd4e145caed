"""``runrec fsck --repair``: check, set aside what is damaged, record the losses, rebuild the
query index, check again.

``repair(store)`` moves what is damaged into ``STORE/quarantine/<time>-<token>/`` (same relative
paths; nothing is deleted), records every loss in the runs it touches (a placeholder version at
a lost seq, or an ``fsck`` version naming a lost blob), rebuilds the query index, and checks
again: its report is the store as it is afterwards, with what was found before and what was
done.

Live writers: a repair moves a leftover only when it is older than ``min_age`` seconds (default
1 h), so it never pulls a temporary file from under a writer that is still writing it;
``min_age=0`` moves them all (only when nothing writes to the store). Damaged files are moved
whatever their age: nobody writes them any more.
"""

from __future__ import annotations

import errno
import json
import os
import secrets
import socket
import time
from datetime import UTC, datetime

from runrec_cluster.errors import ConfigError, RunrecError, StoreError
from runrec_cluster.fsck.check import check
from runrec_cluster.fsck.findings import FSCK_EVENT, Action, Finding, FsckReport, RepairResult
from runrec_cluster.fsck.pack_repair import damaged_packs, repair_pack
from runrec_cluster.query.index import Index
from runrec_cluster.record import RecordVersion, Writer
from runrec_cluster.store import Store, codec, fs, layout

DEFAULT_MIN_AGE_S = 3600.0

# damaged files: moved whatever their age
_MOVE_FILE = frozenset(
    {
        "unreadable_version",
        "mismatched_version",
        "does_not_fold",
        "bad_blob",
        "unreadable_promotion",
        "mismatched_promotion",
        "unreadable_retirement",
        "mismatched_retirement",
        "outside_link",
    }
)
# leftovers: moved once older than min_age
_MOVE_OLD = frozenset({"temp_file", "empty_run_dir"})
_RUN_HISTORY = frozenset(
    {"unreadable_version", "mismatched_version", "does_not_fold", "seq_gap", "no_launch"}
)


def repair(store: Store, *, min_age_s: float = DEFAULT_MIN_AGE_S) -> FsckReport:
    """Check, set aside what is damaged, record the losses, rebuild the index, check again.

    Nothing is deleted: files and directories are moved to ``STORE/quarantine/<time>-<token>/``
    under their relative path, with ``fsck-repair.json`` there listing every move and why.
    Returns the report of the second check, with ``repair`` holding what was found and done.
    """
    if min_age_s < 0:
        raise ConfigError(
            f"--min-age {min_age_s:g}: the age of the leftovers to move must be 0 seconds or more. "
            "Give --min-age 0 to move every leftover (only when nothing writes to the store)."
        )
    t0 = time.perf_counter()
    before = check(store)
    r = _Repairer(store, min_age_s)
    r.apply(before.findings)
    index = r.rebuild_index()
    r.write_log(before.findings)
    after = check(store)
    after.seconds = time.perf_counter() - t0
    after.repair = RepairResult(
        found=before.findings,
        actions=r.actions,
        quarantine=r.qdir if r.moved else None,
        min_age_s=min_age_s,
        index=index,
    )
    return after


class _Repairer:
    def __init__(self, store: Store, min_age_s: float) -> None:
        self.store = store
        self.root = store.root
        self.min_age_s = min_age_s
        stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
        self.qdir = layout.quarantine_dir(self.root, f"{stamp}-{secrets.token_hex(3)}")
        self.actions: list[Action] = []
        self.moved: dict[str, str] = {}  # original path -> quarantined path
        self.host = socket.gethostname()
        self.today = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")

    def apply(self, findings: list[Finding]) -> None:
        bad_packs = damaged_packs(findings)
        for path, drop in sorted(bad_packs.items()):
            repair_pack(
                self.store,
                path,
                drop,
                keep_bad=self._keep_bad,
                quarantine=self.quarantine,
                actions=self.actions,
            )
        if bad_packs:  # what the runs of those packs look like now: gaps, missing launches
            findings = [f for f in check(self.store).findings if f.kind != "bad_pack"]
        moving = [
            f
            for f in findings
            if f.kind in _MOVE_FILE or (f.kind in _MOVE_OLD and (f.age_s or 0.0) >= self.min_age_s)
        ]
        dirs = {f.path for f in moving if f.kind == "empty_run_dir"}
        for f in moving:
            if os.path.dirname(f.path) in dirs:
                continue  # a temporary file in an empty run directory: moves with it
            if f.kind == "empty_run_dir" and _has_versions(f.path):
                continue  # its launch landed since the check
            self.quarantine(f.path, f"{f.kind}: {f.message}")
        runs = {f.run_id for f in findings if f.kind in _RUN_HISTORY and f.run_id}
        for run_id in sorted(runs):
            self._history(run_id)
        lost: dict[str, list[tuple[str, str]]] = {}
        for f in findings:
            if f.kind == "dangling_reference" and f.run_id and f.digest:
                lost.setdefault(f.run_id, []).append((f.digest, f.field or "a field"))
        for run_id, items in sorted(lost.items()):
            self._record_loss(run_id, items)
        if any(f.kind == "store_meta" for f in findings):
            meta = os.path.join(self.root, layout.META_FILE)
            if os.path.exists(meta):
                self.quarantine(meta, "store_meta: unreadable")
            self.store.ensure_writable()
            self.actions.append(Action("recreate", meta, "wrote a new store identity file"))

    # -- moving aside --------------------------------------------------------------------------

    def quarantine(self, path: str, why: str) -> str | None:
        rel = os.path.relpath(path, self.root)
        if rel.startswith("..") or rel.split(os.sep, 1)[0] == layout.QUARANTINE_DIR:
            return None
        dest = os.path.join(self.qdir, rel)
        fs.makedirs(os.path.dirname(dest))
        try:
            _rename(path, dest)
        except FileNotFoundError:
            return None  # gone since the check (a writer renamed its temporary file)
        except OSError as exc:
            raise StoreError(
                f"cannot move {path} to {dest}: {exc.strerror}. Check the store's permissions; "
                "nothing else was changed for this file."
            ) from exc
        self.moved[path] = dest
        self.actions.append(Action("quarantine", path, why, to=dest))
        return dest

    def _keep_bad(self, run_id: str, name: str, raw: bytes, why: str) -> None:
        """A damaged version from a pack, written to quarantine as a file of its own (where
        it would lie loose), so its seq gets a placeholder like a moved loose file."""
        where = os.path.join(layout.run_dir(self.root, run_id), name)
        dest = os.path.join(self.qdir, os.path.relpath(where, self.root))
        fs.makedirs(os.path.dirname(dest))
        fs.write_atomic(dest, codec.compress(raw), fsync=self.store.fsync)
        self.moved[where] = dest
        self.actions.append(Action("quarantine", where, f"bad_pack: {why}", to=dest))

    # -- run histories -------------------------------------------------------------------------

    def _history(self, run_id: str) -> None:
        d = layout.run_dir(self.root, run_id)
        try:
            names = os.listdir(d)
        except FileNotFoundError:
            names = []
        seqs: set[int] = set()
        launch = False
        for v in Store(self.root).versions(run_id, []):  # loose and packed, readable
            seqs.add(v.seq)
            launch = launch or v.event == "launch"
        for n in names:
            seq = layout.version_seq(n)
            if seq is None:
                continue
            seqs.add(seq)
            path = os.path.join(d, n)
            try:
                v = codec.decode(fs.read_bytes(path), RecordVersion, path)
            except (RunrecError, OSError):
                continue
            launch = launch or v.event == "launch"
        if not launch:
            if names:
                self.quarantine(d, f"no_launch: run {run_id} has no readable launch version")
            return
        if not seqs:
            return
        gone = {
            _seq_of(p): q
            for p, q in self.moved.items()
            if os.path.dirname(p) == d and _seq_of(p) is not None
        }
        top = max(seqs | {s for s in gone if s is not None})
        for s in range(1, top + 1):
            if s in seqs:
                continue
            if s in gone:
                what = (
                    f"version {s} of this run was damaged and moved to "
                    f"{os.path.relpath(gone[s], self.root)}"
                )
            else:
                what = f"version {s} of this run is missing from the store (lost)"
            self._placeholder(run_id, s, f"runrec fsck {self.today}: {what}")
        for s in sorted(x for x in gone if x is not None and x in seqs):
            # another version still holds this seq: the loss goes in a version of its own
            what = (
                f"a version {s} of this run was damaged and moved to "
                f"{os.path.relpath(gone[s], self.root)}"
            )
            self.store.write_version(
                run_id, FSCK_EVENT, {"warnings": [f"runrec fsck {self.today}: {what}"]}, role="fsck"
            )
            self.actions.append(Action("record_loss", d, what))

    def _placeholder(self, run_id: str, seq: int, warning: str) -> None:
        """A version at ``seq`` saying what was lost there: the history has no gap again, and
        everyone reading the run sees the warning. Never replaces a file."""
        v = RecordVersion(
            run_id=run_id,
            seq=seq,
            written_at=datetime.now(UTC),
            writer=Writer(host=self.host, pid=os.getpid(), role="fsck"),
            event=FSCK_EVENT,
            patch={"warnings": [warning]},
        )
        path = os.path.join(
            layout.run_dir(self.root, run_id), layout.version_name(seq, secrets.token_hex(6))
        )
        fs.write_atomic(path, codec.encode(v), fsync=self.store.fsync)
        self.actions.append(Action("placeholder", path, warning))

    def _record_loss(self, run_id: str, items: list[tuple[str, str]]) -> None:
        d = layout.run_dir(self.root, run_id)
        if not os.path.isdir(d) and not Store(self.root).versions(run_id, []):
            return  # moved to quarantine with its history
        warnings = []
        for digest, where in sorted(set(items)):
            if os.path.exists(layout.blob_path(self.root, digest)):
                continue  # copied back since the check
            warnings.append(
                f"runrec fsck {self.today}: blob {digest} ({where}) is missing from the store; "
                "what it held is lost"
            )
        if warnings:
            self.store.write_version(run_id, FSCK_EVENT, {"warnings": warnings}, role="fsck")
            for w in warnings:
                self.actions.append(Action("record_loss", d, w))

    # -- the index and the log -----------------------------------------------------------------

    def rebuild_index(self) -> str:
        try:
            st = Index(self.store).update(rebuild=True)
        except (ImportError, RunrecError) as exc:
            msg = f"not rebuilt: {exc}"
            self.actions.append(Action("index", self.root, msg))
            return msg
        msg = f"rebuilt ({st.runs} runs) at {st.path}"
        self.actions.append(Action("index", st.path, msg))
        return msg

    def write_log(self, found: list[Finding]) -> None:
        if not self.moved:
            return
        log = {
            "written_at": datetime.now(UTC).isoformat(),
            "host": self.host,
            "store": self.root,
            "restore": "move a file back to the same relative path under the store",
            "actions": [a.to_dict() for a in self.actions],
            "found": [f.to_dict() for f in found],
        }
        fs.write_atomic(
            os.path.join(self.qdir, layout.REPAIR_LOG),
            json.dumps(log, indent=2).encode(),
            fsync=self.store.fsync,
        )


def _seq_of(path: str) -> int | None:
    return layout.version_seq(os.path.basename(path))


def _has_versions(d: str) -> bool:
    try:
        return any(layout.VERSION_RE.match(n) for n in os.listdir(d))
    except OSError:
        return False


def _rename(src: str, dest: str) -> None:
    """``os.rename``; a read-only parent (a finished promoted version) is opened for the move
    and closed again."""
    try:
        os.rename(src, dest)
        return
    except PermissionError as exc:
        if exc.errno not in (errno.EACCES, errno.EPERM):
            raise
    parent = os.path.dirname(src)
    mode = os.stat(parent).st_mode & 0o7777
    os.chmod(parent, mode | 0o200)
    try:
        os.rename(src, dest)
    finally:
        os.chmod(parent, mode)
