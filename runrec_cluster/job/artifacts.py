"""What ``run.log_artifact`` records: the artifact's content hash, and a kept copy in the store.

The digest is the artifact's as it is at ``log_artifact`` (``capture.data.hash_path``, as
before). Then, up to ``keep_artifacts_max_mb`` (``settings.keep_artifacts_max_mb``: the whole
artifact, a directory's files together; 0 keeps none), a copy is kept by content
(``store/kept.py``: a reflink where the filesystem makes one, else a copy; never a hard link to
the user's file) and the record says where (``ArtifactRef.kept``); larger artifacts, and any
that could not be kept, are recorded by digest only, with the reason (``not_kept``). Keeping a
copy never fails ``log_artifact``: the digest is recorded whatever happens to the copy.
"""

from __future__ import annotations

import os
from datetime import UTC, datetime
from typing import Any

from runrec_cluster import settings
from runrec_cluster.capture.data import HashResult, algo_of, hash_file
from runrec_cluster.errors import ConfigError, StoreError
from runrec_cluster.record import ArtifactRef
from runrec_cluster.store import Store, kept, layout

MIB = 1 << 20


def keep_limit(cwd: str | None = None) -> tuple[float | None, str | None]:
    """(the limit in MiB, None) or (None, why no limit could be read: a broken setting)."""
    try:
        return settings.keep_artifacts_max_mb(cwd), None
    except ConfigError as exc:
        return None, f"not kept: {exc}"


def keep(store: Store, res: HashResult, max_mb: float) -> dict[str, Any]:
    """The ``ArtifactRef`` fields of the kept copy of ``res`` (``kept``, ``kept_how``,
    ``manifest_blob``) or of why none was kept (``not_kept``)."""
    if max_mb <= 0:
        return {"not_kept": "keeping copies is off (keep_artifacts_max_mb = 0)"}
    if res.size > max_mb * MIB:
        return {
            "not_kept": (
                f"{res.size / MIB:,.1f} MiB is over keep_artifacts_max_mb = {max_mb:g}: recorded "
                "by digest only (raise the limit to keep such copies)"
            )
        }
    algo = algo_of(res.digest)

    def check(path: str) -> str:
        return hash_file(path, algo=algo)

    try:
        if res.is_dir:
            manifest = res.manifest or []
            how = kept.put_tree(store.root, res.path, res.digest, manifest, check)
            blob = store.put_obj(manifest)
            return {"kept": layout.kept_rel(res.digest), "kept_how": how, "manifest_blob": blob}
        how = kept.put_file(store.root, res.path, res.digest, check)
    except (StoreError, OSError) as exc:
        return {"not_kept": f"no copy could be kept: {exc}"}
    return {"kept": layout.kept_rel(res.digest), "kept_how": how}


def artifact_ref(
    store: Store,
    name: str,
    res: HashResult,
    cwd: str | None = None,
    *,
    not_kept: str | None = None,
) -> ArtifactRef:
    """The record of artifact ``name`` hashed as ``res``, with its kept copy (settings read
    from ``cwd``, default the current directory); ``not_kept``: keep no copy, for this reason."""
    if not_kept is not None:
        fields: dict[str, Any] = {"not_kept": not_kept}
    else:
        limit, problem = keep_limit(cwd or os.getcwd())
        fields = keep(store, res, limit) if limit is not None else {"not_kept": problem}
    return ArtifactRef(
        name=name,
        path=res.path,
        digest=res.digest,
        size=res.size,
        file_count=res.file_count,
        is_dir=res.is_dir,
        logged_at=datetime.now(UTC),
        **fields,
    )
