"""``runrec table / compare / index / report``: the flat run view, sweeps and the query index.

A thin layer over ``runrec_cluster.query`` and ``views.report``: pyarrow (the ``query`` extra)
is imported only for Parquet output, and a missing extra is a one-line error naming the install.
"""

from __future__ import annotations

import json
import math
import sys
from types import ModuleType
from typing import Any

import click

from runrec_cluster.cli._common import (
    cli,
    console,
    esc,
    open_store,
    query_options,
    store_option,
    warn,
)
from runrec_cluster.cli._table import print_rows
from runrec_cluster.errors import ConfigError
from runrec_cluster.query.columns import need_query_extra, parse_sort, sort_key
from runrec_cluster.query.index import Index
from runrec_cluster.query.select import query
from runrec_cluster.query.sweeps import isnan, metric_columns, sweep_frame, varied_config
from runrec_cluster.store.codec import strict_document
from runrec_cluster.views.report import sweep_report

INDEX_DIR_HELP = (
    "Keep the query index in this local directory instead of STORE/index (for a store on NFS; "
    "default: $RUNREC_INDEX_DIR)."
)


def _index_opt(f: Any) -> Any:
    return click.option("--index-dir", default=None, metavar="DIR", help=INDEX_DIR_HELP)(f)


def _pyarrow() -> tuple[ModuleType, ModuleType]:
    """``pyarrow`` and ``pyarrow.parquet``, imported only for Parquet output."""
    import pyarrow as pa  # optional heavy dependency: pyarrow (runrec-cluster[query])
    import pyarrow.parquet as pq  # optional heavy dependency: pyarrow (runrec-cluster[query])

    return pa, pq


# ---------------------------------------------------------------------------------------------
# table
# ---------------------------------------------------------------------------------------------


@cli.command("table")
@store_option
@query_options(
    columns_help="Only these columns, in this order (default: all).",
    sort_help="Sort by COLUMN (COLUMN:desc or -COLUMN: highest first).",
)
@click.option(
    "--format",
    "fmt",
    type=click.Choice(["csv", "json", "parquet"]),
    default="csv",
    show_default=True,
)
@click.option(
    "-o",
    "--output",
    type=click.Path(dir_okay=False, writable=True),
    default=None,
    help="Write to FILE (default: stdout; parquet needs -o).",
)
@_index_opt
def table_cmd(store_path, where, columns, sort, fmt, output, index_dir):  # type: ignore[no-untyped-def]
    """Export the flat run view (one row per run) as CSV, JSON or Parquet."""
    if fmt == "parquet" and not output:
        raise click.UsageError("--format parquet needs -o FILE.")
    store = open_store(store_path)
    if fmt == "parquet":
        _, pq = _pyarrow()
        t = query(store, where, columns, as_arrow=True, sort=sort, index_dir=index_dir)
        pq.write_table(t, output)
        click.echo(f"wrote {t.num_rows} runs, {t.num_columns} columns to {output}", err=True)
        return
    df = query(store, where, columns, sort=sort, index_dir=index_dir)
    if fmt == "csv":
        text = df.to_csv(index=False)
    else:
        # a NaN in the DataFrame is a missing value or a recorded NaN: the Arrow nulls tell
        t = query(
            store, where, columns, as_arrow=True, sort=sort, refresh=False, index_dir=index_dir
        )
        rows = _records(df, nulls={c: t.column(c).is_null().to_pylist() for c in t.column_names})
        text = _strict_dumps([strict_document(r) for r in rows], indent=1) + "\n"
    if output:
        with open(output, "w", encoding="utf-8", newline="") as f:
            f.write(text)
        click.echo(f"wrote {len(df)} runs, {len(df.columns)} columns to {output}", err=True)
    else:
        sys.stdout.write(text)


def _strict_dumps(obj: Any, indent: int) -> str:
    """JSON without NaN / Infinity (they were made ``null`` + ``"nonfinite"`` before)."""
    return json.dumps(obj, indent=indent, ensure_ascii=False, default=str, allow_nan=False)


def _records(  # type: ignore[no-untyped-def]
    df, nulls: dict[str, list[bool]] | None = None, ints: set[str] | frozenset[str] = frozenset()
) -> list[dict[str, Any]]:
    """The rows as plain values. A float NaN is a missing value (``None``) unless ``nulls``
    (per column: is the Arrow value null) says it is a recorded NaN; a whole float in a column
    of ``ints`` (an integer column with missing values, a float in pandas) is an int again."""
    out = []
    for n, row in enumerate(df.to_dict(orient="records")):
        r = {}
        for k, v in row.items():
            v = _plain(v)
            if isinstance(v, float) and math.isnan(v):
                col = nulls.get(k) if nulls is not None else None
                v = v if col is not None and not col[n] else None
            elif k in ints and isinstance(v, float) and v.is_integer():
                v = int(v)
            r[k] = v
        out.append(r)
    return out


