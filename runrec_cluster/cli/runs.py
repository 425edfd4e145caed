"""``runrec ls / show / export / schema / history / logs / cancel / reconcile``: the commands
that read (and check) recorded runs."""

from __future__ import annotations

import json
import os
import sys
from datetime import UTC, datetime

import click
from rich.table import Table

from runrec_cluster import api
from runrec_cluster.cli._common import (
    cli,
    console,
    esc,
    fmt_time,
    load_all,
    load_one,
    open_store,
    query_options,
    state_text,
    store_option,
    warn,
)
from runrec_cluster.cli._table import ls_row, ls_select, print_negatives, print_rows, print_runs
from runrec_cluster.lineage.annotate import negatives
from runrec_cluster.lineage.trust import trust_for
from runrec_cluster.record import RunRecord, RunState, needs_verdict
from runrec_cluster.rerun import order_with_reruns
from runrec_cluster.store.codec import strict_document
from runrec_cluster.store.promoted import list_promotions
from runrec_cluster.views.export import export_json
from runrec_cluster.views.openlineage import run_events
from runrec_cluster.views.schema import KINDS as SCHEMA_KINDS
from runrec_cluster.views.schema import schema as json_schema
from runrec_cluster.views.show import render

# ---------------------------------------------------------------------------------------------
# ls
# ---------------------------------------------------------------------------------------------


def _strict_json(obj: object, indent: int = 1) -> str:
    """Strict JSON: non-finite floats were made ``null`` + ``"nonfinite"`` (docs/export.md)."""
    return json.dumps(obj, indent=indent, ensure_ascii=False, default=str, allow_nan=False)


def _check_states(states: tuple[str, ...]) -> None:
    valid = {s.value for s in RunState}
    for s in states:
        if s not in valid:
            raise click.BadParameter(
                f"{s!r} is not a state; choose from {', '.join(sorted(valid))}.",
                param_hint="--state",
            )


def _filter(
    recs: list[RunRecord], states: tuple[str, ...], name: str | None, sweep: str | None
) -> list[RunRecord]:
    """The runs ``--state``, ``--name`` and ``--sweep`` keep, oldest first."""
    if states:
        recs = [r for r in recs if r.state.value in states]
    if name:
        recs = [r for r in recs if name in r.name]
    if sweep:
        sw = sweep.lower()
        recs = [r for r in recs if r.sweep_id and r.sweep_id.startswith(sw)]
    recs.sort(key=lambda r: (r.created_at or datetime.min.replace(tzinfo=UTC), r.run_id))
    return recs


@cli.command("ls")
@store_option
@click.option(
    "--state",
    "states",
    multiple=True,
    help="Only runs in this state (submitted, running, succeeded, failed, cancelled, unknown); repeatable.",
)
@click.option("--name", default=None, help="Only runs whose name contains this text.")
@click.option("--sweep", default=None, help="Only runs of this sweep (id or prefix).")
@click.option(
    "--limit", type=click.IntRange(min=1), default=None, help="Show at most N runs (newest)."
)
@click.option(
    "--negative",
    is_flag=True,
    help="Only negative results (latest verdict negative, or failed without a verdict), with their notes.",
)
@click.option(
    "--json", "as_json", is_flag=True, help="One JSON document (a list of runs) for tools."
)
@query_options(
    columns_help="Show these columns of the flat run view (docs/query.md).",
    sort_help="Sort by COLUMN (COLUMN:desc or -COLUMN: highest first; missing values last).",
)
def ls_cmd(
    store_path, states, name, sweep, limit, negative, as_json, where=None, columns=None, sort=None
):  # type: ignore[no-untyped-def]
    """List runs, newest last. Runs built on something retired are marked SUSPECT."""
    _check_states(states)
    store = open_store(store_path)
    recs = load_all(store)
    every = recs  # the known columns are those of every run, not only of the ones listed
    problems: list[str] = []
    trust = trust_for(store, recs, problems)  # None (nothing read) when nothing was retired
    for p in problems:
        warn(p)
    ordered = order_with_reruns(_filter(recs, states, name, sweep))  # a rerun after its original
    recs = [r for r, _ in ordered]
    depth = {r.run_id: d for r, d in ordered}
    if negative:
        keep = {n.record.run_id for n in negatives(recs)}
        recs = [r for r in recs if r.run_id in keep]
    recs, rows, cols = ls_select(store, recs, trust, where, columns, sort, universe=every)
    if limit:
        recs, rows = recs[-limit:], (rows[-limit:] if rows is not None else None)
    if cols and not negative:
        if as_json:
            click.echo(_strict_json([strict_document({c: r.get(c) for c in cols}) for r in rows]))
        else:
            print_rows(rows, cols)
        return
    if negative:
        print_negatives(recs, trust, as_json)
        return
    if as_json:
        click.echo(_strict_json([strict_document(ls_row(r, trust)) for r in recs]))
        return
    print_runs(recs, trust, depth)


# ---------------------------------------------------------------------------------------------
# show / export / schema / history / logs
# ---------------------------------------------------------------------------------------------


@cli.command("show")
@store_option
@click.argument("run")
def show_cmd(store_path, run):  # type: ignore[no-untyped-def]
    """Show one run in readable sections (RUN: id or unique prefix)."""
    store = open_store(store_path)
    rec = load_one(store, run)
    trust = trust_for(store)
    promoted = [
        e.promotion
        for e in list_promotions(store)
        if e.promotion and e.promotion.run_id == rec.run_id
    ]
    render(
        console(), store, rec, flags=trust.of_run(rec.run_id) if trust else [], promoted=promoted
    )


