"""The index's tables: flat rows to Arrow and back to numpy for the expression, and the base
and delta files put side by side (``index.py``). pyarrow and numpy come from
``columns.query_libs`` (the query extra), imported on first use."""

from __future__ import annotations

import json
from typing import Any

from runrec_cluster.query.columns import TRUST_COLUMNS, lineage_part, query_libs
from runrec_cluster.record import RunRecord


def lineage_cell(rec: RunRecord) -> str | None:
    """A run's ``_lineage`` cell (``columns.lineage_part``: what the lineage graph reads), or
    None when the run has no inputs and no artifacts: then its run id, name and state, which
    have their own columns, are all there is (``index_select``). Most runs: ~16 bytes a run
    less in the index."""
    if not rec.inputs and not rec.artifacts:
        return None
    return lineage_part(rec)


def run_ids(table: Any) -> set[str]:
    if table is None or not table.num_rows or "run_id" not in table.column_names:
        return set()
    return set(table.column("run_id").to_pylist())


def without(table: Any, ids: set[str]) -> Any:
    """``table`` less the rows of these run ids."""
    pa, pc = query_libs().pa, query_libs().pc
    if not ids or not table.num_rows or "run_id" not in table.column_names:
        return table
    drop = pa.array(sorted(ids), pa.string())
    return table.filter(pc.invert(pc.is_in(table.column("run_id"), value_set=drop)))


def _superseded(base: Any, delta: Any) -> Any:
    """A numpy mask of the base rows whose run is in the delta (none when the base has no run
    ids read)."""
    np, pc = query_libs().np, query_libs().pc
    if not base.num_rows or not delta.num_rows or "run_id" not in base.column_names:
        return np.zeros(base.num_rows, bool)
    hit = pc.is_in(base.column("run_id"), value_set=delta.column("run_id").combine_chunks())
    return hit.to_numpy(zero_copy_only=False)


def superseded_rows(base: Any, delta: Any) -> list[int]:
    """The positions of the base rows whose run is in the delta (kept in the delta's metadata:
    a query then needs no run id of the base to hide them)."""
    return [int(i) for i in query_libs().np.flatnonzero(_superseded(base, delta))]


def live_mask(base: Any, delta: Any, superseded: list[int] | None = None) -> Any:
    """True for the rows that count in base-then-delta order: a base row whose run is in the
    delta is superseded. ``superseded``: those base rows' positions, when known (the delta's
    metadata); otherwise found from the run ids."""
    np = query_libs().np
    if superseded is None:
        hit = _superseded(base, delta)
    else:
        hit = np.zeros(base.num_rows, bool)
        hit[np.asarray(superseded, dtype=np.int64)] = True
    return np.concatenate([np.logical_not(hit), np.ones(delta.num_rows, bool)])


def join_columns(parts: list[Any]) -> Any:
    """Column values of the base then the delta, as one numpy array for the expression."""
    np = query_libs().np
    if all(p.dtype == parts[0].dtype for p in parts):
        return np.concatenate(parts)
    return np.concatenate([p.astype(object) for p in parts])


def live_rows(base: Any, delta: Any) -> int:
    if base is None:
        return 0
    if delta is None or not delta.num_rows:
        return base.num_rows
    return int(live_mask(base, delta).sum())


def combine(
    base: Any, base_meta: dict[str, Any], delta: Any, delta_meta: dict[str, Any] | None
) -> tuple[Any, dict[str, Any], Any]:
    """(table, metadata, live): the base and the delta's rows one after the other (no copy of
    the base's columns when their types agree), and a numpy mask of the rows that count (None
    when there is no delta): a base row whose run is in the delta is superseded."""
    if delta is None or not delta.num_columns or not delta.num_rows:
        return base, base_meta, None
    table = concat(base, delta)
    live = live_mask(base, delta)
    meta = dict(delta_meta or {})
    meta["json_columns"] = sorted(json_columns(table))
    return table, meta, live


# ---------------------------------------------------------------------------------------------
# Rows to Arrow, and back to numpy for the expression
# ---------------------------------------------------------------------------------------------


def _kind(values: list[Any]) -> str:
    kinds = set()
    for v in values:
        if v is None:
            continue
        if isinstance(v, bool):
            kinds.add("bool")
        elif isinstance(v, int):
            kinds.add("int" if -(2**63) <= v < 2**63 else "json")
        elif isinstance(v, float):
            kinds.add("float")
        elif isinstance(v, str):
            kinds.add("str")
        else:
            kinds.add("json")
        if len(kinds) > 2:
            return "json"
    if not kinds:
        return "null"
    if len(kinds) == 1:
        return kinds.pop()
    if kinds == {"int", "float"}:
        return "float"
    return "json"


def _json(v: Any) -> str | None:
    if v is None:
        return None
    return json.dumps(v, sort_keys=True, default=str, ensure_ascii=False)


def rows_to_table(rows: list[dict[str, Any]]) -> Any:
    """An Arrow table from flat rows; a column whose values have mixed types (or lists,
    dicts) is stored as JSON text and named in the metadata's ``json_columns``."""
    pa = query_libs().pa
    names: dict[str, None] = {}
    for r in rows:
        for k in r:
            names.setdefault(k, None)
    arrays, fields, jcols = [], [], []
    for name in names:
        vals = [r.get(name) for r in rows]
        arr = _plain_array(vals)
        if arr is not None:  # the usual case: one plain type, inferred by pyarrow (fast)
            arrays.append(arr)
            fields.append(pa.field(name, arr.type))
            continue
        kind = _kind(vals)
        if kind == "json":
            arr = pa.array([_json(v) for v in vals], pa.string())
            jcols.append(name)
        else:
            typ = {
                "null": pa.null(),
                "bool": pa.bool_(),
                "int": pa.int64(),
                "float": pa.float64(),
                "str": pa.string(),
            }[kind]
            arr = pa.array(vals, typ)
        arrays.append(arr)
        fields.append(pa.field(name, arr.type, metadata={b"json": b"1"} if name in jcols else None))
    return pa.Table.from_arrays(arrays, schema=pa.schema(fields))


