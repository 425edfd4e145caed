"""``runrec fsck``: check a store's integrity, and with ``repair`` set aside what is damaged.

``check(store)`` reads the whole store once, streaming (one run at a time, one blob at a time,
large blobs in chunks), and returns an ``FsckReport``. ``repair(store)`` checks, moves what is
damaged into ``STORE/quarantine/<time>-<token>/`` (same relative paths; nothing is deleted),
records every loss in the runs it touches, rebuilds the query index, and checks again: its
report is the store as it is afterwards, with what was found before and what was done.

What is checked (see docs/fsck.md for every kind of finding and its repair):

- every record version file decodes, names the run of its directory and the seq of its name;
- every run has a ``launch`` version, seq numbers 1..max have no gap, the versions fold;
- every blob decompresses and hashes to its name;
- every blob digest a record references (``code.patch_blob``, ``launch_env.packages_blob``,
  ``nodes[].packages_blob``, ``entrypoint.call_blob``, ``inputs[].manifest_blob``,
  ``result.blob``, ``execution.scheduler.batch_script``) is present;
- every promotion record decodes, matches its directory, its copy exists, its run and artifact
  exist; every retirement record decodes and its target (run, artifact, promoted version) exists.

Findings come in three severities. A *problem* makes fsck fail (exit 1). A *leftover* is
harmless and expected after a crash: temporary files (``.tmp-*``) of writers killed mid-write,
run directories a submitter created but never wrote its launch into, promoted version
directories without a record (an interrupted promotion); readers ignore all of them and fsck
does not fail on them. A *note* is information (a record written by a newer schema, a loss
already recorded by an earlier repair, a file runrec does not know).

Live writers: a check never changes anything and may run at any time. A repair moves a leftover
only when it is older than ``min_age`` seconds (default 1 h), so it never pulls a temporary file
from under a writer that is still writing it; ``min_age=0`` moves them all (only when nothing
writes to the store). Damaged files are moved whatever their age: nobody writes them any more.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import re
import secrets
import socket
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from typing import Any, Literal

import msgspec

from runrec_cluster.errors import RunrecError, StoreError
from runrec_cluster.record import CONTEXT_KEY, SCHEMA_VERSION, RecordVersion, Writer, fold
from runrec_cluster.store import Store, codec, fs, layout
from runrec_cluster.store import layout as ll

Severity = Literal["problem", "leftover", "note"]

QUARANTINE_DIR = "quarantine"
REPAIR_LOG = "fsck-repair.json"
DEFAULT_MIN_AGE_S = 3600.0
CHUNK = 1 << 20
MAX_RATIO = 32768  # zstd: at most 128 KiB out of a 4-byte block (store/codec.py)
BLOB_NAME_RE = re.compile(r"^([0-9a-f]{64})\.zst$")
BLOB_DIR_RE = re.compile(r"^[0-9a-f]{2}$")
SHARD_RE = re.compile(r"^[0-9a-hjkmnp-tv-z]{5}$")
ANY_DIGEST_RE = re.compile(r"sha256:[0-9a-f]{64}")
FSCK_EVENT = "fsck"
# top-level entries of a store (docs/store-layout.md); anything else is named as a note
KNOWN_TOP = frozenset(
    {
        layout.META_FILE,
        "runs",
        "blobs",
        "logs",
        "slurm",
        "cache",
        "promoted",
        "retirements",
        "index",
        layout.CHANGES_DIR,
        "worktrees",
        QUARANTINE_DIR,
    }
)
# derived directories: only searched for leftover temporary files
DERIVED_DIRS = ("cache", "index", layout.CHANGES_DIR)

# patch fields holding blob digests; user data (config, metrics, tags, backend options, rerun
# values) is never read as a reference
_BLOB_KEYS = frozenset(
    {"patch_blob", "packages_blob", "call_blob", "manifest_blob", "batch_script"}
)
_SKIP_TOP = frozenset({"config", "metrics", "tags", "warnings", "annotations"})
_SKIP_NESTED = frozenset({"options", "hardware_expect", "pinned", "intended", "env_vars"})

HINTS: dict[str, str] = {
    "unreadable_version": "`runrec fsck --repair` moves it to quarantine and writes a placeholder "
    "version in its place that says what was lost",
    "mismatched_version": "a file copied or renamed by hand? `runrec fsck --repair` moves it to "
    "quarantine",
    "no_launch": "the run cannot be shown or rerun without its launch version; "
    "`runrec fsck --repair` moves the whole run directory to quarantine",
    "seq_gap": "a version file was deleted or never copied; restore it from a backup or the "
    "original store, or `runrec fsck --repair` records the loss in the run (a placeholder version)",
    "does_not_fold": "`runrec fsck --repair` moves the version that breaks the fold to quarantine",
    "misplaced_run": "readers look for a run under runs/<first 5 characters of its id>/: move "
    "the directory there by hand (fsck does not move it)",
    "bad_blob": "restore the blob from a backup or the original store; `runrec fsck --repair` "
    "moves it to quarantine and records the loss in every run that references it",
    "dangling_reference": "copy the blob back from a backup or the original store; "
    "`runrec fsck --repair` records the loss in the run",
    "malformed_reference": "the record names something that is not a blob digest; fsck cannot "
    "repair it",
    "unreadable_promotion": "`runrec fsck --repair` moves the record to quarantine; the version "
    "then shows as incomplete and its number is never reused",
    "mismatched_promotion": "`runrec fsck --repair` moves the record to quarantine; the version "
    "then shows as incomplete and its number is never reused",
    "missing_promoted_copy": "the promoted copy is gone: restore it from a backup (its digest is "
    "in the promotion record, `runrec verify NAME` checks it); fsck does not repair it",
    "dangling_promotion": "the promoted run or artifact is gone from the store: restore the run "
    "(from a backup, or from quarantine/ if an earlier repair moved it)",
    "unreadable_retirement": "`runrec fsck --repair` moves it to quarantine (readers already "
    "skip it: its target is not retired); retire the target again with `runrec retire`",
    "mismatched_retirement": "`runrec fsck --repair` moves it to quarantine; retire the target "
    "again with `runrec retire` if needed",
    "dangling_retirement": "the retired run, artifact or promoted version is gone from the "
    "store: restore it (from a backup, or from quarantine/ if an earlier repair moved it)",
    "outside_link": "a symlink leading out of the store is never followed; "
    "`runrec fsck --repair` moves the link to quarantine",
    "store_meta": "`runrec fsck --repair` moves a damaged file to quarantine and writes a new one",
    "unreadable": "check the file's permissions and the file system",
    "temp_file": "harmless, readers ignore it; `runrec fsck --repair` moves it to quarantine "
    "once it is older than --min-age",
    "empty_run_dir": "harmless, readers skip it; `runrec fsck --repair` moves it to quarantine "
    "once it is older than --min-age",
    "incomplete_promotion": "harmless, never used; fsck leaves it in place so its version "
    "number is never reused",
    "acknowledged_loss": "recorded in the run by an earlier `runrec fsck --repair`; restoring "
    "the blob from a backup makes this note go away",
    "newer_schema": "written by a newer runrec: upgrade to read every field",
    "unexpected_entry": "not written by runrec; readers ignore it",
}


@dataclass(frozen=True)
class Finding:
    """One thing fsck found: where, what, and what to do."""

    severity: Severity
    kind: str
    path: str
    message: str
    run_id: str | None = None
    seq: int | None = None
    digest: str | None = None
    field: str | None = None  # the record field naming a blob ("code.patch_blob")
    age_s: float | None = None

    @property
    def hint(self) -> str:
        return HINTS.get(self.kind, "")

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["hint"] = self.hint
        return {k: v for k, v in d.items() if v is not None}


@dataclass(frozen=True)
class Action:
    """One change a repair made."""

    action: Literal["quarantine", "placeholder", "record_loss", "recreate", "index"]
    path: str
    message: str
    to: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {k: v for k, v in asdict(self).items() if v is not None}


@dataclass
class Counts:
    runs: int = 0
    versions: int = 0
    blobs: int = 0
    blob_bytes: int = 0  # uncompressed bytes hashed
    unreferenced_blobs: int = 0  # harmless: a writer killed between a blob and its record
    promotions: int = 0
    retirements: int = 0
    temp_files: int = 0


@dataclass
class RepairResult:
    """What a repair found, what it did, and where it put what it moved."""

    found: list[Finding]
    actions: list[Action]
    quarantine: str | None
    min_age_s: float
    index: str  # "rebuilt (N runs)", or why not


@dataclass
class FsckReport:
    """The state of a store: ``problems`` make ``exit_code`` 1; leftovers and notes do not."""

    store: str
    findings: list[Finding]
    counts: Counts
    seconds: float
    repair: RepairResult | None = None

    @property
    def problems(self) -> list[Finding]:
        return [f for f in self.findings if f.severity == "problem"]

    @property
    def leftovers(self) -> list[Finding]:
        return [f for f in self.findings if f.severity == "leftover"]

    @property
    def notes(self) -> list[Finding]:
        return [f for f in self.findings if f.severity == "note"]

    @property
    def temp_files(self) -> list[str]:
        return [f.path for f in self.findings if f.kind == "temp_file"]

    @property
    def ok(self) -> bool:
        return not self.problems

    @property
    def exit_code(self) -> int:
        return 0 if self.ok else 1

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "store": self.store,
            "ok": self.ok,
            "exit_code": self.exit_code,
            "seconds": round(self.seconds, 3),
            "counts": asdict(self.counts),
            "problems": [f.to_dict() for f in self.problems],
            "leftovers": [f.to_dict() for f in self.leftovers],
            "notes": [f.to_dict() for f in self.notes],
            "repair": None,
        }
        if self.repair is not None:
            r = self.repair
            out["repair"] = {
                "found": [f.to_dict() for f in r.found],
                "actions": [a.to_dict() for a in r.actions],
                "quarantine": r.quarantine,
                "min_age_s": r.min_age_s,
                "index": r.index,
            }
        return out


# ---------------------------------------------------------------------------------------------
# Checking
# ---------------------------------------------------------------------------------------------


def check(store: Store) -> FsckReport:
    """Check every file of ``store``; changes nothing. ``StoreError`` when there is no store."""
    t0 = time.perf_counter()
    if not store.exists():
        raise StoreError(
            f"no store at {store.root} (no runs/ directory). Pass --store PATH or set "
            "RUNREC_STORE to the store to check."
        )
    c = _Checker(store)
    c.run()
    return FsckReport(store.root, c.findings, c.counts, time.perf_counter() - t0)


class _Checker:
    def __init__(self, store: Store) -> None:
        self.store = store
        self.root = store.root
        self.now = time.time()
        self.findings: list[Finding] = []
        self.counts = Counts()
        self.good_blobs: set[str] = set()  # hex digests that exist and verify
        self.bad_blobs: set[str] = set()
        self.referenced: set[str] = set()
        self.run_ids: set[str] = set()

    def add(self, severity: Severity, kind: str, path: str, message: str, **kw: Any) -> None:
        self.findings.append(Finding(severity, kind, path, message, **kw))

    def run(self) -> None:
        self._top()
        self._blobs()
        self._runs()
        self._promotions()
        self._retirements()
        for d in DERIVED_DIRS:
            self._temps_under(os.path.join(self.root, d))
        self.counts.unreferenced_blobs = len(self.good_blobs - self.referenced)
        self.counts.temp_files = sum(1 for f in self.findings if f.kind == "temp_file")

    # -- helpers -------------------------------------------------------------------------------

    def _age(self, path: str) -> float | None:
        try:
            return max(0.0, self.now - os.lstat(path).st_mtime)
        except OSError:
            return None

    def _temp(self, path: str) -> None:
        self.add(
            "leftover",
            "temp_file",
            path,
            "leftover temporary file: a writer was killed mid-write (or is writing it now)",
            age_s=self._age(path),
        )

    def _listdir(self, path: str) -> list[os.DirEntry[str]] | None:
        try:
            with os.scandir(path) as it:
                return sorted(it, key=lambda e: e.name)
        except (FileNotFoundError, NotADirectoryError):
            return None
        except OSError as exc:
            self.add("problem", "unreadable", path, f"cannot list the directory: {exc.strerror}")
            return None

    def _unexpected(self, path: str, what: str = "") -> None:
        self.add("note", "unexpected_entry", path, what or "not a file runrec writes here")

    # -- the store's top level -----------------------------------------------------------------

    def _top(self) -> None:
        meta = os.path.join(self.root, layout.META_FILE)
        try:
            info = codec.decode(fs.read_bytes(meta), dict, meta)
            if info.get("format") != layout.STORE_FORMAT:
                self.add(
                    "note",
                    "newer_schema",
                    meta,
                    f"store format {info.get('format')!r}; this runrec knows format "
                    f"{layout.STORE_FORMAT}",
                )
        except FileNotFoundError:
            self.add("problem", "store_meta", meta, "the store identity file is missing")
        except (RunrecError, OSError) as exc:
            self.add("problem", "store_meta", meta, f"the store identity file is unreadable: {exc}")
        for e in self._listdir(self.root) or []:
            if e.name.startswith(layout.TMP_PREFIX):
                self._temp(e.path)
            elif e.name not in KNOWN_TOP:
                self._unexpected(e.path)

    # -- blobs ---------------------------------------------------------------------------------

    def _blobs(self) -> None:
        base = os.path.join(self.root, "blobs")
        for d in self._listdir(base) or []:
            if d.name.startswith(layout.TMP_PREFIX):
                self._temp(d.path)
                continue
            if not BLOB_DIR_RE.match(d.name) or not d.is_dir(follow_symlinks=False):
                self._unexpected(d.path)
                continue
            for e in self._listdir(d.path) or []:
                if e.name.startswith(layout.TMP_PREFIX):
                    self._temp(e.path)
                    continue
                m = BLOB_NAME_RE.match(e.name)
                if not m or m.group(1)[:2] != d.name or not e.is_file(follow_symlinks=False):
                    self._unexpected(e.path)
                    continue
                self._blob(e.path, m.group(1))

    def _blob(self, path: str, hexd: str) -> None:
        self.counts.blobs += 1
        problem = verify_blob(path, hexd)
        if isinstance(problem, int):
            self.counts.blob_bytes += problem
            self.good_blobs.add(hexd)
            return
        self.bad_blobs.add(hexd)
        self.add("problem", "bad_blob", path, problem, digest="sha256:" + hexd)

    # -- runs ----------------------------------------------------------------------------------

    def _runs(self) -> None:
        base = layout.runs_dir(self.root)
        for sh in self._listdir(base) or []:
            if sh.name.startswith(layout.TMP_PREFIX):
                self._temp(sh.path)
                continue
            if not SHARD_RE.match(sh.name) or not sh.is_dir(follow_symlinks=False):
                self._unexpected(sh.path)
                continue
            for e in self._listdir(sh.path) or []:
                if e.name.startswith(layout.TMP_PREFIX):
                    self._temp(e.path)
                elif not layout.RUN_ID_RE.match(e.name) or not e.is_dir(follow_symlinks=False):
                    self._unexpected(e.path)
                elif e.name[: layout.SHARD_LEN] != sh.name:
                    self.add(
                        "problem",
                        "misplaced_run",
                        e.path,
                        f"run {e.name} lies in shard {sh.name}/, not "
                        f"{e.name[: layout.SHARD_LEN]}/: readers cannot find it",
                        run_id=e.name,
                    )
                else:
                    self._run(e.name, e.path)

    def _run(self, run_id: str, d: str) -> None:
        entries = self._listdir(d)
        if entries is None:
            return
        self.run_ids.add(run_id)
        files: list[tuple[int, str]] = []
        for e in entries:
            if e.name.startswith(layout.TMP_PREFIX):
                self._temp(e.path)
                continue
            m = layout.VERSION_RE.match(e.name)
            if m:
                files.append((int(m.group(1)), e.path))
            else:
                self._unexpected(e.path)
        if not files:
            ages = [self._age(d)] + [self._age(e.path) for e in entries]
            self.add(
                "leftover",
                "empty_run_dir",
                d,
                "run directory without any version: a submitter was killed before its launch "
                "version landed (or is writing it now)",
                run_id=run_id,
                age_s=min((a for a in ages if a is not None), default=None),
            )
            return
        self.counts.runs += 1
        good: list[tuple[str, RecordVersion]] = []
        for seq, path in files:
            self.counts.versions += 1
            try:
                v = codec.decode(fs.read_bytes(path), RecordVersion, path)
            except RunrecError as exc:
                self.add(
                    "problem", "unreadable_version", path, _why(exc, path), run_id=run_id, seq=seq
                )
                continue
            except OSError as exc:
                self.add(
                    "problem",
                    "unreadable_version",
                    path,
                    f"cannot read: {exc.strerror}",
                    run_id=run_id,
                    seq=seq,
                )
                continue
            if v.run_id != run_id or v.seq != seq:
                self.add(
                    "problem",
                    "mismatched_version",
                    path,
                    f"holds version {v.seq} of run {v.run_id}, its name and directory say "
                    f"version {seq} of run {run_id}",
                    run_id=run_id,
                    seq=seq,
                )
                continue
            if v.schema_version > SCHEMA_VERSION:
                self.add(
                    "note",
                    "newer_schema",
                    path,
                    f"schema {v.schema_version}; this runrec reads schema {SCHEMA_VERSION}",
                    run_id=run_id,
                )
            if CONTEXT_KEY in v.patch:
                # a shared context (schema v2) is checked as part of the version that names it:
                # its references are the version's, and the fold needs it
                ctx = v.patch[CONTEXT_KEY]
                v = self.store._expand(v, path, [])
                v = msgspec.structs.replace(v, patch={**v.patch, CONTEXT_KEY: ctx})
            good.append((path, v))
        if not any(v.event == "launch" for _, v in good):
            self.add(
                "problem",
                "no_launch",
                d,
                f"run {run_id} has no readable launch version ({len(files)} version file(s))",
                run_id=run_id,
            )
        have = {seq for seq, _ in files}
        missing = [s for s in range(1, max(have) + 1) if s not in have]
        if missing:
            self.add(
                "problem",
                "seq_gap",
                d,
                f"run {run_id} has no version {_ranges(missing)} (highest is {max(have)})",
                run_id=run_id,
            )
        if good:
            self._fold(run_id, good)
            self._references(run_id, good)

    def _fold(self, run_id: str, good: list[tuple[str, RecordVersion]]) -> None:
        try:
            fold([v for _, v in good])
            return
        except Exception as exc:  # noqa: BLE001 - any failure to fold is the finding
            err = exc
        ordered = sorted(good, key=lambda pv: _order(pv[1]))
        culprit = ordered[-1][0]
        for k in range(1, len(ordered) + 1):
            try:
                fold([v for _, v in ordered[:k]])
            except Exception:  # noqa: BLE001
                culprit = ordered[k - 1][0]
                break
        self.add(
            "problem",
            "does_not_fold",
            culprit,
            f"run {run_id} does not fold into a record from this version on ({err})",
            run_id=run_id,
            seq=_seq_of(culprit),
        )

    def _references(self, run_id: str, good: list[tuple[str, RecordVersion]]) -> None:
        acknowledged: set[str] = set()
        for _, v in good:
            if v.event == FSCK_EVENT:
                for w in v.patch.get("warnings") or []:
                    if isinstance(w, str):
                        acknowledged.update(ANY_DIGEST_RE.findall(w))
        seen: set[str] = set()
        for path, v in good:
            for where, value in blob_refs(v.patch):
                m = layout.DIGEST_RE.match(value)
                if not m:
                    self.add(
                        "problem",
                        "malformed_reference",
                        path,
                        f"{where} is {value[:80]!r}, not a blob digest sha256:<64 hex digits>",
                        run_id=run_id,
                        field=where,
                    )
                    continue
                hexd = m.group(1)
                self.referenced.add(hexd)
                if hexd in self.good_blobs or value in seen:
                    continue
                seen.add(value)
                blob = layout.blob_path(self.root, value)
                if hexd not in self.bad_blobs and os.path.exists(blob):
                    # written after the blob pass (a live writer): verify it now
                    if isinstance(verify_blob(blob, hexd), int):
                        self.good_blobs.add(hexd)
                        continue
                if value in acknowledged:
                    self.add(
                        "note",
                        "acknowledged_loss",
                        blob,
                        f"{where} of run {run_id} names blob {value}, lost; the loss is "
                        "recorded in the run",
                        run_id=run_id,
                        digest=value,
                        field=where,
                    )
                    continue
                what = "fails its hash check" if hexd in self.bad_blobs else "is missing"
                self.add(
                    "problem",
                    "dangling_reference",
                    blob,
                    f"{where} of run {run_id} (in {os.path.basename(path)}) names blob {value}, "
                    f"which {what}",
                    run_id=run_id,
                    digest=value,
                    field=where,
                )

    # -- promoted versions ---------------------------------------------------------------------

    def _promotions(self) -> None:
        from runrec_cluster.errors import PromotionError
        from runrec_cluster.record import Promotion

        base = os.path.join(self.root, "promoted")
        for n in self._listdir(base) or []:
            if n.name.startswith(layout.TMP_PREFIX):
                self._temp(n.path)
                continue
            if not ll.PROMOTED_NAME_RE.match(n.name):
                self._unexpected(n.path)
                continue
            try:
                ll.promoted_dir(self.root, n.name, PromotionError)
            except PromotionError as exc:
                self.add("problem", "outside_link", n.path, str(exc))
                continue
            for vd in self._listdir(n.path) or []:
                if vd.name.startswith(layout.TMP_PREFIX):
                    self._temp(vd.path)
                    continue
                m = ll.VERSION_DIR_RE.match(vd.name)
                if not m or not vd.is_dir(follow_symlinks=False):
                    self._unexpected(vd.path)
                    continue
                self._promotion(n.name, int(m.group(1)), vd.path, Promotion)

    def _promotion(self, name: str, version: int, d: str, promotion_type: Any) -> None:
        from runrec_cluster.errors import PromotionError

        rec_path = os.path.join(d, ll.PROMOTION_FILE)
        for e in self._listdir(d) or []:
            if e.name.startswith(layout.TMP_PREFIX):
                self._temp(e.path)
        ref = f"{name}@v{version}"
        try:
            p = codec.decode(fs.read_bytes(rec_path), promotion_type, rec_path)
        except FileNotFoundError:
            self.add(
                "leftover",
                "incomplete_promotion",
                d,
                f"{ref} has no promotion record: an interrupted promotion (or one in progress)",
                age_s=self._age(d),
            )
            return
        except (RunrecError, OSError) as exc:
            self.add("problem", "unreadable_promotion", rec_path, f"{ref}: {_why(exc, rec_path)}")
            return
        self.counts.promotions += 1
        if p.name != name or p.version != version:
            self.add(
                "problem",
                "mismatched_promotion",
                rec_path,
                f"the record in {ref} names {p.name}@v{p.version}",
            )
            return
        try:
            copy = ll.inside(self.root, os.path.join(d, p.files), PromotionError)
            if not os.path.exists(copy):
                self.add(
                    "problem",
                    "missing_promoted_copy",
                    copy,
                    f"the copy of {ref} ({p.digest}) is missing",
                )
        except PromotionError as exc:
            self.add("problem", "outside_link", os.path.join(d, p.files), f"{ref}: {exc}")
        why = self._artifact_missing(p.run_id, p.artifact, p.digest)
        if why:
            self.add(
                "problem",
                "dangling_promotion",
                rec_path,
                f"{ref} was promoted from {why}",
                run_id=p.run_id,
            )

    def _artifact_missing(self, run_id: str, artifact: str | None, digest: str | None) -> str:
        """Why run ``run_id`` (and its ``artifact``) cannot be found; "" when it can."""
        if run_id not in self.run_ids or not layout.RUN_ID_RE.match(run_id):
            return f"run {run_id}, which is not in the store"
        if artifact is None:
            return ""
        try:
            rec = self.store.load(run_id, problems=[])
        except (RunrecError, ValueError) as exc:
            return f"run {run_id}, which does not load ({exc})"
        arts = [a for a in rec.artifacts if a.name == artifact]
        if not arts:
            return f"artifact {artifact!r} of run {run_id}, which the run does not record"
        if digest is not None and digest not in {a.digest for a in arts}:
            return (
                f"artifact {artifact!r} of run {run_id}, which the run records with another digest"
            )
        return ""

    # -- retirements ---------------------------------------------------------------------------

    def _retirements(self) -> None:
        from runrec_cluster.record import Retirement

        base = os.path.join(self.root, "retirements")
        for e in self._listdir(base) or []:
            if e.name.startswith(layout.TMP_PREFIX):
                self._temp(e.path)
                continue
            m = ll.RETIREMENT_FILE_RE.match(e.name)
            if not m:
                self._unexpected(e.path)
                continue
            try:
                r = codec.decode(fs.read_bytes(e.path), Retirement, e.path)
            except (RunrecError, OSError) as exc:
                self.add("problem", "unreadable_retirement", e.path, _why(exc, e.path))
                continue
            self.counts.retirements += 1
            if r.id != m.group(1):
                self.add(
                    "problem",
                    "mismatched_retirement",
                    e.path,
                    f"holds retirement {r.id}, its name says {m.group(1)}",
                )
                continue
            for label, node in (("target", r.target), ("superseded_by", r.superseded_by)):
                why = self._node_missing(node) if node else ""
                if why:
                    self.add(
                        "problem",
                        "dangling_retirement",
                        e.path,
                        f"retirement {r.id}: its {label} {node} {why}",
                    )

    def _node_missing(self, node: str) -> str:
        kind, _, rest = node.partition(":")
        if kind == "run":
            return "is not in the store" if self._artifact_missing(rest, None, None) else ""
        if kind == "artifact":
            run_id, _, name = rest.partition(":")
            why = self._artifact_missing(run_id, name, None)
            return f"cannot be found: {why}" if why else ""
        if kind == "promoted":
            name, _, v = rest.partition("@v")
            if not ll.PROMOTED_NAME_RE.match(name) or not v.isdigit():
                return "is not a promoted version name"
            rec = os.path.join(self.root, "promoted", name, f"v{v}", ll.PROMOTION_FILE)
            return "" if os.path.isfile(rec) else "is not in the store"
        return ""  # datasets live outside the store: nothing to check here

    # -- derived directories -------------------------------------------------------------------

    def _temps_under(self, top: str) -> None:
        for dirpath, dirnames, filenames in os.walk(top):
            dirnames.sort()
            for n in sorted(filenames) + [d for d in dirnames if d.startswith(layout.TMP_PREFIX)]:
                if n.startswith(layout.TMP_PREFIX):
                    self._temp(os.path.join(dirpath, n))


def verify_blob(path: str, hexd: str) -> int | str:
    """The uncompressed size when the blob at ``path`` decompresses and hashes to ``hexd``; else
    what is wrong. Streams (a bounded read at a time): memory stays small whatever the blob's
    size, and a frame claiming more than it can hold is refused before reading it."""
    import zstandard

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
        if k in _SKIP_TOP:
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
            if not isinstance(k, str) or k in _SKIP_NESTED:
                continue
            if k in _BLOB_KEYS:
                if isinstance(x, str):
                    yield f"{where}.{k}", x
            else:
                yield from _walk(x, f"{where}.{k}")
    elif isinstance(v, list):
        for i, x in enumerate(v):
            yield from _walk(x, f"{where}[{i}]")


def _why(exc: Exception, path: str) -> str:
    """A decoding error without the path (the finding has it) and without "run fsck"."""
    if isinstance(exc, OSError):
        return f"cannot read: {exc.strerror}"
    msg = str(exc)
    msg = msg.removeprefix(f"{path}: ")
    for tail in (" Run `runrec fsck` or move the file aside.",):
        msg = msg.removesuffix(tail)
    return msg


def _order(v: RecordVersion) -> tuple[Any, ...]:
    return (v.seq, v.written_at, v.writer.host, v.writer.pid)


def _seq_of(path: str) -> int | None:
    m = layout.VERSION_RE.match(os.path.basename(path))
    return int(m.group(1)) if m else None


def _ranges(nums: list[int]) -> str:
    out: list[str] = []
    start = prev = nums[0]
    for n in nums[1:] + [None]:  # type: ignore[list-item]
        if n is not None and n == prev + 1:
            prev = n
            continue
        out.append(str(start) if start == prev else f"{start}-{prev}")
        if n is not None:
            start = prev = n
    return ", ".join(out)


# ---------------------------------------------------------------------------------------------
# Repairing
# ---------------------------------------------------------------------------------------------

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
        raise ValueError("min_age_s must be >= 0")
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
        self.qdir = os.path.join(self.root, QUARANTINE_DIR, f"{stamp}-{secrets.token_hex(3)}")
        self.actions: list[Action] = []
        self.moved: dict[str, str] = {}  # original path -> quarantined path
        self.host = socket.gethostname()
        self.today = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")

    def apply(self, findings: list[Finding]) -> None:
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
        if rel.startswith("..") or rel.split(os.sep, 1)[0] == QUARANTINE_DIR:
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

    # -- run histories -------------------------------------------------------------------------

    def _history(self, run_id: str) -> None:
        d = layout.run_dir(self.root, run_id)
        try:
            names = os.listdir(d)
        except FileNotFoundError:
            return
        seqs: set[int] = set()
        launch = False
        for n in names:
            m = layout.VERSION_RE.match(n)
            if not m:
                continue
            seqs.add(int(m.group(1)))
            path = os.path.join(d, n)
            try:
                v = codec.decode(fs.read_bytes(path), RecordVersion, path)
            except (RunrecError, OSError):
                continue
            launch = launch or v.event == "launch"
        if not launch:
            self.quarantine(d, f"no_launch: run {run_id} has no readable launch version")
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
        if not os.path.isdir(d):
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
            from runrec_cluster.query.index import Index

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
            os.path.join(self.qdir, REPAIR_LOG),
            json.dumps(log, indent=2).encode(),
            fsync=self.store.fsync,
        )


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
