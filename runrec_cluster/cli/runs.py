"""``runrec ls / show / export / schema / history / logs / cancel / reconcile``: the commands
that read (and check) recorded runs."""

from __future__ import annotations

import json
import os
import sys
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

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
    load_some,
    open_store,
    query_options,
    state_text,
    store_option,
    warn,
)
from runrec_cluster.cli._table import ls_row, ls_select, print_negatives, print_rows, print_runs
from runrec_cluster.errors import ConfigError, StoreError
from runrec_cluster.expr import parse
from runrec_cluster.lineage.annotate import negatives
from runrec_cluster.lineage.trust import Trust, trust_for
from runrec_cluster.query.ancestry import trust_of
from runrec_cluster.query.columns import ColumnNames, parse_columns, query_libs
from runrec_cluster.query.index import Index
from runrec_cluster.query.newest import LIGHT_COLUMNS, Listing, index_names
from runrec_cluster.record import RunRecord, RunState, needs_verdict
from runrec_cluster.rerun import order_with_reruns
from runrec_cluster.store import Store
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

# True: ``ls --limit``, ``show`` and ``export --format openlineage`` read every run of the store,
# as before they read the index and the runs' ancestry (the tests compare both outputs)
READ_EVERY_RUN = False


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
    opts = _LsOptions(states, name, sweep, negative, where, columns, sort)
    found = _newest(store, limit, opts) if limit and not sort and not READ_EVERY_RUN else None
    if found is None:  # every run read (no --limit, --sort, or no usable index)
        recs = load_all(store)
        problems: list[str] = []
        trust = trust_for(store, recs, problems)  # None (nothing read) when nothing was retired
        for p in problems:
            warn(p)
        # the known columns are those of every run, not only of the ones listed
        found = _listing(store, recs, trust, opts, universe=recs), trust
    (recs, rows, cols, depth), trust = found
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


@dataclass(frozen=True)
class _LsOptions:
    states: tuple[str, ...]
    name: str | None
    sweep: str | None
    negative: bool
    where: str | None
    columns: str | None
    sort: str | None


_Listed = tuple[list[RunRecord], list[dict[str, Any]] | None, list[str] | None, dict[str, int]]


def _listing(
    store: Store,
    recs: list[RunRecord],
    trust: Trust | None,
    o: _LsOptions,
    universe: list[RunRecord] | None = None,
    names: ColumnNames | None = None,
) -> _Listed:
    """(records, rows, columns, depth): what ``ls`` prints of ``recs``, before ``--limit``."""
    ordered = order_with_reruns(_filter(recs, o.states, o.name, o.sweep))  # reruns after originals
    recs = [r for r, _ in ordered]
    depth = {r.run_id: d for r, d in ordered}
    if o.negative:
        keep = {n.record.run_id for n in negatives(recs)}
        recs = [r for r in recs if r.run_id in keep]
    recs, rows, cols = ls_select(
        store, recs, trust, o.where, o.columns, o.sort, universe=universe, names=names
    )
    return recs, rows, cols, depth


def _newest(store: Store, limit: int, o: _LsOptions) -> tuple[_Listed, Trust | None] | None:
    """``ls --limit`` (without ``--sort``) from the index: the runs of the newest families of
    the listing (``query.newest``) are read and refreshed, not every run; the rows are those
    the whole store gives. None when the index cannot be used (no query extra, no readable
    index, a rerun cycle): then every run is read."""
    try:
        query_libs()
    except ConfigError:
        return None
    idx = Index(store)
    try:
        # (what the update finds unreadable is not warned about here: it tells only once, when
        # it first reads a run; the runs read below are warned about as load_all words it)
        idx.update()
        light = idx.select(None, LIGHT_COLUMNS, as_arrow=True)
        names = index_names(idx)
        expr = parse(o.where) if o.where else None
        cols = parse_columns(o.columns)
        names.check(expr, cols, None)
        passing = None  # the runs --where and --negative keep, as the index tells
        if expr is not None:
            passing = _ids(idx.select(expr, ["run_id"], as_arrow=True))
        if o.negative:
            neg = _ids(idx.select(parse("negative"), ["run_id"], as_arrow=True))
            passing = neg if passing is None else _both(passing, neg)
    except (StoreError, OSError):  # the index is derived: without it, every run is read
        return None
    listing = Listing(light, o.name, o.sweep, passing)
    if listing.cyclic():
        return None
    loaded: dict[str, RunRecord] = {}
    tried: set[str] = set()  # each run read (and warned about) once

    def load(ids: list[str]) -> None:
        new = [i for i in dict.fromkeys(ids) if i not in tried]
        tried.update(new)
        loaded.update((r.run_id, r) for r in load_some(store, new))

    if o.states:  # whether a stale run is listed depends on its state now
        stale = listing.stale()
        load(stale)
        listing.set_states(o.states, {r: loaded[r].state.value for r in stale if r in loaded})
    ids = listing.more(limit)
    while True:
        load(ids)
        recs = [loaded[i] for i in dict.fromkeys(ids) if i in loaded]
        problems: list[str] = []
        trust = trust_of(store, recs, problems, idx, index_updated=True)
        out = _listing(store, recs, trust, o, names=names)
        if len(out[0]) >= limit or listing.done:
            break
        ids += listing.more(limit - len(out[0]))  # the index said more would pass than did
    for p in problems:
        warn(p)
    return out, trust


def _ids(table: Any) -> Any:
    """The run ids of an Arrow table, as one Arrow array."""
    return table.column("run_id").combine_chunks()


def _both(a: Any, b: Any) -> Any:
    """The run ids in both Arrow arrays."""
    return a.filter(query_libs().pc.is_in(a, value_set=b))


# ---------------------------------------------------------------------------------------------
# show / export / schema / history / logs
# ---------------------------------------------------------------------------------------------


def _trust_of_run(store: Store, rec: RunRecord) -> Trust | None:
    """The trust flags ``show`` and ``export`` give one run: from its ancestry, or from every
    run's graph (``READ_EVERY_RUN``)."""
    return trust_for(store) if READ_EVERY_RUN else trust_of(store, [rec])


@cli.command("show")
@store_option
@click.argument("run")
def show_cmd(store_path, run):  # type: ignore[no-untyped-def]
    """Show one run in readable sections (RUN: id or unique prefix)."""
    store = open_store(store_path)
    rec = load_one(store, run)
    trust = _trust_of_run(store, rec)
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
        trust = _trust_of_run(store, rec)
        events = run_events(store, rec, namespace=namespace, trust=trust)
        text = "\n".join(
            json.dumps(e, ensure_ascii=False, sort_keys=True, allow_nan=False) for e in events
        )
    else:
        text = _strict_json(export_json(store, rec, every_run=READ_EVERY_RUN), indent=2)
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
