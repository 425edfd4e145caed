"""Run lists as tables and JSON rows: ``runrec ls`` (plain, ``--where/--columns/--sort``,
``--negative``), the demo's summary and ``runrec compare``. Imports no command module."""

from __future__ import annotations

import json
from typing import Any

import click
from rich.table import Table

from runrec_cluster.capture.hardware import flagged
from runrec_cluster.cli._common import (
    console,
    esc,
    fmt_duration,
    fmt_time,
    fmt_value,
    short_ids,
    state_text,
)
from runrec_cluster.expr import parse
from runrec_cluster.lineage.annotate import negatives
from runrec_cluster.lineage.trust import Trust
from runrec_cluster.query.columns import (
    ColumnNames,
    flat_row,
    package_reader,
    parse_columns,
    parse_sort,
    present_columns,
    sort_rows,
)
from runrec_cluster.record import RunRecord
from runrec_cluster.store import Store
from runrec_cluster.store.codec import strict_document, to_json_builtins

FLAG_STYLE = {"RETIRED": "bold red", "SUSPECT": "bold yellow"}
STATE_STYLE = {
    "succeeded": "green",
    "failed": "red",
    "cancelled": "yellow",
    "running": "cyan",
    "submitted": "blue",
}


def flag_markup(marker: str) -> str:
    """``RETIRED`` / ``SUSPECT`` in their colour; anything else (no flag) as nothing."""
    style = FLAG_STYLE.get(marker, "")
    return f"[{style}]{marker}[/{style}]" if style else ""


def ls_row(rec: RunRecord, trust: Trust | None = None) -> dict[str, Any]:
    """One run of ``runrec ls --json``."""
    node = rec.node
    flags = trust.of_run(rec.run_id) if trust is not None else []
    return {
        "run_id": rec.run_id,
        "name": rec.name,
        "state": rec.state.value,
        "cause": rec.failure.cause.value if rec.failure else None,
        "hardware": rec.execution.hardware if rec.execution else None,
        "hardware_match": rec.execution.hardware_match if rec.execution else None,
        "backend": rec.execution.backend if rec.execution else None,
        "job_id": (rec.execution.scheduler.get("job_id") if rec.execution else None),
        "sweep_id": rec.sweep_id,
        "sweep_index": rec.sweep_index,
        "created_at": rec.created_at.isoformat() if rec.created_at else None,
        "duration_s": rec.duration_s,
        "host": node.hostname if node else None,
        "metrics": rec.metrics,
        "trust": trust.marker(f"run:{rec.run_id}") if trust is not None and flags else None,
        "retirements": sorted({f.retirement.id for f in flags}),
        "rerun_of": rec.rerun_of,
    }


# ---------------------------------------------------------------------------------------------
# ls --where / --columns / --sort (on the records ls already read)
# ---------------------------------------------------------------------------------------------


def ls_select(
    store: Store,
    recs: list[RunRecord],
    trust: Trust | None,
    where: str | None,
    columns: str | None,
    sort: str | None,
    universe: list[RunRecord] | None = None,
    names: ColumnNames | None = None,
) -> tuple[list[RunRecord], list[dict[str, Any]] | None, list[str] | None]:
    """(records, rows, columns) after ``--where`` and ``--sort``; rows only when needed.
    ``universe``: every run of the store (default ``recs``), whose names are the known columns:
    an unknown name is an ``ExpressionError``, as in ``rr.query``; or ``names``, the known
    columns (the index's: ``query.newest.index_names``)."""
    expr = parse(where) if where else None
    cols = parse_columns(columns)
    if expr is None and cols is None and not sort:
        return recs, None, None
    if names is None:
        every = recs if universe is None else universe
        fixed = set(flat_row(every[0])) if every else set()  # a fixed column flat_row adds too
        names = ColumnNames(present_columns(every) | fixed, has_runs=bool(every))
    names.check(expr, cols, parse_sort(sort)[0] if sort else None)
    pk = package_reader(store)
    wants_pk = any(
        c.startswith("packages.") for c in [*(expr.columns if expr else ()), *(cols or [])]
    ) or bool(sort and parse_sort(sort)[0].startswith("packages."))

    def row_of(r: RunRecord) -> dict[str, Any]:
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
    c = console()
    if not rows:
        c.print("no runs match.")
        return
    short = short_ids([r["run_id"] for r in rows]) if "run_id" in columns else {}
    t = Table(box=None, pad_edge=False, header_style="bold")
    for col in columns:
        t.add_column(esc(col), no_wrap=col != "name")
    for r in rows:
        cells = []
        for col in columns:
            v = r.get(col)
            if col == "run_id" and v in short:
                v = short[v]
            cells.append(
                "-"
                if v is None
                else esc(fmt_value(v) if not isinstance(v, dict | list) else json.dumps(v))
            )
        t.add_row(*cells)
    c.print(t)


