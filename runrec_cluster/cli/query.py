"""``runrec table``, ``runrec compare``, ``runrec index``, ``runrec report``, and the helpers
behind ``runrec ls --where/--columns/--sort``.

Registered on the ``cli`` group of ``cli.py`` when that module imports this one. A thin layer
over ``query.py``, ``index.py`` and ``report.py``: pandas and pyarrow (the ``query`` extra) are
imported inside the commands, and a missing extra is a one-line error naming the install.
"""

from __future__ import annotations

import json
import sys
from typing import Any

import click

from runrec_cluster.cli._common import (
    _console,
    _esc,
    _fmt_val,
    _open_store,
    _short_ids,
    _store_opt,
    _warn,
    cli,
)
from runrec_cluster.errors import ConfigError
from runrec_cluster.query.sweeps import isnan, metric_columns, sweep_frame, varied_config

INDEX_DIR_HELP = (
    "Keep the query index in this local directory instead of STORE/index (for a store on NFS; "
    "default: $RUNREC_INDEX_DIR)."
)


def _index_opt(f: Any) -> Any:
    return click.option("--index-dir", default=None, metavar="DIR", help=INDEX_DIR_HELP)(f)


# ---------------------------------------------------------------------------------------------
# ls --where / --columns / --sort (on the records ls already read)
# ---------------------------------------------------------------------------------------------


def ls_select(store, recs, trust, where, columns, sort):  # type: ignore[no-untyped-def]
    """(records, rows, columns) after ``--where`` and ``--sort``; rows only when needed."""
    from runrec_cluster.expr import parse
    from runrec_cluster.query.columns import (
        flat_row,
        package_reader,
        parse_columns,
        parse_sort,
        sort_rows,
    )

    expr = parse(where) if where else None
    cols = parse_columns(columns)
    if expr is None and cols is None and not sort:
        return recs, None, None
    pk = package_reader(store)
    wants_pk = any(
        c.startswith("packages.") for c in [*(expr.columns if expr else ()), *(cols or [])]
    ) or (sort and parse_sort(sort)[0].startswith("packages."))

    def row_of(r):  # type: ignore[no-untyped-def]
        row = flat_row(r, pk if wants_pk else None, trust)
        row.setdefault("retired", False)
        row.setdefault("suspect", False)
        return row

    pairs = [(r, row_of(r)) for r in recs]
    if expr is not None:
        pairs = [(r, row) for r, row in pairs if expr.matches(row)]
    if sort:
        key, desc = parse_sort(sort)
        order = sort_rows([row for _, row in pairs], key, desc)
        by_id = {row["run_id"]: r for r, row in pairs}
        pairs = [(by_id[row["run_id"]], row) for row in order]
    return [r for r, _ in pairs], [row for _, row in pairs], cols


def print_rows(rows: list[dict[str, Any]], columns: list[str]) -> None:
    """A plain table of flat rows: ``run_id`` shortened, floats to 4 significant digits."""
    from rich.table import Table

    c = _console()
    if not rows:
        c.print("no runs match.")
        return
    short = _short_ids([r["run_id"] for r in rows]) if "run_id" in columns else {}
    t = Table(box=None, pad_edge=False, header_style="bold")
    for col in columns:
        t.add_column(_esc(col), no_wrap=col != "name")
    for r in rows:
        cells = []
        for col in columns:
            v = r.get(col)
            if col == "run_id" and v in short:
                v = short[v]
            cells.append(
                "-"
                if v is None
                else _esc(_fmt_val(v) if not isinstance(v, dict | list) else json.dumps(v))
            )
        t.add_row(*cells)
    c.print(t)


# ---------------------------------------------------------------------------------------------
# table
# ---------------------------------------------------------------------------------------------


