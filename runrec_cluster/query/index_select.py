"""Querying the derived index (``index.py``): which columns a query reads, the expression over
the base and delta tables side by side, the trust flags, and the projection (Arrow or pandas).

The index file is compressed (zstd, per column): ``needed_columns`` names the columns a query
needs, and only those are read and decompressed; a query without ``columns`` reads them all.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import msgspec

from runrec_cluster.expr import Expr
from runrec_cluster.lineage.records import list_retirements
from runrec_cluster.lineage.refs import run_node
from runrec_cluster.lineage.trust import trust_for
from runrec_cluster.query.columns import (
    LINEAGE_COLUMN,
    TRUST_COLUMNS,
    ColumnNames,
    order_columns,
    query_libs,
    sort_order,
)
from runrec_cluster.query.index_table import (
    column_values,
    concat,
    join_columns,
    json_columns,
    live_mask,
)
from runrec_cluster.record import RunRecord
from runrec_cluster.store import Store

TRUST_INPUTS = frozenset({LINEAGE_COLUMN, "run_id", "name", "state"})  # what the flags are from
NAMES_KEY = "_names"  # in a table's metadata as read: every column of the file (not stored)


def needed_columns(
    expr: Expr | None, columns: list[str] | None, sort: tuple[str, bool] | None
) -> set[str] | None:
    """The index columns a query reads (None: every column): the expression's, the sort key,
    the asked columns, and the lineage column when a trust flag is asked. The run id only
    when one of those names it (``Index.select`` adds it where the base and the delta must be
    matched by it), or when nothing else is read (the row count comes from a column)."""
    if columns is None:
        return None
    asked = [*(expr.columns if expr else ()), *(sort[:1] if sort else ()), *columns]
    want = set(asked) or {"run_id"}
    if any(c in TRUST_COLUMNS for c in asked):
        want |= TRUST_INPUTS
    return want


def select_rows(
    store: Store,
    parts: tuple[Any, dict[str, Any], Any, dict[str, Any] | None],
    expr: Expr | None,
    columns: list[str] | None,
    as_arrow: bool,
    sort: tuple[str, bool] | None,
) -> Any:
    """Rows of the index ``parts`` (``Index.load_parts``) matching ``expr``, with ``columns``
    (default all), ordered by ``sort`` (column, descending)."""
    libs = query_libs()
    # the base and the delta are evaluated apart (no copy of the base); ``live`` hides the
    # base rows the delta supersedes; only the selected rows of each are put together
    base, base_meta, delta, _ = parts
    pieces = [base] if delta is None or not delta.num_rows else [base, delta]
    superseded = (parts[3] or {}).get("superseded")
    live = live_mask(base, delta, superseded) if len(pieces) == 2 else None
    n = sum(p.num_rows for p in pieces)
    present = set(base_meta.get(NAMES_KEY, base.column_names))
    present |= {c for p in pieces[1:] for c in p.column_names}
    names = ColumnNames(present, has_runs=n > 0)
    names.check(expr, columns, sort[0] if sort else None)
    asked = [*(expr.columns if expr else ()), *(sort[:1] if sort else ()), *(columns or ())]
    need_trust = columns is None or any(c in TRUST_COLUMNS for c in asked)
    trust = _trust_of(store, pieces) if need_trust else None
    mask = None
    if expr is not None:
        mask = expr.mask(_column_getter(pieces, trust, n), n)
        if live is not None:
            mask = mask & live
    elif live is not None:
        mask = live
    table, idx = base, None
    if mask is not None:
        nb = base.num_rows
        chosen = [base.filter(libs.pa.array(mask[:nb]))]
        if len(pieces) == 2:
            chosen.append(delta.filter(libs.pa.array(mask[nb:])))
        table = chosen[0] if len(chosen) == 1 else concat(chosen[0], chosen[1])
        idx = libs.np.flatnonzero(mask)
    return _project(table, idx, columns, trust, n, as_arrow, sort)


def _trust_of(store: Store, pieces: list[Any]) -> dict[str, Any] | None:
    """retired / suspect arrays over the rows of every piece, or None when nothing was ever
    retired."""
    per = [_trust(store, p) for p in pieces]
    found = [t for t in per if t is not None]
    if len(found) != len(per):
        return None
    return {k: query_libs().np.concatenate([t[k] for t in found]) for k in TRUST_COLUMNS}


def _trust(store: Store, table: Any) -> dict[str, Any] | None:
    """retired / suspect arrays for every row, or None when nothing was ever retired.

    Only runs with inputs or artifacts (a ``_lineage`` cell) can be downstream of anything;
    a run without them is retired when a retirement names it and never suspect. So the graph
    is built from the runs with a cell and the retired runs, not from every row."""
    libs = query_libs()
    rets = list_retirements(store)
    if not rets:
        return None
    targets = {r.target for r in rets}
    cols = [table.column(c).to_pylist() for c in ("run_id", "name", "state", LINEAGE_COLUMN)]
    recs = [
        msgspec.json.decode(v.encode(), type=RunRecord, strict=False)
        if v is not None
        else msgspec.convert({"run_id": r, "name": nm or "", "state": s}, RunRecord, strict=False)
        for r, nm, s, v in zip(*cols, strict=True)
        if v is not None or run_node(r) in targets
    ]
    trust = trust_for(store, recs)
    if trust is None:
        return None
    prefix = run_node("")
    flagged: dict[str, list[str]] = {"retired": [], "suspect": []}
    for nid, flags in trust.flags.items():
        if not nid.startswith(prefix):
            continue
        for kind in {f.kind for f in flags}:
            flagged[kind].append(nid[len(prefix) :])
    ids = table.column("run_id")
    return {
        kind: libs.pc.is_in(ids, value_set=libs.pa.array(found, libs.pa.string())).to_numpy(
            zero_copy_only=False
        )
        for kind, found in flagged.items()
    }


def _column_getter(pieces: list[Any], trust: dict[str, Any] | None, n: int) -> Callable[[str], Any]:
    """``get(name)`` for ``Expr.mask``: a column over the rows of every piece, as numpy."""
    cache: dict[str, Any] = {}

    def get(name: str) -> Any:
        if name not in cache:
            vals = [
                column_values(p, name, json_columns(p), trust, p.num_rows)
                if name not in TRUST_COLUMNS
                else column_values(p, name, set(), trust, n)
                for p in pieces
            ]
            cache[name] = vals[0] if len(vals) == 1 or name in TRUST_COLUMNS else join_columns(vals)
        return cache[name]

    return get


def _project(
    table: Any,
    idx: Any,
    columns: list[str] | None,
    trust: dict[str, Any] | None,
    n: int,
    as_arrow: bool,
    sort: tuple[str, bool] | None = None,
) -> Any:
    """The selected rows with ``columns`` (default all, trust flags included), as an Arrow
    table or a DataFrame (JSON text columns decoded), ordered by ``sort``."""
    libs = query_libs()
    pa, np = libs.pa, libs.np
    jcols = json_columns(table)
    pos = {c: i for i, c in enumerate(table.column_names)}
    names = columns if columns is not None else order_columns([*pos, *TRUST_COLUMNS])
    arrays, fields = [], []
    for c in names:
        if c in TRUST_COLUMNS:
            vals = trust[c] if trust is not None else np.zeros(n, dtype=bool)
            arr = pa.array(vals if idx is None else vals[idx], pa.bool_())
        elif c in pos:
            arr = table.column(pos[c])
        else:
            arr = pa.nulls(table.num_rows)
        arrays.append(arr)
        fields.append(pa.field(c, arr.type))
    out = pa.Table.from_arrays(arrays, schema=pa.schema(fields)) if arrays else table.select([])
    if sort is not None:
        key, desc = sort
        if key in TRUST_COLUMNS and trust is not None:
            values = (trust[key] if idx is None else trust[key][idx]).tolist()
        elif key in pos:
            values = table.column(pos[key]).to_pylist()
            if key in jcols:
                values = [json.loads(v) if isinstance(v, str) else None for v in values]
        else:  # no run has it (a trust flag when nothing was ever retired): the order stays
            values = [None] * table.num_rows
        out = out.take(sort_order(values, desc))
    if as_arrow:
        return out
    df = out.to_pandas()
    for c in names:
        if c in jcols and c in df.columns:
            df[c] = [json.loads(v) if isinstance(v, str) else None for v in df[c]]
    return df