def _order(values: list[Any], desc: bool) -> list[int]:
    keys = [sort_key(None if isnan(v) else v) for v in values]
    present = [i for i, k in enumerate(keys) if k[0] < 3]
    missing = [i for i, k in enumerate(keys) if k[0] == 3]
    present.sort(key=lambda i: keys[i], reverse=desc)
    return present + missing


def _plain(v: Any) -> Any:
    if hasattr(v, "item") and not isinstance(v, list | dict | str):
        try:
            return v.item()
        except (ValueError, AttributeError):
            return v
    return v


def _sort_df(df, spec: str):  # type: ignore[no-untyped-def]

    key, desc = parse_sort(spec)
    if key not in df.columns:
        raise ConfigError(f"--sort {key!r}: no such column in the result; add it to --columns.")
    return df.iloc[_order(list(df[key]), desc)].reset_index(drop=True)


# ---------------------------------------------------------------------------------------------
# compare
# ---------------------------------------------------------------------------------------------


@cli.command("compare")
@store_option
@click.argument("sweep")
@click.option(
    "--sort",
    default=None,
    metavar="COLUMN",
    help="Order by COLUMN (default: the first metric, highest first); COLUMN:asc for lowest first.",
)
@click.option("--json", "as_json", is_flag=True, help="One JSON document for tools.")
@_index_opt
def compare_cmd(store_path, sweep, sort, as_json, index_dir):  # type: ignore[no-untyped-def]
    """Compare the runs of a sweep: the config keys that vary against every metric, best first."""
    store = open_store(store_path)
    sweep_id, df = sweep_frame(store, sweep, index_dir)
    varied = varied_config(df)
    metrics = metric_columns(df)
    spec = sort or (f"{metrics[0]}:desc" if metrics else None)
    if spec:
        df = _sort_df(df, spec)
    cols = ["run_id", "sweep_index", "state", "cause", *varied, *metrics]
    shown = [c for c in cols if c in df.columns]
    rows = _records(df[shown], ints=_int_columns(store, shown, index_dir))
    if as_json:
        doc = {
            "sweep_id": sweep_id,
            "varied": varied,
            "metrics": metrics,
            "sorted_by": spec,
            "runs": rows,
        }
        click.echo(_strict_dumps(strict_document(doc), indent=1))
        return
    c = console()
    c.print(
        f"sweep [bold]{sweep_id}[/bold]: {len(df)} runs; varied: {esc(', '.join(varied) or 'nothing')}"
        + (f"; sorted by {esc(spec)}" if spec else "")
    )
    for r in rows:
        r["state"] = r["state"] + (f" ({r['cause']})" if r.get("cause") else "")
    print_rows(rows, [c for c in cols if c != "cause" and (c in df.columns)])


def _int_columns(store: Any, columns: list[str], index_dir: Any) -> set[str]:
    """The columns the index holds as integers (pandas makes them floats when one is missing)."""
    pa, _ = _pyarrow()
    t = query(store, columns=columns, as_arrow=True, refresh=False, index_dir=index_dir)
    return {f.name for f in t.schema if pa.types.is_integer(f.type)}


# ---------------------------------------------------------------------------------------------
# index
# ---------------------------------------------------------------------------------------------


@cli.command("index")
@store_option
@click.option(
    "--rebuild", is_flag=True, help="Read every record again instead of only the new ones."
)
@click.option(
    "--full",
    is_flag=True,
    help="Check every run directory, not only the change journal (finds runs deleted or copied by hand).",
)
@_index_opt
def index_cmd(store_path, rebuild, full, index_dir):  # type: ignore[no-untyped-def]
    """Bring the query index up to date (it is derived: deleting it loses nothing)."""
    need_query_extra()
    store = open_store(store_path)
    st = Index(store, index_dir).update(rebuild=rebuild, full=full)
    for p in st.problems:
        warn(p)
    how = "rebuilt" if st.rebuilt else ("updated (full scan)" if st.full_scan else "updated")
    click.echo(
        f"{how} {st.path}: {st.runs} runs ({st.read} read, {st.removed} removed, "
        f"{st.scanned} run directories checked) in {st.seconds:.2f}s"
    )


# ---------------------------------------------------------------------------------------------
# report
# ---------------------------------------------------------------------------------------------


@cli.command("report")
@store_option
@click.argument("sweep")
@click.option(
    "-o",
    "--output",
    type=click.Path(dir_okay=False, writable=True),
    default="report.html",
    show_default=True,
)
@_index_opt
def report_cmd(store_path, sweep, output, index_dir):  # type: ignore[no-untyped-def]
    """Write one self-contained HTML page about a sweep: runs, plots, failures, reruns."""
    store = open_store(store_path)
    html, info = sweep_report(store, sweep, index_dir=index_dir)
    with open(output, "w", encoding="utf-8") as f:
        f.write(html)
    click.echo(
        f"wrote {output}: sweep {info['sweep_id']}, {info['runs']} runs, {info['plots']} plots",
        err=True,
    )
