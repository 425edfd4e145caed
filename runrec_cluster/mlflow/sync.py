"""``sync()``: mirror a store's runs into one MLflow experiment, idempotently.

Each run becomes one MLflow run tagged ``runrec.kind = run`` and ``runrec.run_id``; each sweep
one parent run (``runrec.kind = sweep``, ``runrec.sweep_id``) whose children point to it with
``mlflow.parentRunId``. A sync first lists the experiment's runs that carry ``runrec.kind``
(one search), so a second sync finds what the first wrote and never duplicates it:

- a run whose spec digest (``runrec.sync.digest``) is unchanged is not touched (no call);
- a changed run gets only what changed: new params, changed tags (stale ``runrec.*`` tags are
  deleted), metric points of record versions newer than ``runrec.sync.metric_seq``, its status
  and end time (a run synced RUNNING becomes FINISHED / FAILED / KILLED), the digest last, so an
  interrupted sync is finished by the next one;
- a run deleted in MLflow's UI stays deleted (counted as ``deleted``), never re-created.

MLflow params cannot change: a config value that differs from the param already there (a value
given back later with ``run.log_config``) goes to a ``runrec.param_changed.<key>`` tag.
MLflow's start time is set when the run is created (the runrec start, or submit time for a run
not started yet); the ``runrec.started_at`` tag is always the recorded one.

Artifacts are linked by default (``runrec.artifact.<name>.digest / .path / .kept`` tags: the
recorded path and the kept copy in the store); with ``copy_artifacts`` the kept copy (or the
recorded file, when it still has the recorded digest) is uploaded to the run's artifacts as
``<name>/<file name>``, once per digest (``runrec.artifact.<name>.copied``).
"""

from __future__ import annotations

import hashlib
import os
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from runrec_cluster.api import refresh_many
from runrec_cluster.capture.data import algo_of, hash_path
from runrec_cluster.errors import RunrecError, StoreError
from runrec_cluster.expr import parse
from runrec_cluster.lineage.records import problem_text
from runrec_cluster.lineage.trust import trust_for
from runrec_cluster.mlflow.client import Existing, Mirror
from runrec_cluster.mlflow.translate import (
    BOOKKEEPING,
    DIGEST_TAG,
    KIND_TAG,
    METRIC_SEQ_TAG,
    PARENT_TAG,
    PREFIX,
    RUN_TAG,
    SWEEP_TAG,
    RunSpec,
    mlflow_key,
    run_spec,
    sweep_spec,
)
from runrec_cluster.query.columns import ColumnNames, flat_row, package_reader, present_columns
from runrec_cluster.record import RunRecord, fold
from runrec_cluster.store import ReadProblem, Store, as_store
from runrec_cluster.store.kept import kept_file

DEFAULT_EXPERIMENT = "runrec"
DEFAULT_WORKERS = 4

History = list[tuple[int, datetime, dict[str, Any]]]


@dataclass
class SyncReport:
    """What one sync did. Lists hold runrec ids (run ids; sweep ids in the ``sweeps_*``)."""

    uri: str
    experiment: str
    experiment_id: str = ""
    experiment_created: bool = False
    created: list[str] = field(default_factory=list)
    updated: list[str] = field(default_factory=list)
    unchanged: list[str] = field(default_factory=list)
    deleted: list[str] = field(default_factory=list)  # deleted in MLflow: left alone
    sweeps_created: list[str] = field(default_factory=list)
    sweeps_updated: list[str] = field(default_factory=list)
    uploaded: list[str] = field(default_factory=list)  # "RUN:artifact"
    mlflow_ids: dict[str, str] = field(default_factory=dict)  # runrec id -> MLflow run id
    notes: dict[str, list[str]] = field(default_factory=dict)  # runrec id -> what was cut/moved
    problems: list[str] = field(default_factory=list)  # records that could not be read
    seconds: float = 0.0

    @property
    def synced(self) -> int:
        return len(self.created) + len(self.updated) + len(self.unchanged)


def read_runs(store: Store, problems: list[str]) -> tuple[list[RunRecord], dict[str, History]]:
    """Every run that folds, and the metrics each of its versions logged (the history MLflow
    gets), reading each version file once."""
    recs: list[RunRecord] = []
    hist: dict[str, History] = {}
    for run_id in store.run_ids():
        probs: list[ReadProblem] = []
        vs = store.versions(run_id, probs)
        problems += [problem_text(p) for p in probs]
        if not vs:
            continue
        try:
            recs.append(fold(vs))
        except Exception as exc:  # a version that decodes but does not fold
            problems.append(f"run {run_id} does not fold into a record ({exc}); see `runrec fsck`")
            continue
        vs.sort(key=lambda v: (v.seq, v.written_at))
        hist[run_id] = [
            (v.seq, v.written_at, v.patch["metrics"])
            for v in vs
            if isinstance(v.patch.get("metrics"), dict) and v.patch["metrics"]
        ]
    return recs, hist


