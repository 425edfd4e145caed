"""Lineage: which data and artifacts made which runs, and what each run's outputs fed.

The graph is built from what is already recorded, at read time; nothing extra is stored:

    dataset ──input──▶ run ──output──▶ artifact ──input──▶ run ──output──▶ artifact ──▶ promoted

Nodes (their ids, as in ``runrec lineage --json``):

- ``run:<run id>``
- ``dataset:<digest>``: an input by content hash (one node per content: a corrected file under
  the same path is another node)
- ``artifact:<run id>:<name>``: an artifact a run logged
- ``promoted:<NAME>@v<N>``: a promoted version (``promote.py``)

(the id rules are in ``refs.py``)

Edges: a dataset or artifact input -> the run that consumed it (``rr.Artifact("RUN:name")`` or
``run.use_input``); a run -> its artifacts; an artifact -> its promoted versions; and, by content,
an artifact or promoted version -> a dataset input with the same content hash (a file someone
passed by path that another run produced).

*Trust* is computed from this graph (``trust.py``): a retired node (``retire.py``) and
everything downstream of it are flagged, from the retirement records, every time it is read.
"""

from __future__ import annotations

import hashlib
import os
import re
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, Protocol

from runrec_cluster.capture.data import DatasetCache, hash_path
from runrec_cluster.capture.inputs import CONTROL_CHARS, parse_artifact_ref
from runrec_cluster.errors import (
    AmbiguousRunId,
    ConfigError,
    LineageError,
    PromotionError,
    RecordNotFound,
    RunrecError,
)
from runrec_cluster.lineage.records import load_records
from runrec_cluster.lineage.refs import artifact_node, dataset_node, promoted_node, run_node
from runrec_cluster.record import InputRef, Promotion, RunRecord
from runrec_cluster.store import Store, codec, fs, layout
from runrec_cluster.store import layout as ll
from runrec_cluster.store.promoted import list_promotions, parse_ref

_DIGEST = re.compile(r"^(blake3|blake3-tree|sha256|sha256-tree):([0-9a-f]{6,64})$")


# ---------------------------------------------------------------------------------------------
# The graph
# ---------------------------------------------------------------------------------------------


@dataclass
class Node:
    id: str
    kind: str  # "run", "dataset", "artifact", "promoted"
    label: str = ""
    digest: str | None = None
    paths: list[str] = field(default_factory=list)
    record: RunRecord | None = None
    promotion: Any = None  # promote.Promotion
    info: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"id": self.id, "kind": self.kind, "label": self.label}
        if self.digest:
            out["digest"] = self.digest
        if self.paths:
            out["paths"] = list(self.paths)
        out.update(self.info)
        return out


class Graph:
    """Nodes and directed edges (upstream -> downstream), with the kind of each edge."""

    def __init__(self) -> None:
        self.nodes: dict[str, Node] = {}
        self.down: dict[str, list[str]] = {}
        self.up: dict[str, list[str]] = {}
        self.edges: dict[tuple[str, str], str] = {}

    def node(self, id: str, kind: str, **kw: Any) -> Node:
        n = self.nodes.get(id)
        if n is None:
            n = self.nodes[id] = Node(id, kind, **kw)
        return n

    def add_edge(self, a: str, b: str, kind: str) -> None:
        if a == b or (a, b) in self.edges:
            return
        self.edges[(a, b)] = kind
        self.down.setdefault(a, []).append(b)
        self.up.setdefault(b, []).append(a)

    def neighbours(self, id: str, direction: str) -> list[str]:
        return (self.down if direction == "down" else self.up).get(id, [])

    def reach(
        self, start: Iterable[str], direction: str, depth: int | None = None
    ) -> dict[str, int]:
        """Every node reachable from ``start`` (included, at distance 0), with its distance."""
        seen: dict[str, int] = {}
        queue = deque()
        for s in start:
            if s not in seen:
                seen[s] = 0
                queue.append(s)
        while queue:
            cur = queue.popleft()
            if depth is not None and seen[cur] >= depth:
                continue
            for nxt in self.neighbours(cur, direction):
                if nxt not in seen:
                    seen[nxt] = seen[cur] + 1
                    queue.append(nxt)
        return seen


