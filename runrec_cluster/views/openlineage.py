"""OpenLineage export: a run as RunEvents (``runrec export RUN --format openlineage``).

Every run gives a START event (at its start, or its submission when it never started) and,
once it ended, one COMPLETE (succeeded), FAIL (failed) or ABORT (cancelled) event: one JSON
document per line, as OpenLineage's file transport writes them, ready to be posted to any
OpenLineage consumer (Marquez, DataHub, ...). Spec version 2-0-2.

- ``run.runId``: the run id (a ULID) as a UUIDv7: its millisecond time and 74 of its 80 random
  bits; the runrec id itself is in the ``runrec_run`` facet.
- ``job``: namespace (``runrec`` unless given), name: the run's name.
- ``inputs``: every input; ``outputs``: every artifact (in the end event). Dataset namespace
  ``file``, name: the absolute path; the ``version`` facet is the content hash.
- Standard facets: ``sourceCodeLocation`` (git remote, commit, branch), ``jobType``,
  ``processing_engine``, ``environmentVariables`` (the selected, redacted ones), ``tags``,
  ``errorMessage`` (with the traceback) on FAIL, ``version`` on datasets.
- runrec's own facets (their ``_schemaURL`` is a ``urn:runrec-cluster:...`` name; fields are
  described in docs/lineage.md): ``runrec_code`` (job: commit, dirty, the patch's blob,
  entrypoint), ``runrec_run`` (state, failure, metrics, annotations, trust flags),
  ``runrec_config``, ``runrec_environment`` (Python, platform, every package),
  ``runrec_hardware`` (requested resources, hardware class, every node: CPU, memory, GPUs,
  drivers, CUDA libraries), ``runrec_content`` (datasets: size, files, producing run),
  ``runrec_nonfinite`` (only when needed: strict JSON has no NaN / Infinity, so such a float is
  written ``null`` and this facet's ``values`` maps its JSON Pointer, relative to the event, to
  ``"NaN"``, ``"Infinity"`` or ``"-Infinity"``; docs/export.md).
"""

from __future__ import annotations

import os
import uuid
from datetime import UTC, datetime
from typing import Any

from runrec_cluster.record import InputRef, RunRecord, RunState
from runrec_cluster.store import Store, layout
from runrec_cluster.store.codec import finite_json, to_json_builtins
from runrec_cluster.version import __version__

SPEC = "https://openlineage.io/spec"
RUN_EVENT_SCHEMA = f"{SPEC}/2-0-2/OpenLineage.json#/$defs/RunEvent"
FACET_SCHEMAS = {
    "sourceCodeLocation": f"{SPEC}/facets/1-1-0/SourceCodeLocationJobFacet.json#/$defs/SourceCodeLocationJobFacet",
    "jobType": f"{SPEC}/facets/2-0-4/JobTypeJobFacet.json#/$defs/JobTypeJobFacet",
    "processing_engine": f"{SPEC}/facets/1-1-1/ProcessingEngineRunFacet.json#/$defs/ProcessingEngineRunFacet",
    "environmentVariables": f"{SPEC}/facets/1-0-0/EnvironmentVariablesRunFacet.json#/$defs/EnvironmentVariablesRunFacet",
    "errorMessage": f"{SPEC}/facets/1-0-1/ErrorMessageRunFacet.json#/$defs/ErrorMessageRunFacet",
    "tags": f"{SPEC}/facets/1-0-0/TagsRunFacet.json#/$defs/TagsRunFacet",
    "version": f"{SPEC}/facets/1-0-1/DatasetVersionDatasetFacet.json#/$defs/DatasetVersionDatasetFacet",
}
CUSTOM_FACETS = (
    "runrec_code",
    "runrec_run",
    "runrec_config",
    "runrec_environment",
    "runrec_hardware",
    "runrec_content",
    "runrec_nonfinite",
)
_END_EVENT = {
    RunState.SUCCEEDED: "COMPLETE",
    RunState.FAILED: "FAIL",
    RunState.CANCELLED: "ABORT",
}


def producer() -> str:
    return f"urn:runrec-cluster:{__version__}"


def custom_schema(facet: str) -> str:
    return f"urn:runrec-cluster:facet:{facet}:1"


def run_uuid(run_id: str) -> str:
    """A runrec run id (ULID: 48-bit ms time + 80 random bits) as a UUIDv7 string."""
    layout.check_run_id(run_id)
    alphabet = "0123456789abcdefghjkmnpqrstvwxyz"
    n = 0
    for ch in run_id:
        n = (n << 5) | alphabet.index(ch)
    ms, rand = n >> 80, n & ((1 << 80) - 1)
    u = (
        (ms & ((1 << 48) - 1)) << 80
        | 0x7 << 76
        | (rand >> 68) << 64
        | 0b10 << 62
        | rand & ((1 << 62) - 1)
    )
    return str(uuid.UUID(int=u))