def select(store: Store, recs: list[RunRecord], where: str | None, trust: Any) -> list[RunRecord]:
    """The runs matching ``where`` (the flat run view's language, ``docs/query.md``); an unknown
    column name is an ``ExpressionError`` naming the closest ones, as in ``runrec ls``."""
    if not where or not where.strip():
        return recs
    expr = parse(where)
    fixed = set(flat_row(recs[0])) if recs else set()
    ColumnNames(present_columns(recs) | fixed, has_runs=bool(recs)).check(expr, None)
    pk = package_reader(store) if any(c.startswith("packages.") for c in expr.columns) else None
    out = []
    for r in recs:
        row = flat_row(r, pk, trust)
        row.setdefault("retired", False)
        row.setdefault("suspect", False)
        if expr.matches(row):
            out.append(r)
    return out


def sync(
    store: Store | str | os.PathLike[str] | None,
    tracking_uri: str,
    experiment: str = DEFAULT_EXPERIMENT,
    where: str | None = None,
    *,
    copy_artifacts: bool = False,
    check: bool = True,
    workers: int = DEFAULT_WORKERS,
    warn: Callable[[str], None] | None = None,
) -> SyncReport:
    """Mirror the runs of ``store`` (those matching ``where``) into MLflow experiment
    ``experiment`` at ``tracking_uri`` (created when missing). ``check``: ask the backends
    about runs that have not ended first, as ``runrec ls`` does. ``workers``: runs written at
    once. Raises ``MirrorError`` when the server cannot be reached or refuses a write,
    ``ExpressionError`` for a bad ``where``, ``ConfigError`` for a bad URI or a missing extra."""
    t0 = time.monotonic()
    s = as_store(store)
    report = SyncReport(uri=tracking_uri, experiment=experiment)
    recs, hist = read_runs(s, report.problems)
    if check:
        try:
            recs = refresh_many(s, recs)
        except StoreError as exc:  # a read-only store still syncs, as last recorded
            report.problems.append(f"could not record the state of runs whose job is gone: {exc}")
    trust = trust_for(s, recs, report.problems)
    chosen = select(s, recs, where, trust)
    mirror = Mirror(tracking_uri, experiment)
    report.uri = mirror.uri
    report.experiment_id = mirror.experiment_id
    report.experiment_created = mirror.created
    found = _index(mirror.existing(), report)
    syncer = _Syncer(mirror, s, found, copy_artifacts, report, warn)
    by_sweep: dict[str, list[RunRecord]] = {}
    for r in recs:
        if r.sweep_id:
            by_sweep.setdefault(r.sweep_id, []).append(r)
    parents: dict[str, str] = {}
    for sid in sorted({r.sweep_id for r in chosen if r.sweep_id}):
        spec = sweep_spec(sid, by_sweep[sid], s.root)
        outcome, rid = syncer.apply(spec, None)
        if rid:
            parents[sid] = rid
        if outcome == "created":
            report.sweeps_created.append(sid)
        elif outcome == "updated":
            report.sweeps_updated.append(sid)
    specs = [run_spec(r, hist.get(r.run_id, []), trust, s.root) for r in chosen]
    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        results = list(pool.map(lambda sp: syncer.apply(sp, parents.get(sp.parent or "")), specs))
    for spec, (outcome, _) in zip(specs, results, strict=True):
        getattr(report, outcome).append(spec.key)
        if spec.notes:
            report.notes[spec.key] = spec.notes
    report.seconds = time.monotonic() - t0
    return report


def _index(runs: list[Existing], report: SyncReport) -> dict[tuple[str, str], Existing]:
    """The runs a sync wrote, by (kind, runrec id); of several (two syncs at once), the one
    not deleted, created first."""
    out: dict[tuple[str, str], Existing] = {}
    for e in sorted(runs, key=lambda e: (e.deleted, e.start_ms or 0)):
        kind = e.tags.get(KIND_TAG, "")
        key = e.tags.get(RUN_TAG if kind == "run" else SWEEP_TAG, "")
        if not key:
            continue
        if (kind, key) in out:
            report.notes.setdefault(key, []).append(
                f"MLflow holds it twice: {out[kind, key].run_id} is synced, {e.run_id} is not"
            )
            continue
        out[kind, key] = e
    return out


