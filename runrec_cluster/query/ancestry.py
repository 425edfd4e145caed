"""Trust flags of a few runs from their ancestry only: ``runrec show`` and ``runrec ls --limit``
flag the runs they print without reading every run of the store.

A run is flagged by a retirement whose target is upstream of it (``lineage.trust``). Upstream
of a run are only (``lineage.graph``): its inputs' sources (a run's artifact, a promoted
version, a dataset by content); the run that logged such an artifact, the run whose artifact a
promoted version copies; and, for a dataset, every artifact and promoted version with the same
content (the "same content" edges). ``ancestry`` collects the records of all those runs: the
records themselves name artifacts and promoted versions; the index's ``_lineage`` column
(``index.py``) finds the runs that logged an artifact with a dataset's content hash. The graph
of those runs only (``lineage.build_graph``) gives the given runs the flags the whole store's
graph gives them: every path into a run passes through its ancestors.

One more kind of node can be upstream: a retired artifact or promoted version that no longer
exists (its run or promotion deleted) lives in the graph only through the runs that consumed
it, and reaches a dataset of the same content; its consumers (few) are added when the
ancestry holds a dataset.

Without the query extra (pyarrow) or a readable index, ``trust_of`` builds the whole graph
(``lineage.trust_for``): slower, the same flags.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from typing import Any

import msgspec

from runrec_cluster.errors import ConfigError, RunrecError, StoreError
from runrec_cluster.lineage.graph import build_graph
from runrec_cluster.lineage.records import list_retirements
from runrec_cluster.lineage.refs import artifact_node, promoted_node
from runrec_cluster.lineage.trust import Trust
from runrec_cluster.query.columns import LINEAGE_COLUMN, query_libs
from runrec_cluster.query.index import Index
from runrec_cluster.query.index_table import live_mask
from runrec_cluster.record import ArtifactRef, InputRef, RunRecord
from runrec_cluster.store import Store
from runrec_cluster.store.promoted import list_promotions

_SAFE_DIGEST = re.compile(r"^[a-z0-9-]+:[0-9a-f]+\Z")


class _Cell(msgspec.Struct):
    """What ``ancestry`` reads of a ``_lineage`` cell."""

    run_id: str
    inputs: list[InputRef] = []
    artifacts: list[ArtifactRef] = []


def read_run(store: Store, run_id: str) -> RunRecord | None:
    """The record of ``run_id`` read as ``Store.load_all`` reads it (read-only; unreadable
    versions skipped), or None when the run is not in the store or does not fold."""
    try:
        recs = store.load_runs([run_id])
    except RunrecError:
        return None
    return recs[0] if recs else None


class LineageCells:
    """The index's ``_lineage`` column, read once, searched by content hash or by text."""

    def __init__(self, index: Index, updated: bool = False) -> None:
        self.index = index
        self.updated = updated
        self._table: Any = None

    def table(self) -> Any:
        """(run_id, _lineage) of every run of the index, the delta's rows in place of the
        base's rows of the same runs."""
        if self._table is None:
            if not self.updated:
                self.index.update()
                self.updated = True
            parts = self.index.load_parts({"run_id", LINEAGE_COLUMN})
            if parts is None:
                raise StoreError(f"the query index {self.index.path} cannot be read.")
            pa = query_libs().pa
            base, _, delta, _ = parts
            pieces = []
            for p in [base] if delta is None or not delta.num_rows else [base, delta]:
                lin = (
                    p.column(LINEAGE_COLUMN).cast(pa.string())
                    if LINEAGE_COLUMN in p.column_names
                    else pa.nulls(p.num_rows, pa.string())
                )
                ids = p.column("run_id").cast(pa.string())
                pieces.append(pa.table({"run_id": ids, LINEAGE_COLUMN: lin}))
            table = pa.concat_tables(pieces)
            if len(pieces) == 2:  # base rows whose run is in the delta are superseded
                table = table.filter(pa.array(live_mask(pieces[0], pieces[1])))
            self._table = table
        return self._table

    def cells(self, mask: Any) -> list[_Cell]:
        t = self.table().filter(mask)
        dec = msgspec.json.Decoder(_Cell)
        out = []
        for v in t.column(LINEAGE_COLUMN).to_pylist():
            if v is None:
                continue
            try:
                out.append(dec.decode(v))
            except msgspec.DecodeError:
                continue
        return out

    def containing(self, text: str) -> list[_Cell]:
        """The cells holding ``text`` (anywhere)."""
        pc = query_libs().pc
        col = self.table().column(LINEAGE_COLUMN)
        return self.cells(pc.fill_null(pc.match_substring(col, text), False))

    def producers(self, digests: set[str]) -> set[str]:
        """The runs that logged an artifact with one of these content hashes, not empty."""
        pc = query_libs().pc
        col = self.table().column(LINEAGE_COLUMN)
        mask = None
        for d in sorted(digests):
            if _SAFE_DIGEST.match(d):  # after the "artifacts" key: not a run that read it
                pattern = r'"artifacts":\[.*"digest":"' + d.replace("-", r"\-") + '"'
                hit = pc.match_substring_regex(col, pattern)
            else:
                hit = pc.match_substring(col, msgspec.json.encode(d).decode())
            hit = pc.fill_null(hit, False)
            mask = hit if mask is None else pc.or_(mask, hit)
        if mask is None:
            return set()
        return {
            c.run_id
            for c in self.cells(mask)
            if any(a.digest in digests and a.size != 0 for a in c.artifacts)
        }