@cli.command("export")
@store_option
@click.argument("run")
@click.option(
    "--format", "fmt", type=click.Choice(["json", "openlineage"]), default="json", show_default=True
)
@click.option(
    "--namespace",
    default="runrec",
    show_default=True,
    help="OpenLineage job namespace (with --format openlineage).",
)
@click.option(
    "-o",
    "--output",
    type=click.Path(dir_okay=False, writable=True),
    default=None,
    help="Write to this file instead of stdout.",
)
def export_cmd(store_path, run, fmt, namespace, output):  # type: ignore[no-untyped-def]
    """Export one run as a plain JSON document, its blobs (diff, packages) inlined; or as
    OpenLineage RunEvents (START, then COMPLETE / FAIL / ABORT), one JSON document per line."""
    store = open_store(store_path)
    rec = load_one(store, run)
    if fmt == "openlineage":
        events = run_events(store, rec, namespace=namespace, trust=trust_for(store))
        text = "\n".join(
            json.dumps(e, ensure_ascii=False, sort_keys=True, allow_nan=False) for e in events
        )
    else:
        text = _strict_json(export_json(store, rec), indent=2)
    if output:
        with open(output, "w", encoding="utf-8") as f:
            f.write(text + "\n")
        click.echo(f"wrote {output}", err=True)
    else:
        click.echo(text)


@cli.command("schema")
@click.option(
    "--of",
    "of",
    type=click.Choice(list(SCHEMA_KINDS)),
    default="record",
    show_default=True,
    help="The folded run record, one stored version file, or the `export --format json` document.",
)
def schema_cmd(of):  # type: ignore[no-untyped-def]
    """Print a JSON Schema (draft 2020-12), generated from the record Structs: closed objects,
    typed metrics; --of export covers the whole export document (docs/export.md)."""
    click.echo(json.dumps(json_schema(of), indent=2))


@cli.command("history")
@store_option
@click.argument("run")
def history_cmd(store_path, run):  # type: ignore[no-untyped-def]
    """List every stored version of a run, oldest first."""
    store = open_store(store_path)
    run_id = store.resolve(run)
    vs = sorted(store.versions(run_id), key=lambda v: (v.seq, v.written_at))
    t = Table(box=None, header_style="bold")
    for col in ("seq", "written", "event", "writer", "fields"):
        t.add_column(esc(col))
    for v in vs:
        t.add_row(
            str(v.seq),
            fmt_time(v.written_at),
            v.event,
            esc(f"{v.writer.role}@{v.writer.host}:{v.writer.pid}"),
            esc(", ".join(sorted(v.patch))),
        )
    console().print(t)


@cli.command("logs")
@store_option
@click.argument("run")
@click.option("--stderr", "which", flag_value="stderr", help="Show stderr (default: both).")
@click.option("--stdout", "which", flag_value="stdout", help="Show stdout.")
def logs_cmd(store_path, run, which):  # type: ignore[no-untyped-def]
    """Print a run's captured stdout and stderr (local backend; Slurm and Ray keep their own)."""
    store = open_store(store_path)
    rec = store.load(run)
    d = (rec.execution.log_dir if rec.execution else None) or store.log_dir(rec.run_id)
    found = False
    for name in ("stdout", "stderr"):
        if which and which != name:
            continue
        path = os.path.join(d, f"{name}.txt")
        data = store.read_log(rec.run_id, f"{name}.txt", d)  # the file, or packed
        if data is not None:
            found = True
            where = path if os.path.exists(path) else f"{path} (packed)"
            click.echo(f"==> {where} <==", err=True)
            sys.stdout.write(data.decode("utf-8", errors="replace"))
    if not found:
        click.echo(f"no logs for run {rec.run_id} in {d}.", err=True)


# ---------------------------------------------------------------------------------------------
# cancel / reconcile
# ---------------------------------------------------------------------------------------------


@cli.command("cancel")
@store_option
@click.argument("run")
def cancel_cmd(store_path, run):  # type: ignore[no-untyped-def]
    """Cancel a run that has not ended."""
    store = open_store(store_path)
    rid = store.resolve(run)
    api.RunHandle(store, rid).cancel()
    click.echo(f"cancelled {rid} (state: {store.load(rid).state.value})")


@cli.command("reconcile")
@store_option
@click.argument("runs", nargs=-1)
def reconcile_cmd(store_path, runs):  # type: ignore[no-untyped-def]
    """Ask each backend about runs that are not terminal, and record its verdict (out of
    memory, timeout, cancelled, node failure, killed...) as a new version of the record."""
    store = open_store(store_path)
    if runs:
        recs = [store.load(r) for r in runs]
    else:
        recs = load_all(store, check=False)
    open_recs = [r for r in recs if needs_verdict(r)]
    api.forget_check_times()
    after = api.refresh_many(store, open_recs, strict=True)
    changed = [
        (a, b)
        for a, b in zip(open_recs, after, strict=True)
        if (a.state, a.failure) != (b.state, b.failure)
    ]
    c = console()
    for old, new in changed:
        c.print(
            f"{new.run_id}  {old.state.value} -> {esc(state_text(new))}: {esc(new.failure.message if new.failure else '')}"
        )
    c.print(
        f"checked {len(open_recs)} open run(s); {len(changed)} updated; {len(open_recs) - len(changed)} still open."
    )