def _facet(key: str, /, **fields: Any) -> dict[str, Any]:
    schema = FACET_SCHEMAS.get(key) or custom_schema(key)
    out = {"_producer": producer(), "_schemaURL": schema}
    out.update({k: v for k, v in fields.items() if v is not None})
    return out


def _time(dt: datetime | None, run_id: str) -> str:
    if dt is None:
        dt = datetime.fromtimestamp(layout.id_time(run_id), UTC)
    return dt.isoformat()


def _job_facets(rec: RunRecord) -> dict[str, Any]:
    facets: dict[str, Any] = {}
    code, ep = rec.code, rec.entrypoint
    if code is not None and code.is_repo and code.root:
        url = code.remote_url or f"file://{code.root}"
        rel = None
        if ep is not None and ep.cwd:
            r = os.path.relpath(ep.cwd, code.root)
            rel = None if r.startswith("..") else r
        facets["sourceCodeLocation"] = _facet(
            "sourceCodeLocation",
            type="git",
            url=url,
            repoUrl=code.remote_url or f"file://{code.root}",
            path=rel,
            version=code.commit,
            branch=code.branch,
        )
    facets["jobType"] = _facet(
        "jobType",
        processingType="BATCH",
        integration="RUNREC",
        jobType=(ep.kind.upper() if ep is not None else "JOB"),
    )
    code_facet: dict[str, Any] = {}
    if code is not None:
        code_facet = to_json_builtins(code)
    if ep is not None:
        e = to_json_builtins(ep)
        e.pop("call_blob", None)  # a pickle: named nowhere outside the store
        code_facet["entrypoint"] = e
    facets["runrec_code"] = _facet("runrec_code", **code_facet)
    return facets


def _packages(store: Store, digest: str | None) -> dict[str, Any] | None:
    if not digest:
        return None
    try:
        return dict(store.get_obj(digest))
    except Exception:
        return None


def _run_facets(store: Store, rec: RunRecord, trust: Any, end: bool) -> dict[str, Any]:
    facets = _standard_run_facets(rec, end)
    facets["runrec_run"] = _runrec_run_facet(rec, trust)
    facets["runrec_config"] = _facet(
        "runrec_config",
        config={
            k: {"value": to_json_builtins(e.value), "source": e.source}
            for k, e in rec.config.items()
        },
    )
    env = rec.launch_env
    if env is not None:
        facets["runrec_environment"] = _facet(
            "runrec_environment",
            python_version=env.python_version,
            python_executable=env.python_executable,
            platform=env.platform,
            hostname=env.hostname,
            package_count=env.package_count,
            packages=_packages(store, env.packages_blob),
            packages_blob=env.packages_blob,
            env_vars=dict(env.env_vars),
        )
    facets["runrec_hardware"] = _hardware_facet(rec)
    return facets


def _standard_run_facets(rec: RunRecord, end: bool) -> dict[str, Any]:
    """The OpenLineage facets: processing engine, environment variables, tags, error."""
    facets: dict[str, Any] = {
        "processing_engine": _facet(
            "processing_engine",
            version=__version__,
            name="runrec-cluster",
            openlineageAdapterVersion=__version__,
        )
    }
    env = rec.launch_env
    if env is not None and env.env_vars:
        facets["environmentVariables"] = _facet(
            "environmentVariables",
            environmentVariables=[{"name": k, "value": v} for k, v in env.env_vars.items()],
        )
    if rec.tags:
        facets["tags"] = _facet(
            "tags",
            tags=[{"key": k, "value": v, "source": "RUNREC"} for k, v in rec.tags.items()],
        )
    f = rec.failure
    if end and rec.state == RunState.FAILED and f is not None:
        facets["errorMessage"] = _facet(
            "errorMessage",
            message=f"{f.cause.value}: {f.type}: {f.message}".rstrip(": "),
            programmingLanguage="python",
            stackTrace=f.traceback or None,
        )
    return facets