def _short(run_id: str) -> str:
    return run_id[:12]


def build_graph(
    store: Store, records: list[RunRecord] | None = None, promotions: list[Any] | None = None
) -> Graph:
    """The lineage graph of everything in the store (``records`` / ``promotions``: already
    read, else read here)."""
    recs = load_records(store) if records is None else records
    g = Graph()
    for rec in recs:
        _add_run(g, rec)
    for e in list_promotions(store) if promotions is None else promotions:
        if e.promotion is not None:
            _add_promotion(g, e.promotion, e.path)
    for rec in recs:
        me = run_node(rec.run_id)
        for i in rec.inputs:
            g.add_edge(_input_source(g, i), me, "input")
    _link_same_content(g)
    return g


def _add_run(g: Graph, rec: RunRecord) -> None:
    """A run and the artifacts it logged."""
    g.node(
        run_node(rec.run_id),
        "run",
        label=f"{_short(rec.run_id)} {rec.name}".rstrip(),
        record=rec,
        info={
            "run_id": rec.run_id,
            "name": rec.name,
            "state": rec.state.value,
            "cause": rec.failure.cause.value if rec.failure else None,
        },
    )
    for a in rec.artifacts:
        n = g.node(
            artifact_node(rec.run_id, a.name), "artifact", label=f"{_short(rec.run_id)}:{a.name}"
        )
        n.digest, n.paths = a.digest, [a.path]
        n.info = {"run_id": rec.run_id, "name": a.name, "size": a.size}
        g.add_edge(run_node(rec.run_id), n.id, "output")


def _add_promotion(g: Graph, p: Promotion, version_dir: str) -> None:
    """A promoted version, after the artifact it was copied from."""
    n = g.node(promoted_node(p.name, p.version), "promoted", label=p.ref, promotion=p)
    n.digest = p.digest
    n.paths = [os.path.join(version_dir, p.files)]
    n.info = {"name": p.name, "version": p.version, "approved_by": p.approved_by}
    src = artifact_node(p.run_id, p.artifact)
    if src not in g.nodes:
        g.node(src, "artifact", label=f"{_short(p.run_id)}:{p.artifact} (run not in store)")
    g.add_edge(src, n.id, "promoted")


def _input_source(g: Graph, i: InputRef) -> str:
    """The node an input of a run comes from: a promoted version, an artifact of a run, or a
    dataset (by content); made when the graph does not have it yet."""
    src = None
    if i.kind == "artifact" and i.promoted:
        name, _, ver = i.promoted.partition("@")
        src = promoted_node(name, int(ver[1:])) if ver[1:].isdigit() else None
        if src and src not in g.nodes:
            g.node(src, "promoted", label=f"{i.promoted} (not in store)", digest=i.digest)
    elif i.kind == "artifact" and i.run_id and i.artifact:
        src = artifact_node(i.run_id, i.artifact)
        if src not in g.nodes:
            g.node(
                src,
                "artifact",
                label=f"{_short(i.run_id)}:{i.artifact} (run not in store)",
                digest=i.digest,
                paths=[i.path],
            )
    if src is not None:
        return src
    src = dataset_node(i.digest)
    n = g.node(src, "dataset", digest=i.digest)
    if i.path not in n.paths:
        n.paths.append(i.path)
    n.label = " | ".join(n.paths)
    if i.version:
        n.info.setdefault("versions", [])
        if i.version not in n.info["versions"]:
            n.info["versions"].append(i.version)
    n.info.update(size=i.size, file_count=i.file_count)
    return src


