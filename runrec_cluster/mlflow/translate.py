"""What a runrec run (or sweep) becomes in MLflow: a ``RunSpec``. Pure: no mlflow import, no I/O.

A run's spec holds everything ``runrec mlflow-sync`` writes (docs/adopting.md, "From MLflow"):

- **params**: the config, flattened (a dict value ``{"opt": {"lr": 0.1}}`` becomes ``opt.lr``),
  each value as ``str(value)`` (what ``mlflow.log_params`` writes for the same dict), cut to
  ``MAX_PARAM_VALUE`` characters; a cut value is named in a ``runrec.truncated.<key>`` tag.
- **metrics**: every value the run logged, one point per record version that logged it
  (timestamp: when the version was written; step: 0, 1, 2... per metric), so MLflow's history
  is the run's and its latest value is the record's. Booleans are 0/1; a value that is not a
  number goes to a ``runrec.metric.<key>`` tag instead.
- **tags**: the flat run view's columns as ``runrec.<column>`` (``docs/query.md``), the
  provenance of each config key (``runrec.config_source.<key>``), the trust flags and the
  retirement that caused them, each artifact's digest, path and kept copy, MLflow's own tags
  (``mlflow.runName``, ``mlflow.user``, ``mlflow.source.*``, ``mlflow.parentRunId``), and the
  run's own tags as they are.
- **status** from the state (``STATUS``), start and end times.

Names MLflow refuses (characters outside ``[/\\w.\\- :]``, paths like ``../x``, longer than
250) are rewritten (``mlflow_key``) and the original kept in a ``runrec.key.<name>`` tag.
"""

from __future__ import annotations

import hashlib
import json
import math
import posixpath
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from runrec_cluster.lineage.refs import artifact_node
from runrec_cluster.query.columns import BASE_COLUMNS, flat_row
from runrec_cluster.record import RunRecord, RunState

# MLflow's limits (mlflow.utils.validation, MLflow 2.x and 3.x servers)
MAX_PARAM_VALUE = 6000
MAX_TAG_VALUE = 8000
MAX_KEY = 250
SYNC_FORMAT = "1"  # part of every digest: a new translation re-syncs every run once

PREFIX = "runrec."
DIGEST_TAG = "runrec.sync.digest"  # the spec's digest: equal -> nothing to write
METRIC_SEQ_TAG = "runrec.sync.metric_seq"  # metric points of versions up to this seq are in MLflow
KIND_TAG = "runrec.kind"  # "run" or "sweep": how a later sync finds what it wrote
RUN_TAG = "runrec.run_id"
SWEEP_TAG = "runrec.sweep_id"
PARENT_TAG = "mlflow.parentRunId"
# tags a sync writes as it goes, never deleted as stale
BOOKKEEPING = (DIGEST_TAG, METRIC_SEQ_TAG, "runrec.param_changed.")

# runrec state -> MLflow RunStatus. UNKNOWN (the backend reported a state runrec does not know)
# is not terminal: RUNNING, with runrec.state = unknown saying so.
STATUS: dict[RunState, str] = {
    RunState.SUBMITTED: "SCHEDULED",
    RunState.RUNNING: "RUNNING",
    RunState.SUCCEEDED: "FINISHED",
    RunState.FAILED: "FAILED",
    RunState.CANCELLED: "KILLED",
    RunState.UNKNOWN: "RUNNING",
}
TERMINAL_STATUS = frozenset({"FINISHED", "FAILED", "KILLED"})

# flat run view columns left out of the runrec.<column> tags: aliases of hardware.class and
# hardware.match, the input path list (long; the digests are mirrored), what rerun_of already
# says, the record's schema version, and the artifact verdict (the artifacts have their own tags)
_NOT_MIRRORED = frozenset(
    {
        "hardware",
        "hardware_match",
        "input_paths",
        "is_rerun",
        "schema_version",
        "reproduction.artifacts",
    }
)
# flat run view columns mirrored as runrec.<column> tags (when not null), in the view's order
MIRRORED_COLUMNS: tuple[str, ...] = tuple(c for c in BASE_COLUMNS if c not in _NOT_MIRRORED)

_BAD_CHARS = re.compile(r"[^/\w.\- :]")


@dataclass(frozen=True)
class MetricPoint:
    key: str
    value: float
    timestamp_ms: int
    step: int
    seq: int  # the record version that logged it