def _source(i: InputRef, promos: dict[tuple[str, int], Any]) -> tuple[str, str]:
    """Where an input comes from, as ``lineage.graph`` decides it: ("run", producing run id),
    ("none", "") for a promoted version not in the store, or ("dataset", digest)."""
    if i.kind == "artifact" and i.promoted:
        name, _, ver = i.promoted.partition("@")
        if ver[1:].isdigit():
            p = promos.get((name, int(ver[1:])))
            return ("run", p.run_id) if p is not None else ("none", "")
    elif i.kind == "artifact" and i.run_id and i.artifact:
        return "run", i.run_id
    return "dataset", i.digest


def ancestry(
    store: Store,
    recs: list[RunRecord],
    cells: Callable[[], LineageCells],
    promotions: list[Any],
    targets: Iterable[str] = (),
) -> list[RunRecord]:
    """``recs`` and the records of every run upstream of them (each once). ``cells()``: the
    index's lineage cells, asked only when a dataset is upstream; ``targets``: the retired node
    ids (those that no longer exist bring the runs that consumed them)."""
    promos = {(e.promotion.name, e.promotion.version): e.promotion for e in promotions}
    by_digest: dict[str, list[str]] = {}
    for p in promos.values():
        by_digest.setdefault(p.digest, []).append(p.run_id)
    out = {r.run_id: r for r in recs}
    todo = list(recs)
    seen_digests: set[str] = set()
    ghosts_done = False
    while todo:
        want: set[str] = set()
        digests: set[str] = set()
        for r in todo:
            for i in r.inputs:
                kind, key = _source(i, promos)
                if kind == "run":
                    want.add(key)
                elif kind == "dataset" and i.size != 0 and key not in seen_digests:
                    digests.add(key)
        if digests:
            seen_digests |= digests
            for d in digests:
                want.update(by_digest.get(d, []))
            want |= cells().producers(digests)
            if not ghosts_done:
                ghosts_done = True
                want |= _ghost_consumers(store, cells, promos, targets)
        todo = []
        for rid in sorted(want - set(out)):
            rec = read_run(store, rid)
            if rec is not None:
                out[rid] = rec
                todo.append(rec)
    return list(out.values())


def _ghost_consumers(
    store: Store,
    cells: Callable[[], LineageCells],
    promos: dict[tuple[str, int], Any],
    targets: Iterable[str],
) -> set[str]:
    """The runs that consumed a retired artifact or promoted version that no longer exists."""
    out: set[str] = set()
    for t in targets:
        kind, _, rest = t.partition(":")
        if kind == "artifact":
            rid, _, name = rest.partition(":")
            rec = read_run(store, rid)
            if rec is not None and any(artifact_node(rid, a.name) == t for a in rec.artifacts):
                continue
            found = cells().containing(msgspec.json.encode(rid).decode())
            out |= {
                c.run_id for c in found if any(i.run_id == rid and i.artifact for i in c.inputs)
            }
        elif kind == "promoted":
            if any(promoted_node(n, v) == t for n, v in promos):
                continue
            ref = rest
            found = cells().containing(msgspec.json.encode(ref).decode())
            out |= {c.run_id for c in found if any(i.promoted == ref for i in c.inputs)}
    return out


def trust_of(
    store: Store,
    recs: list[RunRecord],
    problems: list[str] | None = None,
    index: Index | None = None,
    index_updated: bool = False,
) -> Trust | None:
    """Trust flags that hold for ``recs`` (and the nodes upstream of them) exactly as in the
    whole store's graph, or None when nothing was ever retired (then nothing is read).
    Unreadable retirement records go to ``problems``. ``index``: the store's index (already
    brought up to date when ``index_updated``); made here when needed."""
    rets = list_retirements(store, problems)
    if not rets:
        return None
    promotions = list_promotions(store)
    holder: list[LineageCells] = []

    def cells() -> LineageCells:
        if not holder:
            holder.append(LineageCells(index or Index(store), updated=index_updated))
        return holder[0]

    try:
        closure = ancestry(store, recs, cells, promotions, [r.target for r in rets])
    except (ConfigError, StoreError):  # no query extra, or no index: the whole graph
        return Trust(build_graph(store, None, promotions), rets)
    return Trust(build_graph(store, closure, promotions), rets)
