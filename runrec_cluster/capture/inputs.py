"""A run's inputs: datasets hashed through the store's hash cache (``hash_input``), and
artifacts of other runs or promoted versions (``Artifact("RUN:name")``, ``Artifact("NAME@v3")``)
parsed (``parse_artifact_ref``) and resolved to the producing run's recorded digest, checked
against the file as it is now (``resolve_artifact_input``).
"""

from __future__ import annotations

import hashlib
import os
import re
from dataclasses import dataclass
from typing import Any

from runrec_cluster.capture.data import Dataset, DatasetCache, HashResult, algo_of, hash_path
from runrec_cluster.capture.redact import check_printable
from runrec_cluster.errors import (
    AmbiguousRunId,
    ConfigError,
    DatasetError,
    LineageError,
    PromotionError,
    RecordNotFound,
    StoreError,
)
from runrec_cluster.record import ArtifactRef, InputRef
from runrec_cluster.store import Store, codec, fs, kept, layout
from runrec_cluster.store.promoted import copy_path, find_promotion


def hash_input(
    store: Store,
    dataset: Any,
    *,
    added_by: str = "submit",
    progress: Any = None,
    algo: str | None = None,
) -> InputRef:
    """Hash a dataset using (and refreshing) the store's hash cache; resolve an artifact.
    ``algo``: to re-check a recorded digest, its algorithm (default: ``DEFAULT_ALGO``)."""
    if isinstance(dataset, Artifact):
        return resolve_artifact_input(store, dataset.ref, added_by=added_by, progress=progress)
    if not isinstance(dataset, Dataset):
        if isinstance(dataset, (str, os.PathLike)):
            dataset = Dataset(dataset)
        else:
            raise ConfigError(
                f"inputs must be rr.Dataset(...), rr.Artifact('RUN:name') or paths, got {type(dataset).__name__}: {dataset!r}."
            )
    check_printable("dataset version", dataset.version)
    full = os.path.abspath(dataset.path)
    key = hashlib.sha256(full.encode()).hexdigest()
    cache_file = layout.dataset_cache_path(store.root, key)
    cache = None
    try:
        cache = codec.decode(fs.read_bytes(cache_file), DatasetCache, cache_file)
    except Exception:  # a missing or broken cache only costs a re-hash
        cache = None
    res, new_cache = hash_path(dataset.path, cache=cache, progress=progress, algo=algo)
    if res.hashed_bytes or cache is None or len(new_cache.files) != len(cache.files):
        try:
            store.check_inside(os.path.dirname(cache_file))  # never through a link out
            fs.write_atomic(cache_file, codec.encode(new_cache), mode=0o664)
        except Exception:
            pass  # the cache is an optimisation; a read-only cache dir is fine
    manifest_blob = store.put_obj(res.manifest) if res.manifest is not None else None
    return InputRef(
        kind="dataset",
        path=res.path,
        digest=res.digest,
        size=res.size,
        file_count=res.file_count,
        is_dir=res.is_dir,
        version=dataset.version,
        manifest_blob=manifest_blob,
        added_by=added_by,  # type: ignore[arg-type]
    )


ARTIFACT_NAME_MAX = 200


CONTROL_CHARS = re.compile(r"[\x00-\x1f\x7f]")


@dataclass(frozen=True)
class ParsedRef:
    run: str | None = None  # a run id or prefix (lowercase)
    name: str | None = None  # the artifact's name in that run
    promoted: str | None = None  # a promoted name
    version: int | None = None  # its version; None: the latest


def _check_artifact_name(name: str, ref: str) -> str:
    if not name or len(name) > ARTIFACT_NAME_MAX or CONTROL_CHARS.search(name):
        raise LineageError(
            f"{ref!r}: {name!r} is not an artifact name (1 to {ARTIFACT_NAME_MAX} characters, "
            "no control characters). Copy it from the Artifacts section of `runrec show RUN`."
        )
    return name


def parse_artifact_ref(ref: object) -> ParsedRef:
    """``RUN:name`` (RUN: a run id or unique prefix) or ``NAME@vN`` / ``NAME@latest``."""
    if not isinstance(ref, str) or not ref.strip():
        raise LineageError(
            f"an artifact reference is 'RUN:name' or 'NAME@vN', got {ref!r}. Example: "
            "rr.Artifact('01kx3f9a2b:model')."
        )
    text = ref.strip()
    run, colon, name = text.partition(":")
    if colon and layout.PREFIX_RE.match(run.lower()):
        return ParsedRef(run=run.lower(), name=_check_artifact_name(name, text))
    if "@" in text:
        pname, _, ver = text.partition("@")
        layout.check_promoted_name(pname, LineageError)
        if ver == "latest":
            return ParsedRef(promoted=pname)
        m = layout.VERSION_DIR_RE.match(ver)
        if not m:
            raise LineageError(f"{text!r}: {ver!r} is not a version; write NAME@v3 or NAME@latest.")
        return ParsedRef(promoted=pname, version=int(m.group(1)))
    raise LineageError(
        f"{text!r} is not an artifact reference: write RUN:name (a run id or unique prefix, a "
        "colon, the artifact's name, e.g. '01kx3f9a2b:model') or a promoted version NAME@vN."
    )