@dataclass
class RunSpec:
    """What one MLflow run should hold. ``kind``: ``run`` (``key`` = run id) or ``sweep`` (the
    parent of a sweep's runs, ``key`` = sweep id). ``parent``: the sweep id of a run's parent."""

    kind: str
    key: str
    name: str
    status: str
    start_ms: int | None
    end_ms: int | None
    params: dict[str, str] = field(default_factory=dict)
    tags: dict[str, str] = field(default_factory=dict)
    metrics: list[MetricPoint] = field(default_factory=list)
    parent: str | None = None
    artifacts: list[Any] = field(default_factory=list)  # record.ArtifactRef, for --copy-artifacts
    notes: list[str] = field(default_factory=list)  # what was cut, renamed or moved, for people

    def digest(self) -> str:
        """A hash of everything the spec writes (not the notes): equal digests, nothing to do."""
        doc = {
            "format": SYNC_FORMAT,
            "name": self.name,
            "status": self.status,
            "start": self.start_ms,
            "end": self.end_ms,
            "params": self.params,
            "tags": self.tags,
            "metrics": [(p.key, repr(p.value), p.timestamp_ms, p.step) for p in self.metrics],
            "parent": self.parent,
        }
        return hashlib.sha256(json.dumps(doc, sort_keys=True).encode()).hexdigest()

    @property
    def metric_seq(self) -> int:
        """The newest record version whose metrics the spec holds (-1: none)."""
        return max((p.seq for p in self.metrics), default=-1)


# ---------------------------------------------------------------------------------------------
# names and values
# ---------------------------------------------------------------------------------------------


def mlflow_key(name: str) -> str:
    """``name`` as a key MLflow accepts (params, metrics, tags): characters outside
    ``[/\\w.\\- :]`` become ``_``, a name that is not a clean relative path loses its slashes
    (and gets a leading ``_`` when it is ``.``/``..``-like), a name longer than 250 characters
    is cut and ends in ``-h`` and 8 hex digits of the original's hash."""
    k = _BAD_CHARS.sub("_", name) or "_"
    if _path_not_unique(k):
        k = k.replace("/", "_")
        if _path_not_unique(k):
            k = "_" + k
    if len(k) > MAX_KEY:
        k = k[: MAX_KEY - 10] + "-h" + hashlib.sha256(name.encode()).hexdigest()[:8]
    return k


def _path_not_unique(name: str) -> bool:
    norm = posixpath.normpath(name)
    return norm != name or norm == "." or norm.startswith("..") or norm.startswith("/")


def param_text(value: Any) -> str:
    """A config value as an MLflow param: ``str(value)``, as ``mlflow.log_params`` writes it."""
    return str(value)


def tag_text(value: Any) -> str:
    """A tag value: booleans ``true``/``false`` (as in ``runrec table``), the rest ``str``."""
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def ms(dt: datetime | None) -> int | None:
    if dt is None:
        return None
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=UTC)
    return int(dt.timestamp() * 1000)


def flatten(config: Mapping[str, Any]) -> dict[str, tuple[Any, str]]:
    """``{key: ConfigEntry}`` as ``{flat key: (value, source)}``: dict values are walked
    (``opt.lr``), with their key's source; an empty dict stays one value."""
    out: dict[str, tuple[Any, str]] = {}

    def walk(prefix: str, value: Any, source: str) -> None:
        if isinstance(value, dict) and value:
            for k, v in value.items():
                walk(f"{prefix}.{k}", v, source)
        else:
            out.setdefault(prefix, (value, source))

    for key, entry in config.items():
        walk(key, entry.value, entry.source)
    return out


class _Keys:
    """Original names -> MLflow keys for one run, collisions told apart by a hash suffix."""

    def __init__(self, notes: list[str], tags: dict[str, str], what: str) -> None:
        self.used: dict[str, str] = {}
        self.notes = notes
        self.tags = tags
        self.what = what

    def __call__(self, name: str) -> str:
        k = mlflow_key(name)
        if k in self.used and self.used[k] != name:
            k = mlflow_key(k[: MAX_KEY - 10] + "-h" + hashlib.sha256(name.encode()).hexdigest()[:8])
        self.used[k] = name
        if k != name:
            self.tags[mlflow_key(f"runrec.key.{k}")] = name[:MAX_TAG_VALUE]
            self.notes.append(f"{self.what} {name!r} is {k!r} in MLflow")
        return k


def _put_tag(tags: dict[str, str], notes: list[str], key: str, value: Any) -> None:
    text = tag_text(value)
    k = mlflow_key(key)
    if len(text) > MAX_TAG_VALUE:
        notes.append(f"tag {k} cut to {MAX_TAG_VALUE} of {len(text)} characters")
        tags[mlflow_key(f"runrec.truncated.{k}")] = f"{MAX_TAG_VALUE} of {len(text)} characters"
        text = text[:MAX_TAG_VALUE]
    tags[k] = text


# ---------------------------------------------------------------------------------------------
# a run
# ---------------------------------------------------------------------------------------------


