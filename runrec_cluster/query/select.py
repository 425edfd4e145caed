"""``query()``: the runs of a store as a DataFrame (or an Arrow table), filtered with the one
expression language (``expr.py``) and read from the derived index (``index.py``)."""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

from runrec_cluster.expr import parse
from runrec_cluster.query.columns import need_query_extra, parse_columns, parse_sort
from runrec_cluster.query.index import Index
from runrec_cluster.store import as_store


def query(
    store: Any = None,
    where: str | None = None,
    columns: str | Sequence[str] | None = None,
    as_arrow: bool = False,
    *,
    sort: str | None = None,
    refresh: bool = True,
    index_dir: str | os.PathLike[str] | None = None,
) -> Any:
    """Runs of ``store`` as a ``pandas.DataFrame`` (one row per run, ``docs/query.md``).

    ``where``: an expression (``expr.py``, ``docs/query.md``), e.g. ``'config.lr == 0.01 and metrics.acc > 0.5'``.
    ``columns``: names to keep (a list or ``"a,b,c"``), in that order; default all.
    ``sort``: ``COLUMN``, ``COLUMN:desc`` or ``-COLUMN`` (highest first); missing values last;
    the column need not be among ``columns``.
    A name in ``where``, ``columns`` or ``sort`` that is not a column of this store is an
    ``ExpressionError`` naming the closest known names (``docs/query.md``); a column some runs
    lack is null in those. ``as_arrow=True`` returns a ``pyarrow.Table`` instead
    (columns of mixed types are JSON text there). ``refresh=False`` reads the index as it is,
    without looking for records written since its last update (faster on huge stores).
    ``index_dir``: keep the index in this local directory instead of ``STORE/index``.

    Reads records as recorded; to ask backends about runs that are still open, run
    ``runrec reconcile`` (or ``runrec ls``) first.
    """
    need_query_extra()
    s = as_store(store)
    expr = parse(where) if where is not None and where.strip() else None
    cols = parse_columns(columns)
    idx = Index(s, index_dir)
    if refresh:
        idx.update()
    return idx.select(expr, cols, as_arrow=as_arrow, sort=parse_sort(sort) if sort else None)
