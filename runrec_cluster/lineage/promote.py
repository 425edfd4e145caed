"""Promotion: a run's artifact, checked and copied to a stable, read-only place in the store.

``promote(store, run, artifact, to=NAME, criteria=..., approved_by=...)``:

1. the run must have succeeded, and be neither retired nor suspect (``runrec retire``);
2. the criteria (``criteria.py``: the ``--where`` expression language) are evaluated against
   the run's recorded metrics;
3. the artifact is re-hashed where the run wrote it and must still match its recorded digest;
   when that file changed or vanished (a rerun wrote the same path), the run's kept copy
   (``store/kept.py``, found by the recorded digest) is re-hashed instead and, intact, is what
   gets copied: the promotion record says so (``Promotion.from_kept``);
4. a version number is taken without any lock: ``os.mkdir(promoted/NAME/vN)`` fails when
   another promoter took N first, and the next number is tried (atomic on local disks and NFS);
5. the artifact is copied to ``promoted/NAME/vN/files/``, the copy is hashed again, and made
   read-only; the promotion record (``promotion.msgpack.zst``: criteria and the values they
   saw, approver, source run, artifact, digest, time) is written last, atomically.

A version directory without its record is an interrupted promotion: listed as incomplete, never
used, and never reused (the next promotion takes the next number).
"""

from __future__ import annotations

import os
import shutil
import socket
import stat
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from runrec_cluster.capture.data import HashResult, algo_of, hash_path
from runrec_cluster.capture.inputs import kept_copy
from runrec_cluster.capture.proc import current_user
from runrec_cluster.errors import DatasetError, PromotionError, StoreError
from runrec_cluster.lineage import criteria as crit
from runrec_cluster.lineage.annotate import latest_verdict
from runrec_cluster.lineage.trust import trust_of_run
from runrec_cluster.record import ArtifactRef, Promotion, RunRecord, RunState
from runrec_cluster.store import Store, codec, fs
from runrec_cluster.store import layout as ll
from runrec_cluster.store import policy as perms
from runrec_cluster.store.promoted import VersionEntry, copy_path, list_promotions


@dataclass
class Check:
    """``verify``'s verdict on one promoted version."""

    ref: str
    intact: bool
    message: str
    expected: str | None = None
    found: str | None = None


# -- verifying -----------------------------------------------------------------------------


def verify(store: Store, name: str, version: int | None = None) -> list[Check]:
    """Re-hash promoted copies: every version of ``name``, or one. A copy that is not intact
    says where an intact copy of the same content is kept, when the store has one."""
    entries = [e for e in list_promotions(store, name) if version in (None, e.version)]
    if not entries:
        raise PromotionError(
            f"no promoted version {name}{f'@v{version}' if version else ''} in {store.root}. "
            "List them with `runrec promoted`."
        )
    out = []
    for e in entries:
        c = _check(store, e)
        if not c.intact and e.promotion is not None:
            c.message += _kept_hint(store, e.promotion)
        out.append(c)
    return out


def _kept_hint(store: Store, p: Promotion) -> str:
    ref = ArtifactRef(name=p.artifact, path=p.source_path, digest=p.digest, size=p.size)
    found, _why = kept_copy(store, ref)
    if found is None:
        return ""
    return (
        f"; the run's kept copy of the same content is intact at {found[0]}: promote "
        f"{p.run_id[:12]} {p.artifact} again to make a new version from it"
    )


def _check(store: Store, e: VersionEntry) -> Check:
    if e.promotion is None:
        return Check(e.ref, False, e.problem or "no promotion record")
    p = e.promotion
    try:
        path = copy_path(store, e)
    except PromotionError as exc:
        return Check(e.ref, False, str(exc), expected=p.digest)
    if not os.path.exists(path):
        return Check(e.ref, False, f"the copy {path} is missing", expected=p.digest)
    try:
        res, _ = hash_path(path, algo=algo_of(p.digest))
    except DatasetError as exc:
        return Check(e.ref, False, f"cannot re-hash {path}: {exc}", expected=p.digest)
    if res.digest != p.digest:
        return Check(
            e.ref,
            False,
            f"the copy {path} changed: it hashes to {res.digest}, the promotion recorded "
            f"{p.digest}",
            expected=p.digest,
            found=res.digest,
        )
    return Check(e.ref, True, f"intact ({p.digest})", expected=p.digest, found=res.digest)


