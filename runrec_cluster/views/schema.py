"""The JSON Schemas of what runrec writes for tools (``runrec schema --of record|version|export``).

Generated from the record Structs (``msgspec.json.schema``) and post-processed, so they cannot
drift from the code:

- ``$schema`` (draft 2020-12), an ``$id`` naming the document and its version
  (``urn:runrec-cluster:schema:record:<SCHEMA_VERSION>``,
  ``urn:runrec-cluster:schema:export:<FORMAT_VERSION>``) and a ``title``;
- every Struct is a closed object (``additionalProperties: false``): a key this version does
  not define is an error, so a misspelt key in a tool's fixture or a document from a newer
  runrec is caught. Open maps stay open with typed values: ``tags`` and ``env_vars`` (strings),
  ``config`` (entries), ``metrics`` and promotion ``values`` (``Metric``), packages;
- ``Metric``: what ``run.log_metrics`` accepts, as JSON: a number, a string, a boolean, null
  (missing, or a non-finite float named in the document's ``nonfinite`` map: docs/export.md),
  or a list / an object of those;
- the export document (``views/export.py``) is written out here by hand around the record's
  definitions: its envelope, ``inlined``, ``history``, ``trust`` and ``nonfinite`` are closed
  too. A test validates every export the test suite makes against it.
"""

from __future__ import annotations

import copy
from typing import Any

import msgspec

from runrec_cluster.record import SCHEMA_VERSION, Annotation, Promotion, RecordVersion, RunRecord
from runrec_cluster.views.export import FORMAT, FORMAT_VERSION

DRAFT = "https://json-schema.org/draft/2020-12/schema"
ID_PREFIX = "urn:runrec-cluster:schema:"
KINDS = ("record", "version", "export")

METRIC: dict[str, Any] = {
    "title": "Metric",
    "description": (
        "A value logged with run.log_metrics, as JSON: a number, a string, a boolean, null (no "
        "value, or a non-finite float: see the document's nonfinite map), or a list / an "
        "object of these."
    ),
    "anyOf": [
        {"type": ["number", "string", "boolean", "null"]},
        {"type": "array", "items": {"$ref": "#/$defs/Metric"}},
        {"type": "object", "additionalProperties": {"$ref": "#/$defs/Metric"}},
    ],
}
# ConfigEntry.source: default, given, generated, argv, file:<path>, env:<NAME> (docs/config.md)
CONFIG_SOURCE_PATTERN = r"^(default|given|generated|argv|file:.+|env:.+)$"
# open maps of a closed Struct, and what their values are: (Struct, field) -> value schema
_OPEN_MAPS: dict[tuple[str, str], dict[str, Any]] = {
    ("RunRecord", "metrics"): {"$ref": "#/$defs/Metric"},
    ("Promotion", "values"): {"$ref": "#/$defs/Metric"},
}


def _close(defs: dict[str, Any]) -> None:
    """Every Struct closed; the open maps typed (in place)."""
    for name, d in defs.items():
        if d.get("type") == "object" and "properties" in d:
            d["additionalProperties"] = False
            for (struct, field), values in _OPEN_MAPS.items():
                if struct == name and field in d["properties"]:
                    d["properties"][field] = {"type": "object", "additionalProperties": values}
    entry = defs.get("ConfigEntry", {}).get("properties", {})
    if "source" in entry:  # a str in the Struct; its values are a closed family
        entry["source"] = {"type": "string", "pattern": CONFIG_SOURCE_PATTERN}
    defs["Metric"] = METRIC


def _document(kind: str, version: int, title: str, body: dict[str, Any]) -> dict[str, Any]:
    return {
        "$schema": DRAFT,
        "$id": f"{ID_PREFIX}{kind}:{version}",
        "title": title,
        **body,
    }


def _from_struct(kind: str, struct: Any, title: str) -> dict[str, Any]:
    (ref,), defs = msgspec.json.schema_components([struct])
    _close(defs)
    return _document(kind, SCHEMA_VERSION, title, {**ref, "$defs": defs})


def record_schema() -> dict[str, Any]:
    """The folded run record (what ``export`` writes under ``record``)."""
    return _from_struct("record", RunRecord, "runrec-cluster run record")


def version_schema() -> dict[str, Any]:
    """One stored version file (a patch of record fields; the patch itself is open)."""
    return _from_struct("version", RecordVersion, "runrec-cluster record version")


def _closed(props: dict[str, Any], required: list[str] | None = None) -> dict[str, Any]:
    out: dict[str, Any] = {"type": "object", "properties": props, "additionalProperties": False}
    out["required"] = list(props) if required is None else required
    return out