def resolve_artifact_input(
    store: Store, ref: str, *, added_by: str = "submit", progress: Any = None
) -> InputRef:
    """The input an ``rr.Artifact`` stands for: the producing run's recorded digest, checked
    against the file as it is now; when that file is gone or changed since, a run's artifact
    resolves to its kept copy in the store (``kept_copy``: ``.path`` is then that copy). Refused
    if the run or the artifact is unknown, or neither the file nor a kept copy holds the
    recorded content."""
    p = parse_artifact_ref(ref)
    label = f"rr.Artifact({ref!r})"
    art: ArtifactRef | None = None  # a run's artifact (not a promoted version)
    if p.promoted is not None:
        try:
            entry = find_promotion(store, p.promoted, p.version)
            path = copy_path(store, entry)
        except PromotionError as exc:
            raise LineageError(f"{label}: {exc}") from None
        promo = entry.promotion
        assert promo is not None
        recorded_digest, run_id, art_name = promo.digest, promo.run_id, promo.artifact
        promoted: str | None = promo.ref
        where = f"promoted version {promo.ref}"
        fix = f"Check it with `runrec verify {promo.ref}`."
    else:
        assert p.run is not None and p.name is not None
        try:
            rec = store.load(p.run)
        except (RecordNotFound, AmbiguousRunId, ConfigError) as exc:
            raise LineageError(f"{label}: {exc}") from None
        arts = [a for a in rec.artifacts if a.name == p.name]
        if not arts:
            have = ", ".join(repr(a.name) for a in rec.artifacts)
            more = (
                f"its artifacts: {have}"
                if have
                else f"it has logged none (state: {rec.state.value})"
            )
            raise LineageError(
                f"{label}: run {rec.run_id} recorded no artifact named {p.name!r} ({more}). "
                f"See `runrec show {rec.run_id[:12]}`."
            )
        art = arts[-1]
        path, recorded_digest, run_id, art_name = art.path, art.digest, rec.run_id, art.name
        promoted = None
        where = f"artifact {art.name!r} of run {rec.run_id}"
        fix = f"Rerun {rec.run_id[:12]}, or pass the file as rr.Dataset({path!r}) to record it as a plain dataset."
    problem = ""
    if not os.path.exists(path):
        problem = f"{where} was recorded at {path}, which no longer exists"
    else:
        now = hash_input(
            store,
            Dataset(path),
            added_by=added_by,
            progress=progress,
            algo=algo_of(recorded_digest),
        )
        if now.digest != recorded_digest:
            problem = (
                f"{where} changed since it was recorded: {path} hashes to {now.digest}, the "
                f"record says {recorded_digest}"
            )
    if problem and art is not None:  # a run's artifact: its kept copy, when intact
        found, why = kept_copy(store, art)
        if found is None:
            problem += f"; {why}"
        else:
            problem = ""
            now = hash_input(store, Dataset(found[0]), added_by=added_by, algo=algo_of(art.digest))
    if problem:
        raise LineageError(f"{label}: {problem}. {fix}")
    return InputRef(
        kind="artifact",
        path=now.path,
        digest=recorded_digest,
        size=now.size,
        file_count=now.file_count,
        is_dir=now.is_dir,
        manifest_blob=now.manifest_blob,
        added_by=added_by,  # type: ignore[arg-type]
        run_id=run_id,
        artifact=art_name,
        promoted=promoted,
    )


def kept_copy(store: Store, art: ArtifactRef) -> tuple[tuple[str, HashResult] | None, str]:
    """The kept copy of a run's artifact (``log_artifact``; found by the recorded digest: the
    store keeps one copy per content, whichever run kept it) and its hash, when it is there and
    intact; else (None, why not). Promote and ``rr.Artifact`` use it when the file the run wrote
    changed or vanished."""
    try:
        path = kept.kept_file(store.root, art.digest)
        if path is None:
            why = art.not_kept or "the run kept no copy (its record has none)"
            return None, f"no kept copy ({why})"
        layout.inside(store.root, path, StoreError)
        res, _ = hash_path(path, algo=algo_of(art.digest))
    except (DatasetError, StoreError) as exc:
        return None, f"its kept copy cannot be read ({exc})"
    if res.digest != art.digest:
        return None, (
            f"its kept copy {path} is damaged (hashes to {res.digest}); run `runrec fsck`"
        )
    return (path, res), "intact"


class Artifact:
    """An artifact recorded by another run, used as an input: ``Artifact("RUN:name")`` (RUN: a
    run id or unique prefix, name: the artifact's name in that run), or a promoted version
    ``Artifact("NAME@v3")`` / ``Artifact("NAME@latest")``.

    It is resolved when the run is submitted (or when ``run.use_input`` is called in a job) to
    the producing run's recorded content hash, and refused if the run, the artifact or the
    promoted version does not exist, or if the file no longer holds what the run recorded. The
    run's record then links back to the producing run (``runrec lineage``).
    """

    kind = "artifact"

    def __init__(self, ref: str) -> None:
        parse_artifact_ref(ref)
        self.ref = ref.strip()

    def __repr__(self) -> str:
        return f"Artifact({self.ref!r})"