def run_spec(
    rec: RunRecord,
    history: Iterable[tuple[int, datetime, Mapping[str, Any]]],
    trust: Any = None,
    store_root: str = "",
) -> RunSpec:
    """The spec of one run. ``history``: ``(seq, written_at, metrics)`` of every record version
    that logged metrics, in seq order; ``trust``: ``lineage.Trust`` or None (nothing retired)."""
    name = rec.name or rec.run_id
    if rec.sweep_index is not None:
        name = f"{name}[{rec.sweep_index}]"
    status = STATUS.get(rec.state, "RUNNING")
    start = rec.started_at or rec.submitted_at or rec.created_at
    spec = RunSpec(
        kind="run",
        key=rec.run_id,
        name=name,
        status=status,
        start_ms=ms(start),
        end_ms=ms(rec.ended_at) if status in TERMINAL_STATUS else None,
        parent=rec.sweep_id,
        artifacts=list(rec.artifacts),
    )
    tags: dict[str, str] = {}
    notes = spec.notes
    for k, v in rec.tags.items():  # the run's own tags, as they are (ours win a clash)
        _put_tag(tags, notes, f"runrec.tag.{k}" if k.startswith(PREFIX) else k, v)
    _params(spec, rec, tags)
    _metrics(spec, history, tags)
    row = flat_row(rec, None, trust)
    row.setdefault("retired", False)
    row.setdefault("suspect", False)
    for col in MIRRORED_COLUMNS:
        if row.get(col) is not None:
            _put_tag(tags, notes, f"runrec.{col}", row[col])
    if trust is not None:
        flags = trust.of_run(rec.run_id)
        if flags:
            _put_tag(tags, notes, "runrec.trust", "; ".join(f.describe() for f in flags))
            ids = sorted({f.retirement.id for f in flags})
            _put_tag(tags, notes, "runrec.retirement_ids", ",".join(ids))
    if rec.annotations:
        _put_tag(tags, notes, "runrec.verdict_note", rec.annotations[-1].note)
    _artifacts(spec, rec, tags, trust, store_root)
    _mlflow_tags(spec, rec, tags, store_root)
    tags[KIND_TAG] = "run"
    tags[RUN_TAG] = rec.run_id
    spec.tags = tags
    return spec


def _params(spec: RunSpec, rec: RunRecord, tags: dict[str, str]) -> None:
    keys = _Keys(spec.notes, tags, "config key")
    for flat, (value, source) in flatten(rec.config).items():
        k = keys(flat)
        text = param_text(value)
        if len(text) > MAX_PARAM_VALUE:
            spec.notes.append(f"param {k} cut to {MAX_PARAM_VALUE} of {len(text)} characters")
            tags[mlflow_key(f"runrec.truncated.{k}")] = (
                f"{MAX_PARAM_VALUE} of {len(text)} characters; the whole value: "
                f"runrec show {rec.run_id}"
            )
            text = text[:MAX_PARAM_VALUE]
        spec.params[k] = text
        tags[mlflow_key(f"runrec.config_source.{k}")] = source[:MAX_TAG_VALUE]


def _metrics(
    spec: RunSpec, history: Iterable[tuple[int, datetime, Mapping[str, Any]]], tags: dict[str, str]
) -> None:
    keys = _Keys(spec.notes, tags, "metric")
    steps: dict[str, int] = {}
    moved: set[str] = set()
    for seq, written_at, values in history:
        ts = ms(written_at) or 0
        for name, value in values.items():
            k = keys(name)
            if isinstance(value, bool):
                value = float(value)
            if isinstance(value, int | float):
                try:
                    num = float(value)
                except OverflowError:  # an int beyond float: the nearest infinity
                    num = math.copysign(math.inf, value)
                step = steps.get(k, 0)
                steps[k] = step + 1
                spec.metrics.append(MetricPoint(k, num, ts, step, seq))
                tags.pop(mlflow_key(f"runrec.metric.{k}"), None)
            else:  # a string, list, dict or null: MLflow metrics are numbers
                text = value if isinstance(value, str) else json.dumps(value, default=str)
                _put_tag(tags, spec.notes, f"runrec.metric.{k}", text)
                moved.add(k)
    for k in sorted(moved):
        if not any(p.key == k for p in spec.metrics):
            spec.notes.append(f"metric {k} is not a number: tag runrec.metric.{k}")