def _plain_array(vals: list[Any]) -> Any:
    """``vals`` as an Arrow array when pyarrow infers one of the plain types ``_kind`` would
    choose (null, bool, int64, float64, string) with the same values; None otherwise (mixed
    types, lists, dicts, huge ints: ``_kind`` decides, slowly). pyarrow turns bools mixed with
    floats into numbers, so a number column with a bool in it is left to ``_kind`` (JSON)."""
    pa = query_libs().pa
    try:
        arr = pa.array(vals)
    except (pa.ArrowInvalid, pa.ArrowTypeError, OverflowError, TypeError, ValueError):
        return None
    t = arr.type
    if pa.types.is_floating(t) or pa.types.is_integer(t):
        if t != pa.float64() and t != pa.int64():
            return None
        if any(type(v) is bool for v in vals):
            return None
        return arr
    if t == pa.string() or t == pa.bool_() or t == pa.null():
        return arr
    return None


def json_columns(table: Any) -> set[str]:
    return {f.name for f in table.schema if f.metadata and f.metadata.get(b"json") == b"1"}


def _as_json_column(col: Any, was_json: bool) -> Any:
    pa = query_libs().pa
    if was_json:
        return col
    return pa.array([_json(v) for v in col.to_pylist()], pa.string())


def concat(a: Any, b: Any) -> Any:
    """Rows of ``a`` then ``b``; a column typed differently in the two is unified (null to the
    other type, int with float to float, anything else to JSON text)."""
    pa = query_libs().pa
    ja, jb = json_columns(a), json_columns(b)
    # by position, once: ``column_names`` builds a list and ``column(name)`` searches it
    pos_a = {n: i for i, n in enumerate(a.column_names)}
    pos_b = {n: i for i, n in enumerate(b.column_names)}
    names = list(dict.fromkeys([*pos_a, *pos_b]))
    cols_a, cols_b, fields = [], [], []
    for name in names:
        ca = a.column(pos_a[name]) if name in pos_a else None
        cb = b.column(pos_b[name]) if name in pos_b else None
        ta = ca.type if ca is not None else None
        tb = cb.type if cb is not None else None
        is_json = name in ja or name in jb
        if not is_json:
            if ta is None or pa.types.is_null(ta):
                typ = tb
            elif tb is None or pa.types.is_null(tb) or ta == tb:
                typ = ta
            elif {str(ta), str(tb)} <= {"int64", "double"}:
                typ = pa.float64()
            else:
                is_json = True
        if is_json:
            typ = pa.string()
            ca = _as_json_column(ca, name in ja) if ca is not None else None
            cb = _as_json_column(cb, name in jb) if cb is not None else None
        ca = pa.nulls(a.num_rows, typ) if ca is None else (ca if ca.type == typ else ca.cast(typ))
        cb = pa.nulls(b.num_rows, typ) if cb is None else (cb if cb.type == typ else cb.cast(typ))
        cols_a.append(ca)
        cols_b.append(cb)
        fields.append(pa.field(name, typ, metadata={b"json": b"1"} if is_json else None))
    schema = pa.schema(fields)
    ta_ = pa.Table.from_arrays(cols_a, schema=schema)
    tb_ = pa.Table.from_arrays(cols_b, schema=schema)
    return pa.concat_tables([ta_, tb_])


def concat_all(tables: list[Any]) -> Any:
    """The rows of every table in order, as ``concat`` would give them, but tables of one
    schema are put together at once (no column-by-column work per table)."""
    pa = query_libs().pa
    groups: list[list[Any]] = []
    for t in tables:
        if groups and groups[-1][0].schema.equals(t.schema, check_metadata=True):
            groups[-1].append(t)
        else:
            groups.append([t])
    out = None
    for g in groups:
        part = g[0] if len(g) == 1 else pa.concat_tables(g)
        out = part if out is None else concat(out, part)
    return out


def column_values(table: Any, name: str, jcols: set[str], trust: Any, n: int) -> Any:
    """A column as numpy for the expression: float64 (NaN for missing) for numbers, bool for a
    bool column without missing values, object (None for missing) otherwise."""
    np, pa = query_libs().np, query_libs().pa
    if name in TRUST_COLUMNS:
        return trust[name] if trust is not None else np.zeros(n, dtype=bool)
    if table.schema.get_field_index(name) < 0:
        return np.full(n, None, dtype=object)
    col = table.column(name)
    t = col.type
    if name in jcols:
        return np.array(
            [json.loads(v) if v is not None else None for v in col.to_pylist()] + [None],
            dtype=object,
        )[:-1]
    if pa.types.is_integer(t) or pa.types.is_floating(t):
        return col.to_numpy().astype(np.float64, copy=False)
    if pa.types.is_boolean(t) and col.null_count == 0:
        return col.to_numpy()
    if pa.types.is_null(t):
        return np.full(n, None, dtype=object)
    return np.array(col.to_pylist() + [None], dtype=object)[:-1]
