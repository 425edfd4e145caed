"""Which blobs a record version names: ``blob_refs(patch)`` (the record's own blob fields, never
user data). fsck checks them (``fsck/blobs.py``); the packer packs the small ones with the runs
that name them (``store/pack_extras.py``)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from runrec_cluster.record import CONTEXT_KEY

# patch fields holding blob digests; user data (config, metrics, tags, backend options, rerun
# values) is never read as a reference
BLOB_KEYS = frozenset({"patch_blob", "packages_blob", "call_blob", "manifest_blob", "batch_script"})
SKIP_TOP = frozenset({"config", "metrics", "tags", "warnings", "annotations"})
SKIP_NESTED = frozenset(
    {"options", "hardware_expect", "hardware_request", "pinned", "intended", "env_vars"}
)


def blob_refs(patch: dict[str, Any]) -> Iterator[tuple[str, str]]:
    """(field path, value) of every blob reference in a version's patch."""
    for k, v in patch.items():
        if k in SKIP_TOP:
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
            if not isinstance(k, str) or k in SKIP_NESTED:
                continue
            if k in BLOB_KEYS:
                if isinstance(x, str):
                    yield f"{where}.{k}", x
            else:
                yield from _walk(x, f"{where}.{k}")
    elif isinstance(v, list):
        for i, x in enumerate(v):
            yield from _walk(x, f"{where}[{i}]")
