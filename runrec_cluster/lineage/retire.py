"""Retirement: a dataset, run, artifact or promoted version stops being trusted.

``retire(store, target, state=..., reason=...)`` writes one immutable record to
``STORE/retirements/<id>.msgpack.zst`` and returns everything downstream of the target. Nothing
else is written and nothing is deleted: whether a run, artifact or promoted version is *suspect*
is computed when it is read, from the retirement records and the lineage graph
(``lineage.Trust``), so runs recorded later on top of a retired input are suspect too.
"""

from __future__ import annotations

import socket
from datetime import UTC, datetime

from runrec_cluster.capture.proc import current_user
from runrec_cluster.errors import LineageError
from runrec_cluster.lineage.graph import build_graph, resolve_one
from runrec_cluster.record import Retirement
from runrec_cluster.store import Store, codec, fs, layout
from runrec_cluster.store import layout as ll

STATES = ("superseded", "invalidated", "withdrawn")
MAX_REASON = 4000


def retire(
    store: Store,
    target: str,
    *,
    state: str,
    reason: str,
    superseded_by: str | None = None,
    by: str | None = None,
) -> tuple[Retirement, list[str]]:
    """Record that ``target`` is retired; returns the record and the downstream node ids."""
    if state not in STATES:
        raise LineageError(f"state {state!r} is not one of {', '.join(STATES)}.")
    if not isinstance(reason, str) or not reason.strip():
        raise LineageError(
            "a retirement needs a reason (--reason TEXT): say why it stopped being trusted."
        )
    if len(reason) > MAX_REASON:
        raise LineageError(f"the reason is longer than {MAX_REASON} characters; shorten it.")
    if superseded_by is not None and state != "superseded":
        raise LineageError(f"--superseded-by goes with --state superseded, not {state!r}.")
    graph = build_graph(store)
    node = resolve_one(store, graph, target, what="retire")
    succ = None
    if superseded_by is not None:
        succ = resolve_one(store, graph, superseded_by, what="name as the successor")
        if succ == node:
            raise LineageError(f"{target!r} cannot supersede itself.")
    downstream = [n for n in graph.reach([node], "down") if n != node]
    rec = Retirement(
        id=layout.new_id(),
        target=node,
        target_label=graph.nodes[node].label if node in graph.nodes else target,
        state=state,  # type: ignore[arg-type]
        reason=reason.strip(),
        superseded_by=succ,
        by=by or current_user(),
        host=socket.gethostname(),
        at=datetime.now(UTC),
        downstream=downstream,
    )
    d = ll.retirements_dir(store.root, LineageError)
    fs.makedirs(d)
    ll.inside(store.root, d, LineageError)
    fs.write_atomic(
        ll.retirement_path(store.root, rec.id, LineageError), codec.encode(rec), fsync=store.fsync
    )
    return rec, downstream
