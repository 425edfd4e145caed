"""The OpenLineage spec as shipped by the openlineage-python package, for jsonschema.

openlineage-python (checked: 0.30 to 1.54) ships the spec as Python classes generated from the
official JSON Schema (``openlineage/client/generated/``: one attrs class per ``$defs`` entry,
each with its ``_get_schema()`` URL and validators), not as the JSON file itself. So:

1. if an installed version ships ``OpenLineage.json`` anywhere in its package, that file is used;
2. otherwise the JSON Schema (draft 2020-12) is rebuilt from the generated classes: every field
   with its type, the required fields (no default, plus ``producer``/``schemaURL``/
   ``_producer``/``_schemaURL``, which the spec requires and the classes always fill), formats
   from the classes' own validators (``isoparse`` -> date-time, ``UUID`` -> uuid,
   ``urlparse`` -> uri), enums; core objects and standard facets allow no unknown keys (stricter
   than the spec, so a misspelt field fails), custom facets only need ``_producer`` and
   ``_schemaURL``.

``client_roundtrip`` rebuilds an event with the package's own classes (running their validators)
and returns what the package itself would serialize.
"""

from __future__ import annotations

import enum
import inspect
import json
import os
import types
import typing
import uuid
from datetime import datetime
from typing import Any
from urllib.parse import urlparse

import attr
import jsonschema
from openlineage.client.generated import (
    base,
    dataset_version_dataset,
    environment_variables_run,
    error_message_run,
    job_type_job,
    processing_engine_run,
    source_code_location_job,
    tags_run,
)

# the standard facets runrec emits, under their keys in the spec
JOB_FACETS = {
    "sourceCodeLocation": source_code_location_job.SourceCodeLocationJobFacet,
    "jobType": job_type_job.JobTypeJobFacet,
}
RUN_FACETS = {
    "processing_engine": processing_engine_run.ProcessingEngineRunFacet,
    "environmentVariables": environment_variables_run.EnvironmentVariablesRunFacet,
    "errorMessage": error_message_run.ErrorMessageRunFacet,
    "tags": tags_run.TagsRunFacet,
}
DATASET_FACETS = {"version": dataset_version_dataset.DatasetVersionDatasetFacet}
ALWAYS_SET = {"producer", "schemaURL", "_producer", "_schemaURL"}


def shipped_json_spec() -> str | None:
    import openlineage

    for root in openlineage.__path__:
        for dirpath, _dirs, files in os.walk(root):
            if "OpenLineage.json" in files:
                return os.path.join(dirpath, "OpenLineage.json")
    return None


def _format(field: Any) -> str | None:
    v = field.validator
    if v is None:
        return None
    try:
        src = inspect.getsource(v)
    except (OSError, TypeError):
        return None
    if "isoparse" in src:
        return "date-time"
    if "UUID(" in src:
        return "uuid"
    if "urlparse" in src:
        return "uri"
    return None


# the generic facet bases: any facet (a custom one) fits them; every other class is closed
OPEN = {
    base.BaseFacet,
    base.RunFacet,
    base.JobFacet,
    base.DatasetFacet,
    base.InputDatasetFacet,
    base.OutputDatasetFacet,
}


class _Builder:
    def __init__(self) -> None:
        self.defs: dict[str, Any] = {}

    def ref(self, cls: type) -> dict[str, Any]:
        name = cls.__module__.rsplit(".", 1)[-1] + "." + cls.__name__
        if name not in self.defs:
            self.defs[name] = {}  # recursion guard
            self.defs[name] = self.obj(cls, closed=cls not in OPEN)
        return {"$ref": f"#/$defs/{name}"}

    def obj(self, cls: type, closed: bool) -> dict[str, Any]:
        hints = typing.get_type_hints(cls)
        props, required = {}, []
        for f in attr.fields(cls):
            s = self.type(hints[f.name], f.name)
            fmt = _format(f)
            if fmt:
                s = {**s, "format": fmt}
            props[f.name] = s
            if f.default is attr.NOTHING or f.name in ALWAYS_SET:
                required.append(f.name)
        out: dict[str, Any] = {"type": "object", "properties": props, "required": required}
        if closed:
            out["additionalProperties"] = False
        return out

    def type(self, tp: Any, field: str) -> dict[str, Any]:
        origin = typing.get_origin(tp)
        if origin in (typing.Union, types.UnionType):
            args = [a for a in typing.get_args(tp) if a is not type(None)]
            return (
                self.type(args[0], field)
                if len(args) == 1
                else {"anyOf": [self.type(a, field) for a in args]}
            )
        if origin is list:
            return {"type": "array", "items": self.type(typing.get_args(tp)[0], field)}
        if origin is dict:
            value = typing.get_args(tp)[1]
            s: dict[str, Any] = {"type": "object"}
            if isinstance(value, type) and issubclass(value, base.BaseFacet):
                known = {
                    base.JobFacet: JOB_FACETS,
                    base.RunFacet: RUN_FACETS,
                    base.DatasetFacet: DATASET_FACETS,
                }.get(value, {})
                s["properties"] = {k: self.ref(c) for k, c in known.items()}
                s["additionalProperties"] = self.ref(value)
            else:
                s["additionalProperties"] = self.type(value, field)
            return s
        if tp is str:
            return {"type": "string"}
        if tp is bool:
            return {"type": "boolean"}
        if tp is int:
            return {"type": "integer"}
        if tp is float:
            return {"type": "number"}
        if tp is Any:
            return {}
        if isinstance(tp, type) and issubclass(tp, enum.Enum):
            return {"enum": [m.value for m in tp]}
        if attr.has(tp):
            return self.ref(tp)
        raise TypeError(f"no JSON Schema for {tp!r} (field {field})")