def _link_same_content(g: Graph) -> None:
    """The same content under another name: a produced file that another run read by path."""
    producers: dict[str, list[str]] = {}
    for n in g.nodes.values():
        if n.kind in ("artifact", "promoted") and n.digest and n.info.get("size", 1) != 0:
            producers.setdefault(n.digest, []).append(n.id)
    for n in list(g.nodes.values()):
        if n.kind == "dataset" and n.digest in producers and n.info.get("size", 1) != 0:
            for p in producers[n.digest]:
                g.add_edge(p, n.id, "same content")


# ---------------------------------------------------------------------------------------------
# Targets: what a person types
# ---------------------------------------------------------------------------------------------


def resolve_target(store: Store, graph: Graph, text: str) -> list[str]:
    """Node ids for TARGET: a run id or prefix, ``RUN:name``, ``NAME@vN``, a content hash
    (``sha256:...``, a unique prefix of 6+ hex digits works) or a dataset path. A dataset path
    recorded with several contents gives several nodes (one per content)."""
    if not isinstance(text, str) or not text.strip() or CONTROL_CHARS.search(text):
        raise LineageError(f"{text!r} is not a lineage target; see `runrec lineage --help`.")
    t = text.strip()
    m = _DIGEST.match(t.lower())
    if m:
        return _by_digest(graph, t.lower(), store)
    run, colon, _ = t.partition(":")
    if colon and layout.PREFIX_RE.match(run.lower()) and not os.path.exists(t):
        p = parse_artifact_ref(t)
        try:
            rid = store.resolve(p.run or "")
        except (RecordNotFound, AmbiguousRunId, ConfigError) as exc:
            raise LineageError(f"{t!r}: {exc}") from None
        nid = artifact_node(rid, p.name or "")
        if nid not in graph.nodes:
            rec = graph.nodes.get(run_node(rid))
            have = ", ".join(
                repr(a.name) for a in (rec.record.artifacts if rec and rec.record else [])
            )
            raise LineageError(
                f"{t!r}: run {rid} recorded no artifact named {p.name!r} "
                f"(its artifacts: {have or 'none'})."
            )
        return [nid]
    if "@" in t and "/" not in t and not os.path.exists(t):
        try:
            name, version = parse_ref(t)
        except PromotionError as exc:
            raise LineageError(str(exc)) from None
        found = sorted(
            (
                n
                for n in graph.nodes.values()
                if n.kind == "promoted" and n.promotion is not None and n.promotion.name == name
            ),
            key=lambda n: n.promotion.version,
        )
        if version is not None:
            found = [n for n in found if n.promotion.version == version]
        elif found:
            found = found[-1:]
        if not found:
            raise LineageError(
                f"{t!r}: no such promoted version in {store.root}. List them with `runrec promoted`."
            )
        return [n.id for n in found]
    as_path = _by_path(graph, t, store)
    as_run: list[str] = []
    if "/" not in t and layout.PREFIX_RE.match(t.lower()):
        try:
            as_run = [run_node(store.resolve(t))]
        except RecordNotFound:
            as_run = []
        except AmbiguousRunId as exc:
            if not as_path:
                raise LineageError(str(exc)) from None
    if as_path and as_run:
        raise LineageError(
            f"{t!r} is both a dataset path and a run id prefix. Write ./{t} for the path, or "
            "more characters of the run id."
        )
    found_ids = as_path or as_run
    if not found_ids:
        hint = f" (a promoted name is {ll.NAME_RULE})" if "@" in t else ""
        raise LineageError(
            f"{t!r} matches no run, dataset path, content hash, artifact (RUN:name) or promoted "
            f"version (NAME@vN){hint} in {store.root}. List runs with `runrec ls`, promoted "
            "versions with `runrec promoted`."
        )
    return found_ids


