"""Portable export: one plain JSON document a person can read without runrec.

Blobs are inlined: the uncommitted change as text, the package lists, dataset manifests, a
msgpack result. The pickled call and a pickled result are never unpickled here: they are
named by digest only.

The document also carries the run's trust, computed from the store when exported: flags on the
run, its inputs and its artifacts (retired, or suspect through a retirement upstream), the
promotions of its artifacts, its annotations. Non-finite floats (NaN, +-Infinity) are written
``null`` with their spelling in the top-level ``"nonfinite"`` map (docs/export.md).
"""

from __future__ import annotations

from typing import Any

from runrec_cluster.lineage import Trust, list_promotions, trust_for
from runrec_cluster.lineage.refs import artifact_node, dataset_node, promoted_node, run_node
from runrec_cluster.query.ancestry import trust_of
from runrec_cluster.record import InputRef, RunRecord
from runrec_cluster.store import Store
from runrec_cluster.store.codec import strict_document, to_json_builtins

FORMAT = "runrec-cluster/run-export"
FORMAT_VERSION = 2  # 2: "trust" and "nonfinite" added


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


def _input_node(i: InputRef) -> str:
    """The lineage node an input comes from (as ``lineage.graph`` names it)."""
    if i.kind == "artifact" and i.promoted:
        name, _, ver = i.promoted.partition("@")
        if ver[1:].isdigit():
            return promoted_node(name, int(ver[1:]))
    elif i.kind == "artifact" and i.run_id and i.artifact:
        return artifact_node(i.run_id, i.artifact)
    return dataset_node(i.digest)


def _flags(trust: Trust | None, node_id: str) -> list[dict[str, Any]]:
    return [f.to_json() for f in trust.of(node_id)] if trust is not None else []


def trust_section(store: Store, rec: RunRecord, *, every_run: bool = False) -> dict[str, Any]:
    """What the store says about trusting the run, as of now: ``run`` (flags on the run:
    ``retired`` or ``suspect``, each naming its retirement id), ``inputs`` and ``artifacts``
    (flags per input index / artifact name, only those with flags), ``promotions`` (every
    promoted version of its artifacts, with that version's own flags), ``annotations`` and
    ``problems`` (records that could not be read while computing this). The flags come from
    the run's ancestry only (``query.ancestry.trust_of``: the same flags as the whole store's
    graph, every path into these nodes passing through the run's ancestors); ``every_run``:
    from the graph of every run instead."""
    problems: list[str] = []
    if every_run:
        trust = trust_for(store, None, problems)
    else:
        trust = trust_of(store, [rec], problems)
    inputs = {}
    for i, inp in enumerate(rec.inputs):
        fl = _flags(trust, _input_node(inp))
        if fl:
            inputs[str(i)] = {"path": inp.path, "digest": inp.digest, "flags": fl}
    artifacts = {}
    for a in rec.artifacts:
        fl = _flags(trust, artifact_node(rec.run_id, a.name))
        if fl:
            artifacts[a.name] = fl
    promotions = []
    for e in list_promotions(store):
        p = e.promotion
        if p is None or p.run_id != rec.run_id:
            continue
        d = to_json_builtins(p)
        d["ref"] = p.ref
        d["flags"] = _flags(trust, promoted_node(p.name, p.version))
        promotions.append(d)
    return {
        "run": _flags(trust, run_node(rec.run_id)),
        "inputs": inputs,
        "artifacts": artifacts,
        "promotions": promotions,
        "annotations": [to_json_builtins(a) for a in rec.annotations],
        "problems": problems,
    }


def export_json(store: Store, rec: RunRecord, *, every_run: bool = False) -> dict[str, Any]:
    """The export document (docs/export.md): strict JSON builtins, ready for ``json.dumps``
    with ``allow_nan=False``. ``every_run``: trust from every run's graph (``trust_section``)."""
    doc: dict[str, Any] = {"format": FORMAT, "format_version": FORMAT_VERSION}
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
    doc["trust"] = trust_section(store, rec, every_run=every_run)
    return strict_document(doc)