class _Syncer:
    """Writes specs: creates, updates or leaves each MLflow run (``apply``)."""

    def __init__(
        self,
        mirror: Mirror,
        store: Store,
        found: dict[tuple[str, str], Existing],
        copy_artifacts: bool,
        report: SyncReport,
        warn: Callable[[str], None] | None,
    ) -> None:
        self.mirror = mirror
        self.store = store
        self.found = found
        self.copy = copy_artifacts
        self.report = report
        self.warn = warn

    def apply(self, spec: RunSpec, parent_id: str | None) -> tuple[str, str]:
        """("created" | "updated" | "unchanged" | "deleted", MLflow run id)."""
        ex = self.found.get((spec.kind, spec.key))
        if ex is not None and ex.deleted:
            return "deleted", ex.run_id
        tags = dict(spec.tags)
        if parent_id:
            tags[PARENT_TAG] = parent_id
        digest = hashlib.sha256(f"{spec.digest()} {parent_id} {self.copy}".encode()).hexdigest()
        if ex is not None and ex.tags.get(DIGEST_TAG) == digest:
            self.report.mlflow_ids[spec.key] = ex.run_id
            return "unchanged", ex.run_id
        m = self.mirror
        if ex is None:
            first = {k: tags[k] for k in (KIND_TAG, RUN_TAG, SWEEP_TAG, PARENT_TAG) if k in tags}
            rid = m.create(spec.name, spec.start_ms, first)
            if spec.status != "RUNNING":
                m.set_status(rid, spec.status, spec.end_ms)
            have: dict[str, str] = first
            params = spec.params
            points = spec.metrics
            outcome = "created"
        else:
            rid = ex.run_id
            have = ex.tags
            params = {}
            for k, v in spec.params.items():
                if k not in ex.params:
                    params[k] = v
                elif ex.params[k] != v:  # MLflow params never change
                    tags[mlflow_key(f"runrec.param_changed.{k}")] = v[:8000]
                    spec.notes.append(f"param {k} changed in the record; MLflow keeps the first")
            seq = _int(ex.tags.get(METRIC_SEQ_TAG), -1)
            points = [p for p in spec.metrics if p.seq > seq]
            if ex.status != spec.status or (spec.end_ms is not None and ex.end_ms != spec.end_ms):
                m.set_status(rid, spec.status, spec.end_ms)
            if ex.name != spec.name:
                m.rename(rid, spec.name)
            for k in sorted(ex.tags):
                if k.startswith(PREFIX) and k not in tags and not _kept_tag(k):
                    m.delete_tag(rid, k)
            outcome = "updated"
        if self.copy:
            self._copy_artifacts(spec, rid, have, tags)
        tags[METRIC_SEQ_TAG] = str(max(spec.metric_seq, _int(have.get(METRIC_SEQ_TAG), -1)))
        delta = {k: v for k, v in tags.items() if have.get(k) != v}
        m.log(rid, params, points, delta, {DIGEST_TAG: digest})
        self.report.mlflow_ids[spec.key] = rid
        return outcome, rid

    def _copy_artifacts(
        self, spec: RunSpec, rid: str, have: dict[str, str], tags: dict[str, str]
    ) -> None:
        """Upload each artifact not uploaded yet with this digest: the kept copy, else the
        recorded path when it still hashes to the recorded digest."""
        for a in spec.artifacts:
            name = mlflow_key(a.name).replace("/", "_")
            key = f"runrec.artifact.{name}.copied"
            if have.get(key) == a.digest:
                tags[key] = a.digest
                continue
            src = kept_file(self.store.root, a.digest) if a.kept else None
            if src is None and _same_content(a.path, a.digest):
                src = a.path
            if src is None:
                spec.notes.append(
                    f"artifact {a.name} not copied: no kept copy, and {a.path} is gone or changed"
                )
                continue
            base = os.path.basename(os.path.normpath(a.path)) or name
            if os.path.isdir(src):
                self.mirror.upload(rid, src, f"{name}/{base}")
            else:
                with tempfile.TemporaryDirectory(prefix="runrec-mlflow-") as tmp:
                    link = os.path.join(tmp, base)
                    os.symlink(os.path.abspath(src), link)  # the kept copy, under its own name
                    self.mirror.upload(rid, link, name)
            tags[key] = a.digest
            self.report.uploaded.append(f"{spec.key}:{a.name}")


def _kept_tag(key: str) -> bool:
    """Tags a sync keeps even when the spec no longer names them (bookkeeping, uploads)."""
    return key.startswith(BOOKKEEPING) or (
        key.startswith("runrec.artifact.") and key.endswith(".copied")
    )


def _same_content(path: str, digest: str) -> bool:
    if not os.path.exists(path):
        return False
    try:
        res, _ = hash_path(path, algo=algo_of(digest))  # both raise RunrecError subclasses
    except RunrecError:
        return False
    return bool(res.digest == digest)


def _int(text: str | None, default: int) -> int:
    try:
        return int(text) if text is not None else default
    except ValueError:
        return default