_STR = {"type": "string"}
_NULLABLE_STR = {"type": ["string", "null"]}
_STRINGS = {"type": "array", "items": _STR}
_PACKAGES = {  # {name: version}, or the text saying why the blob could not be read
    "anyOf": [{"type": "object", "additionalProperties": _STR}, _STR]
}
_MANIFEST = {  # [[relpath, size, digest], ...]
    "anyOf": [
        {
            "type": "array",
            "items": {
                "type": "array",
                "prefixItems": [_STR, {"type": "integer"}, _STR],
                "minItems": 3,
                "maxItems": 3,
            },
        },
        _STR,
    ]
}


def _export_defs(defs: dict[str, Any]) -> dict[str, Any]:
    """The export's own definitions, added to the record's."""
    flag = _closed(
        {
            "kind": {"enum": ["retired", "suspect"]},
            "retirement_id": _STR,
            "state": {"enum": ["superseded", "invalidated", "withdrawn"]},
            "reason": _STR,
            "retired": _STR,
            "retired_label": _STR,
            "superseded_by": _NULLABLE_STR,
            "by": _STR,
            "at": {"type": "string", "format": "date-time"},
        }
    )
    flags = {"type": "array", "items": {"$ref": "#/$defs/TrustFlag"}}
    promo = copy.deepcopy(defs["Promotion"])
    promo["title"] = "ExportedPromotion"
    promo["properties"] |= {"ref": _STR, "flags": flags}
    promo["required"] = [*promo.get("required", []), "ref", "flags"]
    trust = _closed(
        {
            "run": flags,
            "inputs": {
                "type": "object",
                "propertyNames": {"pattern": "^[0-9]+$"},
                "additionalProperties": _closed({"path": _STR, "digest": _STR, "flags": flags}),
            },
            "artifacts": {"type": "object", "additionalProperties": flags},
            "promotions": {"type": "array", "items": {"$ref": "#/$defs/ExportedPromotion"}},
            "annotations": {"type": "array", "items": {"$ref": "#/$defs/Annotation"}},
            "problems": _STRINGS,
        }
    )
    history = _closed(
        {
            "seq": {"type": "integer"},
            "written_at": {"type": "string", "format": "date-time"},
            "event": _STR,
            "writer": {"$ref": "#/$defs/Writer"},
            "fields": _STRINGS,
        }
    )
    inlined = {
        "type": "object",
        "properties": {
            "code.patch": _NULLABLE_STR,
            "launch_env.packages": _PACKAGES,
            "result": {"description": "a msgpack result as JSON, or a pickled one described"},
            "entrypoint.call": _STR,
        },
        "patternProperties": {
            r"^nodes\[[0-9]+\]\.packages$": _PACKAGES,
            r"^inputs\[[0-9]+\]\.manifest$": _MANIFEST,
        },
        "additionalProperties": False,
    }
    return {
        "TrustFlag": flag,
        "ExportedPromotion": promo,
        "Trust": trust,
        "HistoryEntry": history,
        "Inlined": inlined,
    }


def export_schema() -> dict[str, Any]:
    """The document of ``runrec export RUN --format json`` (docs/export.md)."""
    ref, defs = msgspec.json.schema_components([RunRecord, Promotion, Annotation, RecordVersion])
    _close(defs)
    defs |= _export_defs(defs)
    body = _closed(
        {
            "format": {"const": FORMAT},
            "format_version": {"const": FORMAT_VERSION},
            "record": ref[0],
            "inlined": {"$ref": "#/$defs/Inlined"},
            "history": {"type": "array", "items": {"$ref": "#/$defs/HistoryEntry"}},
            "trust": {"$ref": "#/$defs/Trust"},
            "nonfinite": {
                "description": (
                    "JSON Pointer (RFC 6901, relative to this document) of each null that "
                    "stands for a non-finite float -> its spelling; absent when there is none"
                ),
                "type": "object",
                "propertyNames": {"pattern": "^/"},
                "additionalProperties": {"enum": ["NaN", "Infinity", "-Infinity"]},
                "minProperties": 1,
            },
        },
        required=["format", "format_version", "record", "inlined", "history", "trust"],
    )
    return _document("export", FORMAT_VERSION, "runrec-cluster run export", {**body, "$defs": defs})


def schema(kind: str = "record") -> dict[str, Any]:
    """``runrec schema --of KIND``: ``record``, ``version`` or ``export``."""
    if kind == "record":
        return record_schema()
    if kind == "version":
        return version_schema()
    if kind == "export":
        return export_schema()
    raise ValueError(f"unknown schema {kind!r}; one of {', '.join(KINDS)}")