def run_event_schema() -> dict[str, Any]:
    """The RunEvent JSON Schema: the shipped file if there is one, else built from the classes."""
    path = shipped_json_spec()
    if path is not None:
        with open(path) as f:
            spec = json.load(f)
        return {"$schema": spec.get("$schema"), "$defs": spec["$defs"], "$ref": "#/$defs/RunEvent"}
    b = _Builder()
    root = b.ref(base.RunEvent)
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "$id": base.RunEvent._get_schema(),
        **root,
        "$defs": b.defs,
    }


_formats = jsonschema.FormatChecker()


@_formats.checks("date-time", raises=ValueError)
def _date_time(v: object) -> bool:
    if not isinstance(v, str) or "T" not in v.upper():
        return False
    return datetime.fromisoformat(v).tzinfo is not None  # an offset is required


@_formats.checks("uuid", raises=ValueError)
def _uuid(v: object) -> bool:
    return not isinstance(v, str) or str(uuid.UUID(v)) == v.lower()


@_formats.checks("uri")
def _uri(v: object) -> bool:
    return not isinstance(v, str) or bool(urlparse(v).scheme)


def validate(event: dict[str, Any]) -> None:
    jsonschema.Draft202012Validator(run_event_schema(), format_checker=_formats).validate(event)


# -- the package's own classes ------------------------------------------------------------


def _facet_obj(cls: type, d: dict[str, Any]) -> Any:
    kw = {k: v for k, v in d.items() if not k.startswith("_")}
    hints = typing.get_type_hints(cls)
    for f in attr.fields(cls):
        if f.name in kw:
            kw[f.name] = _build(hints[f.name], kw[f.name])
    obj = cls(**{_init_name(cls, k): v for k, v in kw.items()})
    return obj


def _init_name(cls: type, name: str) -> str:
    for f in attr.fields(cls):
        if f.name == name:
            return f.alias or name
    return name


def _build(tp: Any, v: Any) -> Any:
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        return _build(args[0], v) if v is not None else None
    if origin is list:
        return [_build(typing.get_args(tp)[0], x) for x in v]
    if attr.has(tp):
        return _facet_obj(tp, v)
    return v


def client_roundtrip(event: dict[str, Any]) -> dict[str, Any]:
    """The event rebuilt with openlineage-python's classes (their validators run: UUID,
    ISO time with a time part, URIs), serialized by the package's Serde. Custom facets are
    carried as the package's base facet classes with additional properties."""
    from openlineage.client.serde import Serde

    def facets(d: dict[str, Any], known: dict[str, type], generic: type) -> dict[str, Any]:
        out = {}
        for k, f in d.items():
            if k in known:
                out[k] = _facet_obj(known[k], f)
            else:
                extra = {x: y for x, y in f.items() if not x.startswith("_")}
                out[k] = generic().with_additional_properties(**extra)
                out[k]._producer = f["_producer"]
                out[k]._schemaURL = f["_schemaURL"]
        for k, f in out.items():
            if k in known:
                f._producer = d[k]["_producer"]
        return out

    def dataset(cls: type, d: dict[str, Any]) -> Any:
        return cls(
            namespace=d["namespace"],
            name=d["name"],
            facets=facets(d.get("facets", {}), DATASET_FACETS, base.DatasetFacet),
        )

    ev = base.RunEvent(
        eventType=base.EventType(event["eventType"]),
        eventTime=event["eventTime"],
        producer=event["producer"],
        run=base.Run(
            runId=event["run"]["runId"],
            facets=facets(event["run"].get("facets", {}), RUN_FACETS, base.RunFacet),
        ),
        job=base.Job(
            namespace=event["job"]["namespace"],
            name=event["job"]["name"],
            facets=facets(event["job"].get("facets", {}), JOB_FACETS, base.JobFacet),
        ),
        inputs=[dataset(base.InputDataset, d) for d in event.get("inputs", [])],
        outputs=[dataset(base.OutputDataset, d) for d in event.get("outputs", [])],
    )
    out = Serde.to_dict(ev)
    for d in out.get("inputs", []) + out.get("outputs", []):  # the classes add empty ones
        for k in ("inputFacets", "outputFacets"):
            if d.get(k) == {}:
                del d[k]
    return out


def client_normalized(event: dict[str, Any]) -> dict[str, Any]:
    """The event as the package's Serde normalizes a dict (nulls dropped)."""
    from openlineage.client.serde import Serde

    return Serde.to_dict(event)
