"""Lineage: which data and artifacts made which runs, what each run's outputs fed, and what a
person concluded about them; all computed from the records at read time.

    refs      node ids (run:, dataset:, artifact:, promoted:)
    records   what lineage reads: every run record, every retirement record
    graph     the graph, TARGET resolution, the tree a person reads
    trust     retired and suspect nodes, from the retirement records and the graph
    annotate  verdicts on runs; the one rule of a negative result
    criteria  promotion criteria: the --where expression language over a run's metrics
    promote   promote a run's artifact to a read-only, named version; verify it
    retire    record that a dataset, run, artifact or promoted version is no longer trusted

The functions ``promote``, ``retire`` and ``annotate`` share their modules' names, so they are
not bound here (that would hide the modules ``lineage.promote``, ``lineage.retire`` and
``lineage.annotate``): import them from their modules, or from ``runrec_cluster``.
"""

from __future__ import annotations

from runrec_cluster.lineage.annotate import is_negative, negatives
from runrec_cluster.lineage.criteria import CriteriaSyntaxError
from runrec_cluster.lineage.graph import Graph, build_graph, resolve_target, tree
from runrec_cluster.lineage.promote import verify
from runrec_cluster.lineage.trust import Trust, trust_for
from runrec_cluster.store.promoted import list_promotions

__all__ = [
    "CriteriaSyntaxError",
    "Graph",
    "Trust",
    "build_graph",
    "is_negative",
    "list_promotions",
    "negatives",
    "resolve_target",
    "tree",
    "trust_for",
    "verify",
]
