"""A sweep (the runs of one ``map_array``) as a table: which sweep a prefix names, the config
keys that vary, the metric columns; for ``runrec compare`` and ``runrec report``."""

from __future__ import annotations

import json
import os
from typing import Any

from runrec_cluster.errors import ConfigError
from runrec_cluster.query.select import query
from runrec_cluster.store import Store


def sweep_frame(
    store: Store, sweep: str, index_dir: str | os.PathLike[str] | None = None
) -> tuple[str, Any]:
    """(sweep id, DataFrame of its runs ordered by sweep index); ConfigError when no sweep or
    several match the prefix."""
    sw = sweep.strip().lower()
    df = query(store, index_dir=index_dir)
    if df.empty or "sweep_id" not in df.columns:
        raise ConfigError(f"no sweep in store {store.root}. List runs with `runrec ls`.")
    ids = sorted({s for s in df["sweep_id"].dropna() if s.startswith(sw)}) if sw else []
    if not ids:
        raise ConfigError(f"no sweep id starts with {sweep!r} in {store.root}. See `runrec ls`.")
    if len(ids) > 1:
        raise ConfigError(
            f"sweep prefix {sweep!r} matches {len(ids)} sweeps "
            f"({', '.join(i[:14] for i in ids[:5])}). Give more characters."
        )
    sub = df[df["sweep_id"] == ids[0]].copy()
    sub = sub.sort_values(["sweep_index", "run_id"], na_position="last").reset_index(drop=True)
    return ids[0], sub


def int_columns(store: Store, index_dir: str | os.PathLike[str] | None = None) -> set[str]:
    """The columns the query index holds as integers: pandas makes such a column float when a
    run lacks the value (seed ``886812345`` reads ``886812345.0``), the index does not."""
    table = query(store, as_arrow=True, refresh=False, index_dir=index_dir)
    return {f.name for f in table.schema if _is_int_type(f.type)}


def _is_int_type(t: Any) -> bool:
    import pyarrow as pa  # lazy: heavy, and only the query layer needs it

    return bool(pa.types.is_integer(t))


def varied_config(df: Any) -> list[str]:
    """config.* columns whose values differ between the runs."""
    out = []
    for c in df.columns:
        if not c.startswith("config."):
            continue
        vals = {json.dumps(None if isnan(v) else v, sort_keys=True, default=str) for v in df[c]}
        if len(vals) > 1:
            out.append(c)
    return out


def metric_columns(df: Any) -> list[str]:
    """metrics.* columns with a value in at least one run."""
    return [c for c in df.columns if c.startswith("metrics.") and df[c].notna().any()]


def isnan(v: Any) -> bool:
    """A float NaN (a missing value in a DataFrame)."""
    return isinstance(v, float) and v != v