def _by_digest(graph: Graph, digest: str, store: Store) -> list[str]:
    kind, _, hexpart = digest.partition(":")
    full = len(hexpart) == 64
    hits = [
        n
        for n in graph.nodes.values()
        if n.digest and (n.digest == digest if full else n.digest.startswith(digest))
    ]
    if not hits:
        raise LineageError(
            f"no dataset, artifact or promoted version in {store.root} has content hash {digest}."
        )
    digests = sorted({n.digest for n in hits if n.digest})
    if len(digests) > 1:
        raise LineageError(
            f"content hash prefix {digest} matches {len(digests)} contents ("
            + ", ".join(d[:24] + "…" for d in digests[:5])
            + "). Give more digits."
        )
    datasets = [n.id for n in hits if n.kind == "dataset"]
    return datasets or sorted(n.id for n in hits)


def _by_path(graph: Graph, text: str, store: Store) -> list[str]:
    full = os.path.abspath(os.path.expanduser(text))
    ids = [n.id for n in graph.nodes.values() if n.kind == "dataset" and full in n.paths]
    if not ids:
        ids = [n.id for n in graph.nodes.values() if n.kind == "artifact" and full in n.paths]
    if os.path.exists(full):  # the file's content now, maybe recorded under another path
        digest = _current_digest(store, full)
        for n in graph.nodes.values():
            if digest and n.digest == digest and n.id not in ids and n.kind == "dataset":
                ids.append(n.id)
    return ids


def _current_digest(store: Store, full: str) -> str | None:
    """The content hash of a path now, using the store's hash cache without writing anything."""
    cache_file = layout.dataset_cache_path(store.root, hashlib.sha256(full.encode()).hexdigest())
    try:
        cache = codec.decode(fs.read_bytes(cache_file), DatasetCache, cache_file)
    except Exception:  # no cache, or a broken one: hash it all
        cache = None
    try:
        res, _ = hash_path(full, cache=cache)
    except RunrecError:
        return None
    return res.digest


def resolve_one(store: Store, graph: Graph, text: str, *, what: str = "use") -> str:
    """Exactly one node for TARGET, or ``LineageError`` listing the candidates."""
    ids = resolve_target(store, graph, text)
    if len(ids) == 1:
        return ids[0]
    lines = []
    for i in ids:
        n = graph.nodes[i]
        users = [graph.nodes[r].label for r in graph.neighbours(i, "down")][:3]
        lines.append(f"{n.digest or i} ({', '.join(users) or 'no runs'})")
    raise LineageError(
        f"{text!r} names {len(ids)} things to {what}: "
        + "; ".join(lines)
        + ". Give the content hash (blake3:...) of the one you mean."
    )


# ---------------------------------------------------------------------------------------------
# Walking: the tree a person reads, the JSON a tool reads
# ---------------------------------------------------------------------------------------------


class FlagSource(Protocol):
    """What ``tree`` needs of trust flags (``lineage.trust.Trust``)."""

    def of(self, node_id: str) -> list[Any]: ...


def tree(
    graph: Graph,
    start: str,
    direction: str,
    depth: int | None = None,
    trust: FlagSource | None = None,
) -> dict[str, Any]:
    """A nested dict from ``start``: each node once in full; a node met again is marked
    ``repeat`` (the graph is a DAG, shared parts are not repeated); ``more`` when ``depth``
    stopped the walk."""
    expanded: set[str] = set()

    def walk(nid: str, level: int, edge: str | None, path: frozenset[str]) -> dict[str, Any]:
        out: dict[str, Any] = {"node": nid, "edge": edge, "children": []}
        if trust is not None and trust.of(nid):
            out["flags"] = [f.to_json() for f in trust.of(nid)]
        nexts = graph.neighbours(nid, direction)
        if nid in expanded or nid in path:
            out["repeat"] = bool(nexts)
            return out
        expanded.add(nid)
        if depth is not None and level >= depth:
            out["more"] = len(nexts)
            return out
        for nxt in nexts:
            e = graph.edges.get((nid, nxt) if direction == "down" else (nxt, nid), "")
            out["children"].append(walk(nxt, level + 1, e, path | {nid}))
        return out

    return walk(start, 0, None, frozenset())
