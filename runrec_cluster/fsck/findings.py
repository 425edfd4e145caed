"""What ``runrec fsck`` reports: findings (severity, kind, where, what), the actions of a repair,
the counts, the whole report, its JSON form, and the hint shown for each kind of finding
(``HINTS``; docs/fsck.md describes every kind)."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Literal

Severity = Literal["problem", "leftover", "note"]

FSCK_EVENT = "fsck"  # the event of the versions a repair writes into a run (its losses)

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
    "bad_pack": "a pack (STORE/packs/) is truncated or damaged: restore it from a backup or the "
    "original store, or `runrec fsck --repair` writes what can still be read into a new pack, "
    "moves the damaged pack (and any damaged version in it) to quarantine and records the "
    "losses in the runs",
    "loose_and_packed": "harmless, readers read each version once; the next `runrec pack` "
    "deletes the loose copies",
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

    action: Literal["quarantine", "placeholder", "record_loss", "recreate", "index", "rewrite_pack"]
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
    packs: int = 0  # pack files read (store/packs.py)
    packed_blobs: int = 0  # blobs inside packs, hashed (store/pack_extras.py)


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