def _artifacts(
    spec: RunSpec, rec: RunRecord, tags: dict[str, str], trust: Any, store_root: str
) -> None:
    names = []
    for a in rec.artifacts:
        base = f"runrec.artifact.{mlflow_key(a.name).replace('/', '_')}"
        names.append(a.name)
        _put_tag(tags, spec.notes, f"{base}.digest", a.digest)
        _put_tag(tags, spec.notes, f"{base}.path", a.path)
        _put_tag(tags, spec.notes, f"{base}.size", a.size)
        if a.kept:
            kept = posixpath.join(store_root, a.kept) if store_root else a.kept
            _put_tag(tags, spec.notes, f"{base}.kept", kept)
        elif a.not_kept:
            _put_tag(tags, spec.notes, f"{base}.not_kept", a.not_kept)
        if trust is not None:
            marker = trust.marker(artifact_node(rec.run_id, a.name))
            if marker:
                _put_tag(tags, spec.notes, f"{base}.trust", marker.lower())
    if names:
        _put_tag(tags, spec.notes, "runrec.artifacts", ",".join(names))


def _mlflow_tags(spec: RunSpec, rec: RunRecord, tags: dict[str, str], store_root: str) -> None:
    """MLflow's own tags, which its UI shows in place: name, user, source, git commit."""
    tags["mlflow.runName"] = spec.name[:MAX_TAG_VALUE]
    if rec.user:
        tags["mlflow.user"] = rec.user
    ep = rec.entrypoint
    if ep is not None:
        source = ep.function if ep.kind == "function" else " ".join(ep.argv)
        if source:
            tags["mlflow.source.name"] = source[:MAX_TAG_VALUE]
        tags["mlflow.source.type"] = "JOB"
    code = rec.code
    if code is not None and code.commit:
        tags["mlflow.source.git.commit"] = code.commit
        if code.branch:
            tags["mlflow.source.git.branch"] = code.branch
        if code.remote_url:
            tags["mlflow.source.git.repoURL"] = code.remote_url
    if rec.annotations and rec.annotations[-1].note:
        tags["mlflow.note.content"] = (
            f"runrec verdict {rec.annotations[-1].verdict}: {rec.annotations[-1].note}"
        )[:MAX_TAG_VALUE]
    if store_root:
        tags["runrec.store"] = store_root[:MAX_TAG_VALUE]


# ---------------------------------------------------------------------------------------------
# a sweep: the parent run
# ---------------------------------------------------------------------------------------------


def sweep_status(states: Iterable[RunState]) -> str:
    """A sweep's status: RUNNING while a run is not terminal, then FAILED if any failed, KILLED
    if any was cancelled, else FINISHED."""
    ss = list(states)
    if any(not s.is_terminal() for s in ss):
        return "RUNNING"
    if RunState.FAILED in ss:
        return "FAILED"
    if RunState.CANCELLED in ss:
        return "KILLED"
    return "FINISHED"


def sweep_spec(sweep_id: str, recs: list[RunRecord], store_root: str = "") -> RunSpec:
    """The parent run of a sweep: the config values all its runs share as params, the count of
    runs per state, start of the first run, end of the last (once all ended)."""
    first = min(recs, key=lambda r: r.sweep_index if r.sweep_index is not None else 0)
    status = sweep_status(r.state for r in recs)
    starts = [
        t for r in recs if (t := ms(r.started_at or r.submitted_at or r.created_at)) is not None
    ]
    ends = [t for r in recs if (t := ms(r.ended_at)) is not None]
    spec = RunSpec(
        kind="sweep",
        key=sweep_id,
        name=f"{first.name or sweep_id} (sweep)",
        status=status,
        start_ms=min(starts) if starts else None,
        end_ms=max(ends) if ends and status in TERMINAL_STATUS else None,
    )
    tags: dict[str, str] = {}
    flats = [flatten(r.config) for r in recs]
    keys = _Keys(spec.notes, tags, "config key")
    for flat, (value, source) in flats[0].items():
        if all(flat in f and f[flat][0] == value for f in flats[1:]):
            k = keys(flat)
            spec.params[k] = param_text(value)[:MAX_PARAM_VALUE]
            tags[mlflow_key(f"runrec.config_source.{k}")] = source[:MAX_TAG_VALUE]
    counts: dict[str, int] = {}
    for r in recs:
        counts[r.state.value] = counts.get(r.state.value, 0) + 1
    tags["runrec.runs"] = str(len(recs))
    tags["runrec.states"] = " ".join(f"{s}:{n}" for s, n in sorted(counts.items()))
    commits = {r.code.commit for r in recs if r.code is not None and r.code.commit}
    if len(commits) == 1:
        tags["mlflow.source.git.commit"] = commits.pop()
    tags["mlflow.runName"] = spec.name[:MAX_TAG_VALUE]
    if first.user:
        tags["mlflow.user"] = first.user
    if store_root:
        tags["runrec.store"] = store_root[:MAX_TAG_VALUE]
    tags[KIND_TAG] = "sweep"
    tags[SWEEP_TAG] = sweep_id
    spec.tags = tags
    return spec