def _runrec_run_facet(rec: RunRecord, trust: Any) -> dict[str, Any]:
    f = rec.failure
    flags = trust.of_run(rec.run_id) if trust is not None else []
    return _facet(
        "runrec_run",
        run_id=rec.run_id,
        name=rec.name,
        state=rec.state.value,
        attempt=rec.attempt,
        user=rec.user,
        submit_host=rec.submit_host,
        sweep_id=rec.sweep_id,
        sweep_index=rec.sweep_index,
        created_at=_iso(rec.created_at),
        submitted_at=_iso(rec.submitted_at),
        started_at=_iso(rec.started_at),
        ended_at=_iso(rec.ended_at),
        exit_code=rec.exit_code,
        failure=to_json_builtins(f) if f is not None else None,
        metrics=to_json_builtins(rec.metrics),
        result=to_json_builtins(rec.result) if rec.result is not None else None,
        annotations=[to_json_builtins(a) for a in rec.annotations] or None,
        trust=[fl.to_json() for fl in flags] or None,
        warnings=list(rec.warnings) or None,
    )


def _hardware_facet(rec: RunRecord) -> dict[str, Any]:
    ex = rec.execution
    nodes = []
    for n in rec.nodes:
        d = to_json_builtins(n)
        d.pop("env_vars", None)
        if d.get("runtime"):
            d["runtime"].pop("loaded_libraries", None)
        nodes.append(d)
    return _facet(
        "runrec_hardware",
        backend=ex.backend if ex else None,
        resources=to_json_builtins(ex.resources) if ex else None,
        hardware_class=ex.hardware if ex else None,
        hardware_expect=to_json_builtins(ex.hardware_expect) if ex and ex.hardware_expect else None,
        hardware_match=ex.hardware_match if ex else None,
        hardware_mismatches=list(ex.hardware_mismatches) if ex and ex.hardware_mismatches else None,
        hardware_on_mismatch=ex.hardware_on_mismatch if ex else None,
        hardware_placement=ex.hardware_placement if ex else None,
        scheduler=to_json_builtins(ex.scheduler) if ex else None,
        nodes=nodes,
    )


def _iso(dt: datetime | None) -> str | None:
    return dt.isoformat() if dt is not None else None


def _dataset(
    ref: Any, kind: str, produced_by: dict[str, Any] | None, label: str | None = None
) -> dict[str, Any]:
    """An input (InputRef) or output (ArtifactRef) as an OpenLineage dataset."""
    content = _facet(
        "runrec_content",
        kind=kind,
        digest=ref.digest,
        size=ref.size,
        file_count=ref.file_count,
        is_dir=ref.is_dir,
        label=label,
        produced_by=produced_by,
    )
    return {
        "namespace": "file",
        "name": ref.path,
        "facets": {
            "version": _facet("version", datasetVersion=ref.digest),
            "runrec_content": content,
        },
    }


def _input(i: InputRef) -> dict[str, Any]:
    produced = None
    if i.kind == "artifact":
        produced = {
            k: v
            for k, v in (("run_id", i.run_id), ("artifact", i.artifact), ("promoted", i.promoted))
            if v is not None
        }
    return _dataset(i, i.kind, produced, i.version)


def run_events(
    store: Store, rec: RunRecord, *, namespace: str = "runrec", trust: Any = None
) -> list[dict[str, Any]]:
    """The run's OpenLineage RunEvents: START, then COMPLETE / FAIL / ABORT once it ended."""
    run_id = run_uuid(rec.run_id)
    name = rec.name or (rec.entrypoint.function if rec.entrypoint else "") or rec.run_id
    job = {"namespace": namespace, "name": name, "facets": _job_facets(rec)}
    inputs = [_input(i) for i in rec.inputs]
    base = {"producer": producer(), "schemaURL": RUN_EVENT_SCHEMA, "job": job, "inputs": inputs}
    start = {
        "eventType": "START",
        "eventTime": _time(rec.started_at or rec.submitted_at or rec.created_at, rec.run_id),
        "run": {"runId": run_id, "facets": _run_facets(store, rec, trust, end=False)},
        **base,
        "outputs": [],
    }
    events = [start]
    kind = _END_EVENT.get(rec.state)
    if kind is not None:
        events.append(
            {
                "eventType": kind,
                "eventTime": _time(rec.ended_at or rec.started_at or rec.submitted_at, rec.run_id),
                "run": {"runId": run_id, "facets": _run_facets(store, rec, trust, end=True)},
                **base,
                "outputs": [
                    _dataset(a, "artifact", {"run_id": rec.run_id, "artifact": a.name})
                    for a in rec.artifacts
                ],
            }
        )
    return [_strict(e) for e in events]


def _strict(event: dict[str, Any]) -> dict[str, Any]:
    """The event with non-finite floats as ``null``, named in a ``runrec_nonfinite`` run facet."""
    clean, found = finite_json(event)
    if found:
        clean["run"]["facets"]["runrec_nonfinite"] = _facet("runrec_nonfinite", values=found)
    return clean
