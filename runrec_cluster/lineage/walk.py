"""``lineage()``: where a target came from and what was made from it, as the library gives it
(``runrec lineage`` prints the same thing; ``--json`` is ``Lineage.to_json()``)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from runrec_cluster.errors import ConfigError
from runrec_cluster.lineage.graph import Graph, build_graph, resolve_target, tree
from runrec_cluster.lineage.records import list_retirements, load_records
from runrec_cluster.lineage.trust import Trust
from runrec_cluster.store import Store, as_store

DIRECTIONS = ("up", "down")


@dataclass
class Lineage:
    """The walk from every node TARGET resolved to: ``trees[direction]`` holds one nested dict
    per start node (see ``graph.tree``); ``problems`` the records that could not be read."""

    store: str
    target: str
    resolved: list[str]
    depth: int | None
    graph: Graph
    trust: Trust | None
    trees: dict[str, list[dict[str, Any]]]
    problems: list[str] = field(default_factory=list)

    def node_ids(self) -> set[str]:
        """Every node id the trees show."""
        seen: set[str] = set()

        def walk(t: dict[str, Any]) -> None:
            seen.add(t["node"])
            for ch in t["children"]:
                walk(ch)

        for ts in self.trees.values():
            for t in ts:
                walk(t)
        return seen

    def to_json(self) -> dict[str, Any]:
        """The nodes and edges the trees show, and the trees (``runrec lineage --json``)."""
        seen = self.node_ids()
        nodes = {}
        for nid in sorted(seen):
            n = self.graph.nodes[nid].to_json()
            if self.trust is not None and self.trust.of(nid):
                n["flags"] = [f.to_json() for f in self.trust.of(nid)]
            nodes[nid] = n
        return {
            "store": self.store,
            "target": self.target,
            "resolved": self.resolved,
            "depth": self.depth,
            "nodes": nodes,
            "edges": [
                {"from": a, "to": b, "kind": k}
                for (a, b), k in self.graph.edges.items()
                if a in seen and b in seen
            ],
            **self.trees,
        }


def lineage(
    store: Store | str | None,
    target: str,
    *,
    direction: str | None = None,
    depth: int | None = None,
    problems: list[str] | None = None,
) -> Lineage:
    """Where ``target`` came from (``direction="up"``), what was made from it (``"down"``), or
    both (None). ``target``: a run id or unique prefix, a dataset path or content hash, an
    artifact ``RUN:name``, a promoted version ``NAME@vN``. Retired and suspect nodes carry
    flags. Records that cannot be read are left out and described in ``problems`` (a list the
    caller passes, filled even when the call raises) and in ``Lineage.problems``. Raises
    ``LineageError`` when the target matches nothing or is ambiguous, and ``ConfigError`` for an
    unknown direction or a negative depth."""
    if direction is not None and direction not in DIRECTIONS:
        raise ConfigError(f"direction {direction!r} is not 'up', 'down' or None (both).")
    if depth is not None and depth < 0:
        raise ConfigError(f"depth {depth!r} is negative; pass None for the whole walk.")
    s = as_store(store)
    if problems is None:
        problems = []
    records = load_records(s, problems)
    rets = list_retirements(s, problems)
    graph = build_graph(s, records)
    trust = Trust(graph, rets) if rets else None
    starts = resolve_target(s, graph, target)
    directions = [direction] if direction else list(DIRECTIONS)
    trees = {d: [tree(graph, st, d, depth, trust) for st in starts] for d in directions}
    return Lineage(s.root, target, starts, depth, graph, trust, trees, problems)