# ---------------------------------------------------------------------------------------------
# plain ls (and the demo's summary)
# ---------------------------------------------------------------------------------------------


def _rerun_mark(rec: RunRecord, depth: int) -> str:
    """``↳ `` (indented by depth) before a rerun listed under its original; ``rerun `` before
    one whose original is not listed."""
    if depth:
        return "  " * (depth - 1) + "↳ "
    return "rerun " if rec.rerun_of else ""


def print_runs(
    recs: list[RunRecord], trust: Trust | None = None, depth: dict[str, int] | None = None
) -> None:
    """The ``runrec ls`` table: id, name, state, trust (when any is flagged), backend, created,
    duration, host and the first three metrics; ``depth`` indents reruns under originals."""
    short = short_ids([r.run_id for r in recs])
    metric_keys: list[str] = []
    for r in recs:
        for k in r.metrics:
            if k not in metric_keys and len(metric_keys) < 3:
                metric_keys.append(k)
    marks = {r.run_id: trust.marker(f"run:{r.run_id}") for r in recs} if trust else {}
    trust_col = ["trust"] if any(marks.values()) else []
    t = Table(box=None, pad_edge=False, header_style="bold")
    cols = ("id", "name", "state", *trust_col, "backend", "created", "duration", "host")
    for col in (*cols, *metric_keys):
        t.add_column(esc(col), no_wrap=col not in ("name",))
    for r in recs:
        node = r.node
        backend = r.execution.backend if r.execution else "-"
        job = r.execution.scheduler.get("job_id") if r.execution else None
        if job:
            backend += f" {job}"
        st = state_text(r)
        style = "bold yellow" if flagged(r) else STATE_STYLE.get(r.state.value, "")
        t.add_row(
            short[r.run_id],
            esc(
                _rerun_mark(r, (depth or {}).get(r.run_id, 0))
                + r.name
                + (f" [{r.sweep_index}]" if r.sweep_index is not None else "")
            ),
            f"[{style}]{esc(st)}[/{style}]" if style else esc(st),
            *([flag_markup(marks[r.run_id])] if trust_col else []),
            esc(backend),
            fmt_time(r.created_at),
            fmt_duration(r.duration_s),
            esc(node.hostname if node else "-"),
            *[esc(fmt_value(r.metrics[k])) if k in r.metrics else "-" for k in metric_keys],
        )
    c = console()
    if not recs:
        c.print("no runs match.")
        return
    c.print(t)


# ---------------------------------------------------------------------------------------------
# ls --negative
# ---------------------------------------------------------------------------------------------


def print_negatives(recs: list[RunRecord], trust: Trust | None, as_json: bool) -> None:
    """``runrec ls --negative``: negative results with their failure kind and notes."""
    negs = negatives(recs)
    if as_json:
        rows = []
        for n in negs:
            row = ls_row(n.record, trust)
            row["verdict"] = to_json_builtins(n.verdict) if n.verdict else None
            row["annotations"] = [to_json_builtins(a) for a in n.notes]
            rows.append(row)
        docs = [strict_document(r) for r in rows]
        click.echo(json.dumps(docs, indent=1, default=str, allow_nan=False))
        return
    c = console()
    if not negs:
        c.print("no negative results: no failed runs, no negative verdicts.")
        return
    short = short_ids([n.record.run_id for n in negs])
    t = Table(box=None, pad_edge=False, header_style="bold")
    for col in ("id", "name", "state", "verdict", "blocks", "note", "by", "at"):
        t.add_column(col, no_wrap=col not in ("name", "note"))
    for n in negs:
        r, v = n.record, n.verdict
        mark = trust.marker(f"run:{r.run_id}") if trust is not None else ""
        t.add_row(
            short[r.run_id] + (f" {flag_markup(mark)}" if mark else ""),
            esc(r.name),
            esc(state_text(r)),
            v.verdict if v else "[dim](failed, no verdict)[/dim]",
            esc(v.blocks or "-") if v else "-",
            esc(v.note) if v else esc(r.failure.message if r.failure else ""),
            esc(v.by) if v else "-",
            fmt_time(v.at) if v else fmt_time(r.ended_at),
        )
    c.print(t)
