"""Trust: which nodes are retired, and which are suspect (built on something retired).

Nothing is stored: the flags are computed at read time from the retirement records
(``records.list_retirements``) and the lineage graph, so a run recorded after a retirement on
top of a retired input is suspect too."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from runrec_cluster.lineage.graph import Graph, build_graph
from runrec_cluster.lineage.records import list_retirements
from runrec_cluster.lineage.refs import run_node
from runrec_cluster.record import RunRecord
from runrec_cluster.store import Store


@dataclass(frozen=True)
class Flag:
    """Why a node is not trusted: it was retired itself, or something upstream was."""

    kind: str  # "retired" or "suspect"
    retirement: Any  # retire.Retirement
    via_label: str = ""

    def describe(self) -> str:
        r = self.retirement
        if self.kind == "retired":
            return f"RETIRED ({r.state}: {r.reason}; retirement {r.id})"
        return (
            f"SUSPECT (upstream {self.via_label or r.target} {r.state}: {r.reason}; "
            f"retirement {r.id})"
        )

    def to_json(self) -> dict[str, Any]:
        r = self.retirement
        return {
            "kind": self.kind,
            "retirement_id": r.id,
            "state": r.state,
            "reason": r.reason,
            "retired": r.target,
            "retired_label": r.target_label,
            "superseded_by": r.superseded_by,
            "by": r.by,
            "at": r.at.isoformat(),
        }


class Trust:
    """Flags per node id, from the retirement records and the graph."""

    def __init__(self, graph: Graph, retirements: list[Any]) -> None:
        self.graph = graph
        self.retirements = retirements
        self.flags: dict[str, list[Flag]] = {}
        for r in retirements:
            label = r.target_label or r.target
            self.flags.setdefault(r.target, []).append(Flag("retired", r))
            for nid in graph.reach([r.target], "down"):
                if nid != r.target:
                    self.flags.setdefault(nid, []).append(Flag("suspect", r, label))

    def of(self, node_id: str) -> list[Flag]:
        return self.flags.get(node_id, [])

    def of_run(self, run_id: str) -> list[Flag]:
        return self.of(run_node(run_id))

    def marker(self, node_id: str) -> str:
        fl = self.of(node_id)
        if any(f.kind == "retired" for f in fl):
            return "RETIRED"
        return "SUSPECT" if fl else ""


def trust_for(
    store: Store, records: list[RunRecord] | None = None, problems: list[str] | None = None
) -> Trust | None:
    """The store's trust flags, or None when nothing was ever retired (then nothing is read)."""
    rets = list_retirements(store, problems)
    if not rets:
        return None
    return Trust(build_graph(store, records), rets)


def trust_of_run(store: Store, run_id: str) -> list[Flag]:
    """The flags of one run (empty when it is trusted)."""
    t = trust_for(store)
    return t.of_run(run_id) if t is not None else []
