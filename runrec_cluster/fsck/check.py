"""``runrec fsck``'s checks: ``check(store)`` reads the whole store once, streaming (one run at a
time, one blob at a time, large blobs in chunks), changes nothing, and returns an ``FsckReport``.

What is checked (see docs/fsck.md for every kind of finding and its repair):

- every record version file decodes, names the run of its directory and the seq of its name;
- every pack (``store/packs.py``) reads whole (footer, index, every chunk), and the versions in
  it are checked like loose ones (a version both loose and packed once; a note says how many
  are in both places, which the next ``runrec pack`` deletes); every blob in a pack hashes to
  its name, every log chunk decodes;
- a packer may run at the same time: a run whose loose files vanish (or whose history looks cut
  short) while fsck reads it is read again with the packs written since;
- every run has a ``launch`` version, seq numbers 1..max have no gap, the versions fold;
- every blob decompresses and hashes to its name;
- every blob digest a record references (``code.patch_blob``, ``launch_env.packages_blob``,
  ``nodes[].packages_blob``, ``entrypoint.call_blob``, ``inputs[].manifest_blob``,
  ``result.blob``, ``execution.scheduler.batch_script``) is present;
- every promotion record decodes, matches its directory, its copy exists, its run and artifact
  exist; every retirement record decodes and its target (run, artifact, promoted version) exists.

Which names are expected where is ``store/layout.py``'s business; a check may run at any time,
also while writers write.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import time
from typing import Any

import msgspec

from runrec_cluster.errors import PromotionError, RunrecError, StoreError
from runrec_cluster.fsck.blobs import blob_refs, verify_blob
from runrec_cluster.fsck.findings import FSCK_EVENT, Counts, Finding, FsckReport, Severity
from runrec_cluster.record import (
    CONTEXT_KEY,
    SCHEMA_VERSION,
    Promotion,
    RecordVersion,
    Retirement,
    fold,
)
from runrec_cluster.store import Store, codec, fs, layout, packs
from runrec_cluster.store.pack_extras import LOG_FILES


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
        self.packed: dict[str, dict[str, tuple[str, bytes]]] = {}  # run -> name -> (where, bytes)
        self.packs_read: set[str] = set()  # pack paths read (packs written later: _late_packs)
        self.done: set[str] = set()  # runs checked
        self.both: dict[str, list[int]] = {}  # shard -> [versions, runs] both loose and packed

    def add(self, severity: Severity, kind: str, path: str, message: str, **kw: Any) -> None:
        self.findings.append(Finding(severity, kind, path, message, **kw))

    def run(self) -> None:
        self._top()
        self._blobs()
        self._packs()
        self._runs()
        self._runs_only_packed()
        self._promotions()
        self._retirements()
        for d in layout.DERIVED_DIRS:
            self._temps_under(os.path.join(self.root, d))
        self.counts.unreferenced_blobs = len(self.good_blobs - self.referenced)
        self.counts.temp_files = sum(1 for f in self.findings if f.kind == "temp_file")
        for shard, (nv, nr) in sorted(self.both.items()):
            self.add(
                "note",
                "loose_and_packed",
                os.path.join(layout.runs_dir(self.root), shard),
                f"{nv} version(s) of {nr} run(s) are both loose and in a pack (read once): a "
                "packer was killed before deleting its loose copies, or is deleting them now",
            )

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
            elif e.name not in layout.KNOWN_TOP:
                self._unexpected(e.path)

    # -- blobs ---------------------------------------------------------------------------------

    def _blobs(self) -> None:
        base = layout.blobs_dir(self.root)
        for d in self._listdir(base) or []:
            if d.name.startswith(layout.TMP_PREFIX):
                self._temp(d.path)
                continue
            if not layout.BLOB_DIR_RE.match(d.name) or not d.is_dir(follow_symlinks=False):
                self._unexpected(d.path)
                continue
            for e in self._listdir(d.path) or []:
                if e.name.startswith(layout.TMP_PREFIX):
                    self._temp(e.path)
                    continue
                m = layout.BLOB_NAME_RE.match(e.name)
                if not m or m.group(1)[:2] != d.name or not e.is_file(follow_symlinks=False):
                    self._unexpected(e.path)
                    continue
                self._blob(e.path, m.group(1))

    def _blob(self, path: str, hexd: str) -> None:
        problem = verify_blob(path, hexd)
        if isinstance(problem, int):
            self.counts.blobs += 1
            self.counts.blob_bytes += problem
            self.good_blobs.add(hexd)
            return
        if not os.path.lexists(path):
            return  # packed and deleted since the listing: the pack pass (after this) reads it
        self.counts.blobs += 1
        self.bad_blobs.add(hexd)
        self.add("problem", "bad_blob", path, problem, digest="sha256:" + hexd)

    # -- runs ----------------------------------------------------------------------------------

    def _runs(self) -> None:
        base = layout.runs_dir(self.root)
        for sh in self._listdir(base) or []:
            if sh.name.startswith(layout.TMP_PREFIX):
                self._temp(sh.path)
                continue
            if not layout.SHARD_RE.match(sh.name) or not sh.is_dir(follow_symlinks=False):
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

    def _packs(self) -> None:
        """Read every pack whole (packs are read before the run directories: a run packed
        while fsck runs is then seen at least once); a damaged one is a ``bad_pack``."""
        for sh in self._listdir(packs.packs_dir(self.root)) or []:
            if not layout.SHARD_RE.match(sh.name) or not sh.is_dir(follow_symlinks=False):
                self._unexpected(sh.path)
                continue
            for e in self._listdir(sh.path) or []:
                if e.name.startswith(layout.TMP_PREFIX):
                    self._temp(e.path)
                elif packs.ROWS_RE.match(e.name):
                    continue  # derived: the index rows of a pack (query/index_packs.py)
                elif not packs.PACK_RE.match(e.name) or not e.is_file(follow_symlinks=False):
                    self._unexpected(e.path)
                else:
                    self._pack(e.path, sh.name)

    def _pack(self, path: str, shard: str) -> None:
        """Read one pack whole: its versions go to ``self.packed`` (checked with their runs), its
        blobs are hashed, its logs decoded; what cannot be read is a ``bad_pack``."""
        self.counts.packs += 1
        self.packs_read.add(path)
        try:
            idx = packs.read_index(path)
        except FileNotFoundError:
            return  # moved away since the listing (fsck --repair)
        except (RunrecError, OSError) as exc:
            self.add("problem", "bad_pack", path, f"the pack cannot be read: {_why(exc, path)}")
            return
        for n in range(len(idx.chunks)):
            try:
                chunk = packs.read_chunk(idx, n)
            except (RunrecError, OSError) as exc:
                runs = sorted(r for r, (c, _) in idx.runs.items() if c == n)
                self.add(
                    "problem",
                    "bad_pack",
                    path,
                    f"chunk {n} cannot be read ({_why(exc, path)}); it holds the versions of "
                    f"{len(runs)} run(s): {', '.join(runs[:5])}{', ...' if len(runs) > 5 else ''}",
                )
                continue
            for run_id, entries in chunk.items():
                if not layout.RUN_ID_RE.match(run_id) or run_id[: layout.SHARD_LEN] != shard:
                    self.add(
                        "problem", "bad_pack", path, f"holds run {run_id!r}, not of shard {shard}"
                    )
                    continue
                if run_id in self.done:
                    continue  # a pack written while fsck ran, read for a run checked already
                mine = self.packed.setdefault(run_id, {})
                for name, raw in entries:
                    mine.setdefault(name, (packs.entry_label(path, run_id, name), raw))
        self._pack_extras(idx)

    def _pack_extras(self, idx: packs.PackIndex) -> None:
        for n in range(len(idx.blob_chunks)):
            try:
                chunk = packs.read_blob_chunk(idx, n)
            except (RunrecError, OSError) as exc:
                self.add("problem", "bad_pack", idx.path, f"{_why(exc, idx.path)}")
                continue
            for hexd, data in chunk.items():
                self.counts.packed_blobs += 1
                got = hashlib.sha256(data).hexdigest()
                if got == hexd:
                    self.good_blobs.add(hexd)
                    continue
                self.add(
                    "problem",
                    "bad_pack",
                    idx.path,
                    f"blob sha256:{hexd} in the pack hashes to sha256:{got}",
                    digest="sha256:" + hexd,
                )
        for n in range(len(idx.log_chunks)):
            try:
                logs = packs.read_log_chunk(idx, n)
            except (RunrecError, OSError) as exc:
                self.add("problem", "bad_pack", idx.path, f"{_why(exc, idx.path)}")
                continue
            for run_id, files in logs.items():
                odd = [name for name, _ in files if name not in LOG_FILES]
                if not layout.RUN_ID_RE.match(run_id) or odd:
                    self.add(
                        "problem",
                        "bad_pack",
                        idx.path,
                        f"log chunk {n} holds {run_id!r} {odd}: not the logs of a run",
                    )

    def _late_packs(self, shard: str) -> bool:
        """Read the packs of ``shard`` written since the pack pass (a packer running now);
        True when there was one."""
        new = [p for p in packs.list_packs(self.root, shard) if p not in self.packs_read]
        for p in new:
            self._pack(p, shard)
        return bool(new)

    def _runs_only_packed(self) -> None:
        while self.packed:  # a late pack (_late_packs) may add runs: another round
            for run_id in sorted(self.packed):  # (one sort a round, not a min() a run)
                if run_id in self.packed:
                    self._run(run_id, layout.run_dir(self.root, run_id))

    def _run(self, run_id: str, d: str) -> None:
        """Check one run. A packer may pack it while it is read: when its loose files vanish
        or its history looks cut short, and the packs of its shard have grown since the pack
        pass, it is read again with them (once: a packer links its pack before it deletes)."""
        n_find, counts = len(self.findings), dataclasses.replace(self.counts)
        both = {k: list(v) for k, v in self.both.items()}
        self._run_once(run_id, d)
        cut = {"unreadable_version", "seq_gap", "no_launch", "empty_run_dir"}
        if any(
            f.kind in cut and f.run_id == run_id for f in self.findings[n_find:]
        ) and self._late_packs(run_id[: layout.SHARD_LEN]):
            del self.findings[n_find:]
            self.counts, self.both = counts, both
            self._run_once(run_id, d)
        self.done.add(run_id)
        self.packed.pop(run_id, None)

    def _run_once(self, run_id: str, d: str) -> None:
        entries = self._listdir(d)
        packed = self.packed.get(run_id, {})
        if entries is None and not packed:
            return
        self.run_ids.add(run_id)
        files: list[tuple[int, str]] = []
        raws: dict[str, bytes] = {}
        fallback: dict[str, bytes] = {}
        for e in entries or []:
            if e.name.startswith(layout.TMP_PREFIX):
                self._temp(e.path)
                continue
            seq = layout.version_seq(e.name)
            if seq is not None:
                files.append((seq, e.path))
            else:
                self._unexpected(e.path)
        loose = {os.path.basename(p) for _, p in files}
        both = 0
        for name, (where, raw) in sorted(packed.items()):
            seq = layout.version_seq(name)
            if name not in loose and seq is not None:
                files.append((seq, where))
                raws[where] = raw
            elif name in loose:
                both += 1
                fallback[os.path.join(d, name)] = raw  # if a packer deletes the loose copy now
        if both:
            tally = self.both.setdefault(run_id[: layout.SHARD_LEN], [0, 0])
            tally[0] += both
            tally[1] += 1
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
            v = self._version(run_id, seq, path, raws.get(path), fallback.get(path))
            if v is not None:
                good.append((path, v))
        self._history(run_id, d, files, good)
        if good:
            self._fold(run_id, good)
            self._references(run_id, good)

    def _version(
        self,
        run_id: str,
        seq: int,
        path: str,
        raw: bytes | None = None,
        packed: bytes | None = None,
    ) -> RecordVersion | None:
        """Version ``seq`` of a run (a file, or ``raw`` bytes read from a pack), its shared
        context merged in; None (and the finding) when it cannot be read or is not what its
        name and directory say. A damaged version in a pack is a ``bad_pack``: it cannot be
        moved aside alone."""
        self.counts.versions += 1
        try:
            if raw is None:
                try:
                    v = codec.decode(fs.read_bytes(path), RecordVersion, path)
                except FileNotFoundError:
                    if packed is None:
                        raise
                    v = codec.unpack(packed, RecordVersion, path)  # packed copy, read before
            else:
                v = codec.unpack(raw, RecordVersion, path)
        except (RunrecError, OSError) as exc:
            kind = "unreadable_version" if raw is None else "bad_pack"
            self.add("problem", kind, path, _why(exc, path), run_id=run_id, seq=seq)
            return None
        if v.run_id != run_id or v.seq != seq:
            self.add(
                "problem",
                "mismatched_version" if raw is None else "bad_pack",
                path,
                f"holds version {v.seq} of run {v.run_id}, its name and directory say "
                f"version {seq} of run {run_id}",
                run_id=run_id,
                seq=seq,
            )
            return None
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
            v = self.store.expand_context(v, path, [])
            v = msgspec.structs.replace(v, patch={**v.patch, CONTEXT_KEY: ctx})
        return v

    def _history(
        self,
        run_id: str,
        d: str,
        files: list[tuple[int, str]],
        good: list[tuple[str, RecordVersion]],
    ) -> None:
        """A run's history is whole: a launch version, and no seq missing below the highest."""
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
            seq=layout.version_seq(os.path.basename(culprit)),
        )

    def _references(self, run_id: str, good: list[tuple[str, RecordVersion]]) -> None:
        acknowledged: set[str] = set()
        for _, v in good:
            if v.event == FSCK_EVENT:
                for w in v.patch.get("warnings") or []:
                    if isinstance(w, str):
                        acknowledged.update(layout.ANY_DIGEST_RE.findall(w))
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
                if hexd not in self.bad_blobs and self._packed_blob(value):
                    self.good_blobs.add(hexd)  # in a pack written since the pack pass
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

    def _packed_blob(self, digest: str) -> bool:
        try:
            self.store.get_blob(digest)  # loose or packed, checked against its hash
            return True
        except (RunrecError, OSError):
            return False

    # -- promoted versions ---------------------------------------------------------------------

    def _promotions(self) -> None:
        base = os.path.join(self.root, "promoted")
        for n in self._listdir(base) or []:
            if n.name.startswith(layout.TMP_PREFIX):
                self._temp(n.path)
                continue
            if not layout.PROMOTED_NAME_RE.match(n.name):
                self._unexpected(n.path)
                continue
            try:
                layout.promoted_dir(self.root, n.name, PromotionError)
            except PromotionError as exc:
                self.add("problem", "outside_link", n.path, str(exc))
                continue
            for vd in self._listdir(n.path) or []:
                if vd.name.startswith(layout.TMP_PREFIX):
                    self._temp(vd.path)
                    continue
                m = layout.VERSION_DIR_RE.match(vd.name)
                if not m or not vd.is_dir(follow_symlinks=False):
                    self._unexpected(vd.path)
                    continue
                self._promotion(n.name, int(m.group(1)), vd.path)

    def _promotion(self, name: str, version: int, d: str) -> None:
        rec_path = os.path.join(d, layout.PROMOTION_FILE)
        for e in self._listdir(d) or []:
            if e.name.startswith(layout.TMP_PREFIX):
                self._temp(e.path)
        ref = f"{name}@v{version}"
        try:
            p = codec.decode(fs.read_bytes(rec_path), Promotion, rec_path)
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
            copy = layout.inside(self.root, os.path.join(d, p.files), PromotionError)
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
        base = os.path.join(self.root, "retirements")
        for e in self._listdir(base) or []:
            if e.name.startswith(layout.TMP_PREFIX):
                self._temp(e.path)
                continue
            m = layout.RETIREMENT_FILE_RE.match(e.name)
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
            if not layout.PROMOTED_NAME_RE.match(name) or not v.isdigit():
                return "is not a promoted version name"
            rec = layout.promotion_file(self.root, name, v)
            return "" if os.path.isfile(rec) else "is not in the store"
        return ""  # datasets live outside the store: nothing to check here

    # -- derived directories -------------------------------------------------------------------

    def _temps_under(self, top: str) -> None:
        for dirpath, dirnames, filenames in os.walk(top):
            dirnames.sort()
            for n in sorted(filenames) + [d for d in dirnames if d.startswith(layout.TMP_PREFIX)]:
                if n.startswith(layout.TMP_PREFIX):
                    self._temp(os.path.join(dirpath, n))


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