# -- promoting -----------------------------------------------------------------------------


def promote(
    store: Store,
    run: str,
    artifact: str,
    *,
    to: str,
    criteria: str | None = None,
    approved_by: str | None = None,
) -> Promotion:
    """Check and copy ``artifact`` of ``run`` to ``promoted/<to>/vN``; ``PromotionError`` with
    the reason when refused (nothing is written then). Criteria that do not parse raise
    ``CriteriaSyntaxError`` (an ``ExpressionError`` and a ``PromotionError``)."""
    ll.check_promoted_name(to, PromotionError)
    if criteria is not None and not criteria.strip():
        criteria = None
    if criteria is not None:
        crit.parse(criteria)  # a syntax error is refused before anything is read
    if approved_by is not None and (not approved_by.strip() or "\n" in approved_by):
        raise PromotionError(f"--approved-by {approved_by!r}: give a person's or a process's name.")
    rec = store.load(run)
    art = _promotable_artifact(store, rec, artifact)
    outcome = None
    if criteria is not None:
        outcome = crit.evaluate(criteria, rec.metrics, who=f"run {rec.run_id}")
        if not outcome.ok:
            raise PromotionError(
                f"run {rec.run_id} does not meet the criteria {criteria!r}: "
                + "; ".join(outcome.failed)
                + ". Nothing was promoted."
            )
    src, now, from_kept = _source(store, rec.run_id, art)
    version, vdir = _claim_version(store, to)
    try:
        rel = os.path.join(ll.FILES_DIR, ll.copy_name(art.path))
        ro = _copy_read_only(store, rec.run_id, art, src, now.manifest, os.path.join(vdir, rel))
        promotion = Promotion(
            name=to,
            version=version,
            run_id=rec.run_id,
            run_name=rec.name,
            artifact=art.name,
            digest=art.digest,
            size=art.size,
            file_count=art.file_count,
            is_dir=art.is_dir,
            source_path=art.path,
            files=rel,
            from_kept=from_kept,
            criteria=criteria,
            values=outcome.values if outcome else {},
            approved_by=approved_by or current_user(),
            promoted_by=current_user(),
            host=socket.gethostname(),
            promoted_at=datetime.now(UTC),
        )
        fs.write_atomic(
            os.path.join(vdir, ll.PROMOTION_FILE), codec.encode(promotion), fsync=store.fsync
        )
    except BaseException:
        _remove(vdir)  # our own claimed, unrecorded directory: nothing refers to it
        raise
    os.chmod(vdir, ro.ro_dir_mode)
    return promotion


def _promotable_artifact(store: Store, rec: RunRecord, artifact: str) -> ArtifactRef:
    """The artifact, once the run is known to deserve a promotion: succeeded, recorded it, no
    negative verdict that blocks it, neither retired nor suspect."""
    rid = rec.run_id
    if rec.state != RunState.SUCCEEDED:
        why = f" ({rec.failure.cause.value}: {rec.failure.message})" if rec.failure else ""
        raise PromotionError(
            f"run {rid} {rec.state.value}{why}; only a succeeded run can be promoted. "
            f"See `runrec show {rid[:12]}`."
        )
    arts = [a for a in rec.artifacts if a.name == artifact]
    if not arts:
        have = ", ".join(repr(a.name) for a in rec.artifacts) or "none"
        raise PromotionError(
            f"run {rid} recorded no artifact named {artifact!r} (its artifacts: {have})."
        )
    verdict = latest_verdict(rec)
    if verdict is not None and verdict.verdict == "negative" and verdict.blocks == "run":
        raise PromotionError(
            f"run {rid} has a negative verdict that blocks it (by {verdict.by}: {verdict.note}); "
            f"it cannot be promoted. See `runrec show {rid[:12]}`."
        )
    flags = trust_of_run(store, rid)
    if flags:
        raise PromotionError(
            f"run {rid} is {flags[0].describe()}; a retired or suspect run cannot be promoted. "
            f"See `runrec show {rid[:12]}` and `runrec lineage {rid[:12]} --up`."
        )
    return arts[-1]


