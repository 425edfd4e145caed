"""Portable export: one plain JSON document a person can read without runrec.

Blobs are inlined: the uncommitted change as text, the package lists, dataset manifests, a
msgpack result. The pickled call and a pickled result are never unpickled here: they are
named by digest only.
"""

from __future__ import annotations

from typing import Any

from runrec_cluster.record import RunRecord
from runrec_cluster.store import Store
from runrec_cluster.store.codec import to_json_builtins


def _blob_text(store: Store, digest: str | None) -> str | None:
    if not digest:
        return None
    try:
        return store.get_blob(digest).decode("utf-8", errors="replace")
    except Exception as exc:
        return f"<blob {digest} unreadable: {exc}>"


def _blob_obj(store: Store, digest: str | None) -> Any:
    if not digest:
        return None
    try:
        return to_json_builtins(store.get_obj(digest))
    except Exception as exc:
        return f"<blob {digest} unreadable: {exc}>"


def export_json(store: Store, rec: RunRecord) -> dict[str, Any]:
    doc: dict[str, Any] = {"format": "runrec-cluster/run-export", "format_version": 1}
    doc["record"] = to_json_builtins(rec)
    inl: dict[str, Any] = {}
    if rec.code is not None and rec.code.patch_blob:
        inl["code.patch"] = _blob_text(store, rec.code.patch_blob)
    if rec.launch_env is not None and rec.launch_env.packages_blob:
        inl["launch_env.packages"] = _blob_obj(store, rec.launch_env.packages_blob)
    for n in rec.nodes:
        if n.packages_blob and n.packages_blob != (
            rec.launch_env.packages_blob if rec.launch_env else None
        ):
            inl[f"nodes[{n.rank}].packages"] = _blob_obj(store, n.packages_blob)
    for i, inp in enumerate(rec.inputs):
        if inp.manifest_blob:
            inl[f"inputs[{i}].manifest"] = _blob_obj(store, inp.manifest_blob)
    if rec.result is not None:
        if rec.result.format == "msgpack":
            inl["result"] = _blob_obj(store, rec.result.blob)
        else:
            inl["result"] = (
                f"<pickled {rec.result.type}, not unpickled on export; repr: {rec.result.summary}>"
            )
    if rec.entrypoint is not None and rec.entrypoint.call_blob:
        inl["entrypoint.call"] = "<pickled call, not unpickled on export; runs only in the job>"
    doc["inlined"] = inl
    doc["history"] = [
        {
            "seq": v.seq,
            "written_at": v.written_at.isoformat(),
            "event": v.event,
            "writer": to_json_builtins(v.writer),
            "fields": sorted(v.patch),
        }
        for v in sorted(store.versions(rec.run_id), key=lambda v: (v.seq, v.written_at))
    ]
    return doc