@cli.command("table")
@_store_opt
@click.option(
    "--where",
    default=None,
    metavar="EXPR",
    help="Only runs matching EXPR, e.g. 'config.lr > 0.01 and state == \"failed\"' (docs/query.md).",
)
@click.option(
    "--columns",
    default=None,
    metavar="A,B,...",
    help="Only these columns, in this order (default: all).",
)
@click.option(
    "--sort",
    default=None,
    metavar="COLUMN",
    help="Sort by COLUMN (COLUMN:desc or -COLUMN: highest first).",
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
    from runrec_cluster.query.select import query

    if fmt == "parquet" and not output:
        raise click.UsageError("--format parquet needs -o FILE.")
    store = _open_store(store_path)
    if fmt == "parquet":
        import pyarrow.parquet as pq

        t = query(store, where, columns, as_arrow=True, index_dir=index_dir)
        if sort:
            t = _sort_arrow(t, sort)
        pq.write_table(t, output)
        click.echo(f"wrote {t.num_rows} runs, {t.num_columns} columns to {output}", err=True)
        return
    df = query(store, where, columns, index_dir=index_dir)
    if sort:
        df = _sort_df(df, sort)
    if fmt == "csv":
        text = df.to_csv(index=False)
    else:
        text = json.dumps(_records(df), indent=1, ensure_ascii=False, default=str) + "\n"
    if output:
        with open(output, "w", encoding="utf-8", newline="") as f:
            f.write(text)
        click.echo(f"wrote {len(df)} runs, {len(df.columns)} columns to {output}", err=True)
    else:
        sys.stdout.write(text)


def _records(df) -> list[dict[str, Any]]:  # type: ignore[no-untyped-def]
    import math

    out = []
    for row in df.to_dict(orient="records"):
        out.append(
            {
                k: (None if isinstance(v, float) and math.isnan(v) else _plain(v))
                for k, v in row.items()
            }
        )
    return out


def _plain(v: Any) -> Any:
    if hasattr(v, "item") and not isinstance(v, list | dict | str):
        try:
            return v.item()
        except (ValueError, AttributeError):
            return v
    return v


def _sort_df(df, spec: str):  # type: ignore[no-untyped-def]
    from runrec_cluster.query.columns import parse_sort, sort_key

    key, desc = parse_sort(spec)
    if key not in df.columns:
        raise ConfigError(f"--sort {key!r}: no such column in the result; add it to --columns.")
    keys = [sort_key(None if isnan(v) else v) for v in df[key]]
    present = [i for i, k in enumerate(keys) if k[0] < 3]
    missing = [i for i, k in enumerate(keys) if k[0] == 3]
    present.sort(key=lambda i: keys[i], reverse=desc)
    return df.iloc[present + missing].reset_index(drop=True)


def _sort_arrow(t, spec: str):  # type: ignore[no-untyped-def]
    import pyarrow as pa

    df = _sort_df(t.to_pandas(), spec)
    return pa.Table.from_pandas(df, preserve_index=False, schema=t.schema)


# ---------------------------------------------------------------------------------------------
# compare
# ---------------------------------------------------------------------------------------------


@cli.command("compare")
@_store_opt
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
    store = _open_store(store_path)
    sweep_id, df = sweep_frame(store, sweep, index_dir)
    varied = varied_config(df)
    metrics = metric_columns(df)
    spec = sort or (f"{metrics[0]}:desc" if metrics else None)
    if spec:
        df = _sort_df(df, spec)
    cols = ["run_id", "sweep_index", "state", "cause", *varied, *metrics]
    rows = _records(df[[c for c in cols if c in df.columns]])
    if as_json:
        click.echo(
            json.dumps(
                {
                    "sweep_id": sweep_id,
                    "varied": varied,
                    "metrics": metrics,
                    "sorted_by": spec,
                    "runs": rows,
                },
                indent=1,
                default=str,
            )
        )
        return
    c = _console()
    c.print(
        f"sweep [bold]{sweep_id}[/bold]: {len(df)} runs; varied: {_esc(', '.join(varied) or 'nothing')}"
        + (f"; sorted by {_esc(spec)}" if spec else "")
    )
    for r in rows:
        r["state"] = r["state"] + (f" ({r['cause']})" if r.get("cause") else "")
    print_rows(rows, [c for c in cols if c != "cause" and (c in df.columns)])


# ---------------------------------------------------------------------------------------------
# index
# ---------------------------------------------------------------------------------------------


@cli.command("index")
@_store_opt
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
    from runrec_cluster.query.columns import need_query_extra
    from runrec_cluster.query.index import Index

    need_query_extra()
    store = _open_store(store_path)
    st = Index(store, index_dir).update(rebuild=rebuild, full=full)
    for p in st.problems:
        _warn(p)
    how = "rebuilt" if st.rebuilt else ("updated (full scan)" if st.full_scan else "updated")
    click.echo(
        f"{how} {st.path}: {st.runs} runs ({st.read} read, {st.removed} removed, "
        f"{st.scanned} run directories checked) in {st.seconds:.2f}s"
    )


# ---------------------------------------------------------------------------------------------
# report
# ---------------------------------------------------------------------------------------------


@cli.command("report")
@_store_opt
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
    from runrec_cluster.views.report import sweep_report

    store = _open_store(store_path)
    html, info = sweep_report(store, sweep, index_dir=index_dir)
    with open(output, "w", encoding="utf-8") as f:
        f.write(html)
    click.echo(
        f"wrote {output}: sweep {info['sweep_id']}, {info['runs']} runs, {info['plots']} plots",
        err=True,
    )