def _source(store: Store, rid: str, art: ArtifactRef) -> tuple[str, HashResult, str | None]:
    """Where the artifact is copied from, hashed: the path the run wrote when it still holds
    the recorded digest, else the run's kept copy (third item: its place in the store) when that
    one is intact; ``PromotionError`` saying both when neither is."""
    src = art.path
    algo = algo_of(art.digest)
    if not os.path.exists(src):
        problem = f"is gone: {src} does not exist"
    else:
        try:
            now, _ = hash_path(src, algo=algo)
        except DatasetError as exc:
            raise PromotionError(
                f"cannot re-hash artifact {art.name!r} of run {rid}: {exc}"
            ) from None
        if now.digest == art.digest:
            return src, now, None
        problem = (
            f"changed since the run recorded it: {src} hashes to {now.digest}, the run recorded "
            f"{art.digest}"
        )
    found, why = kept_copy(store, art)
    if found is not None:
        return found[0], found[1], ll.kept_rel(art.digest)
    raise PromotionError(
        f"artifact {art.name!r} of run {rid} {problem}; {why}. Nothing was promoted; rerun to "
        "produce a recorded artifact."
    )


def _copy_read_only(
    store: Store,
    rid: str,
    art: ArtifactRef,
    src: str,
    manifest: list[tuple[str, int, str]] | None,
    dest: str,
) -> perms.Policy:
    """Copy the artifact from ``src`` (where the run wrote it, or its kept copy) to ``dest``
    (under the claimed version's ``files/``), check the copy's hash, and make ``files/``
    read-only; returns the store's permission policy."""
    files = os.path.dirname(dest)
    fs.mkdir(files)  # the store's group and mode, as every mkdir
    _copy(store, src, dest, manifest)
    copied, _ = hash_path(dest, algo=algo_of(art.digest))
    if copied.digest != art.digest:
        raise PromotionError(
            f"artifact {art.name!r} of run {rid} changed while it was copied ({src} now "
            f"hashes to {copied.digest}, the run recorded {art.digest}). Nothing was promoted."
        )
    ro = perms.policy_for(store.root)  # read-only, readable by whom the store's settings say
    _read_only(files, ro)
    return ro


def _claim_version(store: Store, name: str) -> tuple[int, str]:
    base = ll.promoted_dir(store.root, name, PromotionError)
    fs.makedirs(base)
    ll.inside(store.root, base, PromotionError)  # created through a planted link?
    taken = [int(m.group(1)) for v in os.listdir(base) if (m := ll.VERSION_DIR_RE.match(v))]
    n = max(taken, default=0) + 1
    for _ in range(10_000):
        d = ll.version_dir(store.root, name, n, PromotionError)
        try:
            fs.mkdir(d)
            return n, d
        except FileExistsError:
            n += 1  # another promoter took it: try the next
        except OSError as exc:
            raise StoreError(f"cannot create {d}: {exc.strerror}. Check the store.") from exc
    raise PromotionError(f"could not take a version number under {base}.")


def _copy(store: Store, src: str, dest: str, manifest: list[tuple[str, int, str]] | None) -> None:
    """Regular files only (symlinks are followed, as hashing does): nothing links out."""
    if manifest is None:
        shutil.copyfile(src, dest)
        return
    fs.mkdir(dest)
    for rel, _size, _digest in manifest:
        target = os.path.join(dest, rel)
        ll.inside(dest, target, PromotionError)
        fs.makedirs(os.path.dirname(target))
        shutil.copyfile(os.path.join(src, rel), target)


def _read_only(top: str, policy: perms.Policy) -> None:
    """Files 0444 and directories 0555 (0440 / 2550 in a store shared with a group, 0400 / 0500
    in a private one: ``perms.py``); a promoted copy is never written again."""
    for dirpath, _dirnames, filenames in os.walk(top, topdown=False):
        for f in filenames:
            os.chmod(os.path.join(dirpath, f), policy.ro_file_mode)
        os.chmod(dirpath, policy.ro_dir_mode)


def _remove(path: str) -> None:
    def writable(func: Any, p: str, _exc: Any) -> None:
        try:
            os.chmod(os.path.dirname(p), 0o755)
            os.chmod(p, stat.S_IWUSR | stat.S_IRUSR | stat.S_IXUSR)
        except OSError:
            pass
        try:
            func(p)
        except OSError:
            pass

    shutil.rmtree(path, onerror=writable)
