"""``runrec lineage / annotate / promote / promoted / verify / retire / retirements``.

A thin layer over ``runrec_cluster.lineage`` (graph, annotate, promote, retire, trust); errors
are RunrecErrors (one line, exit 1), usage mistakes are click's (exit 2).
"""

from __future__ import annotations

import json
import os
import sys
from typing import Any

import click
from rich.table import Table
from rich.tree import Tree

from runrec_cluster.cli._common import (
    cli,
    console,
    esc,
    fmt_time,
    open_store,
    store_option,
    warn,
)
from runrec_cluster.cli._table import FLAG_STYLE, flag_markup
from runrec_cluster.lineage.annotate import annotate
from runrec_cluster.lineage.graph import build_graph
from runrec_cluster.lineage.promote import promote, verify
from runrec_cluster.lineage.records import list_retirements, load_records
from runrec_cluster.lineage.refs import promoted_node
from runrec_cluster.lineage.retire import retire
from runrec_cluster.lineage.trust import Trust, trust_for
from runrec_cluster.lineage.walk import lineage
from runrec_cluster.store.codec import to_json_builtins
from runrec_cluster.store.promoted import list_promotions, parse_ref


def _digest(d: str | None) -> str:
    if not d:
        return ""
    kind, _, h = d.partition(":")
    return f"{kind}:{h[:12]}…"


def _node_text(graph: Any, nid: str, trust: Any) -> str:
    n = graph.nodes.get(nid)
    if n is None:
        return esc(nid)
    if n.kind == "run":
        rec = n.record
        state = rec.state.value + (f", {rec.failure.cause.value}" if rec.failure else "")
        text = f"[bold]run[/bold] {rec.run_id[:12]} {esc(rec.name)} ({esc(state)})"
    elif n.kind == "dataset":
        versions = n.info.get("versions")
        text = f"[bold]dataset[/bold] {esc(' | '.join(n.paths))}  {_digest(n.digest)}"
        if versions:
            text += f"  (version {esc(', '.join(versions))})"
    elif n.kind == "artifact":
        text = f"[bold]artifact[/bold] {esc(n.label)}  {_digest(n.digest)}"
    else:
        by = n.promotion.approved_by if n.promotion is not None else ""
        text = f"[bold]promoted[/bold] {esc(n.label)}  {_digest(n.digest)}"
        if by:
            text += f"  (approved by {esc(by)})"
    if trust is not None:
        flags = trust.of(nid)
        if flags:
            mark = trust.marker(nid)
            ids = sorted({f.retirement.id for f in flags})
            state = f" {flags[0].retirement.state}" if mark == "RETIRED" else ""
            text += (
                f"  [{FLAG_STYLE[mark]}]{mark}{state}[/{FLAG_STYLE[mark]}]"
                f" [dim](retirement {', '.join(ids)})[/dim]"
            )
    return text


def _legend(c: Any, trust: Any, nodes: set[str]) -> None:
    """Each retirement that flags a shown node, once: what was retired, when, why."""
    if trust is None:
        return
    seen = {f.retirement.id: f.retirement for n in nodes for f in trust.of(n)}
    for r in sorted(seen.values(), key=lambda r: r.id):
        c.print(
            f"[bold]retirement {r.id}[/bold]: {esc(r.target_label)} [bold red]{r.state}[/bold red] "
            f"by {esc(r.by)} at {fmt_time(r.at)}: {esc(r.reason)}"
            + (f" (superseded by {esc(r.superseded_by)})" if r.superseded_by else "")
        )


def _add(tree_obj: Any, graph: Any, t: dict[str, Any], trust: Any) -> None:
    for child in t["children"]:
        text = _node_text(graph, child["node"], trust)
        if child.get("edge") == "same content":
            text = "[dim](same content)[/dim] " + text
        if child.get("repeat"):
            text += " [dim](shown above)[/dim]"
        if child.get("more"):
            text += f" [dim]… {child['more']} more (raise --depth)[/dim]"
        sub = tree_obj.add(text)
        _add(sub, graph, child, trust)


def _graph_and_trust(store: Any) -> tuple[Any, Any]:
    problems: list[str] = []
    records = load_records(store, problems)
    rets = list_retirements(store, problems)
    for p in problems:
        warn(p)
    graph = build_graph(store, records)
    return graph, (Trust(graph, rets) if rets else None)


@cli.command("lineage")
@store_option
@click.argument("target")
@click.option("--down", "direction", flag_value="down", help="Only what was made from TARGET.")
@click.option("--up", "direction", flag_value="up", help="Only what TARGET was made from.")
@click.option("--depth", type=click.IntRange(min=0), default=None, help="Stop N steps from TARGET.")
@click.option("--json", "as_json", is_flag=True, help="Nodes, edges and trees as JSON, for tools.")
def lineage_cmd(store_path, target, direction, depth, as_json):  # type: ignore[no-untyped-def]
    """Where TARGET came from and what was made from it, transitively.

    TARGET: a run id or unique prefix; a dataset path or content hash (blake3:... or sha256:...); an
    artifact RUN:name; a promoted version NAME@vN. Retired and suspect nodes are marked.
    """
    problems: list[str] = []
    try:
        found = lineage(
            open_store(store_path), target, direction=direction, depth=depth, problems=problems
        )
    finally:
        for p in problems:
            warn(p)
    if as_json:
        click.echo(json.dumps(found.to_json(), indent=1, default=str))
        return
    graph, trust = found.graph, found.trust
    c = console()
    for d, ts in found.trees.items():
        for t in ts:
            title = "made from (upstream)" if d == "up" else "made into (downstream)"
            root = Tree(f"[dim]{title} of[/dim] " + _node_text(graph, t["node"], trust))
            _add(root, graph, t, trust)
            if not t["children"]:
                root.add("[dim](nothing recorded)[/dim]")
            c.print(root)
    shown = found.node_ids()
    _legend(c, trust, shown)


@cli.command("annotate")
@store_option
@click.argument("run")
@click.option(
    "--verdict",
    type=click.Choice(["negative", "positive", "inconclusive"]),
    required=True,
    help="What you concluded from the run.",
)
@click.option(
    "--blocks",
    type=click.Choice(["run", "future-work"]),
    default=None,
    help="What a negative verdict rules out: this run's result, or a line of future work.",
)
@click.option(
    "--note",
    required=True,
    help="Why: an invalid config, an unstable dependency, a bad hypothesis...",
)
@click.option("--by", "by", default=None, help="Who concluded it (default: you).")
def annotate_cmd(store_path, run, verdict, blocks, note, by):  # type: ignore[no-untyped-def]
    """Add a verdict to RUN, as a new version of its record (nothing is rewritten)."""
    store = open_store(store_path)
    rid, a = annotate(store, run, verdict=verdict, note=note, blocks=blocks, by=by)
    blocks_txt = f", blocks {a.blocks}" if a.blocks else ""
    c = console()
    c.print(f"annotated run {rid}: [bold]{a.verdict}[/bold]{blocks_txt} (by {esc(a.by)})")
    c.print(f"  note: {esc(a.note)}")
    c.print(f"  runrec show {rid[:12]}    runrec ls --negative    runrec history {rid[:12]}")


@cli.command("promote")
@store_option
@click.argument("run")
@click.argument("artifact")
@click.option(
    "--to", "to", required=True, metavar="NAME", help="The promoted name (letters, digits, . _ -)."
)
@click.option(
    "--criteria",
    default=None,
    metavar="EXPR",
    help='Conditions on the run\'s metrics, e.g. "val_acc >= 0.9 and loss < 1".',
)
@click.option(
    "--approved-by", default=None, metavar="WHO", help="A person or a process (default: you)."
)
def promote_cmd(store_path, run, artifact, to, criteria, approved_by):  # type: ignore[no-untyped-def]
    """Promote ARTIFACT of RUN to STORE/promoted/NAME/vN (read-only), after checking the run
    (succeeded, not retired or suspect), the criteria and the artifact's hash."""
    store = open_store(store_path)
    p = promote(store, run, artifact, to=to, criteria=criteria, approved_by=approved_by)
    c = console()
    copy = os.path.join(store.root, "promoted", p.name, f"v{p.version}", p.files)
    c.print(f"promoted artifact {esc(p.artifact)} of run {p.run_id} as [bold]{p.ref}[/bold]")
    c.print(f"  copy: {esc(copy)} (read-only)")
    if p.from_kept:
        c.print(
            f"  from: the run's kept copy {esc(os.path.join(store.root, p.from_kept))} "
            f"({esc(p.source_path)} changed or is gone since the run)"
        )
    c.print(f"  digest: {p.digest}")
    if p.criteria:
        vals = ", ".join(f"{k} = {v}" for k, v in p.values.items())
        c.print(f"  criteria: {esc(p.criteria)}  ({esc(vals)})")
    c.print(f"  approved by: {esc(p.approved_by)}")
    c.print(f"  runrec verify {p.ref}    runrec promoted    runrec lineage {p.ref} --up")


@cli.command("promoted")
@store_option
@click.argument("name", required=False)
@click.option("--json", "as_json", is_flag=True, help="A JSON list, for tools.")
def promoted_cmd(store_path, name, as_json):  # type: ignore[no-untyped-def]
    """List promoted versions (of NAME, or all)."""
    store = open_store(store_path)
    entries = list_promotions(store, name)
    graph, trust = _graph_and_trust(store) if entries else (None, None)

    def mark(e: Any) -> str:
        return trust.marker(promoted_node(e.name, e.version)) if trust is not None else ""

    if as_json:
        out = []
        for e in entries:
            row: dict[str, Any] = {"ref": e.ref, "path": e.path, "problem": e.problem}
            if e.promotion is not None:
                row.update(to_json_builtins(e.promotion))
            if trust is not None:
                row["flags"] = [f.to_json() for f in trust.of(promoted_node(e.name, e.version))]
            out.append(row)
        click.echo(json.dumps(out, indent=1))
        return
    c = console()
    if not entries:
        c.print("nothing promoted." if name is None else f"nothing promoted as {esc(name)}.")
        return
    flagged = any(mark(e) for e in entries) or any(e.promotion is None for e in entries)
    t = Table(box=None, pad_edge=False, header_style="bold")
    cols = ("promoted", "run", "artifact", "digest", "approved by", "at", "criteria")
    for col in cols + (("trust",) if flagged else ()):
        t.add_column(col, no_wrap=col != "criteria", min_width=12 if col == "criteria" else None)
    for e in entries:
        p = e.promotion
        if p is None:
            row = [e.ref, "-", "-", "-", "-", "-", esc(e.problem or "")]
            t.add_row(*row, "[red]INCOMPLETE[/red]")
            continue
        m = mark(e)
        row = [
            p.ref,
            p.run_id[:12],
            esc(p.artifact),
            _digest(p.digest),
            esc(p.approved_by),
            fmt_time(p.promoted_at),
            esc(p.criteria or "-"),
        ]
        t.add_row(*row, *([flag_markup(m)] if flagged else []))
    c.print(t)


@cli.command("verify")
@store_option
@click.argument("ref", metavar="NAME[@vN]")
def verify_cmd(store_path, ref):  # type: ignore[no-untyped-def]
    """Re-hash promoted copies (every version of NAME, or NAME@vN); exit 1 unless all are intact."""
    store = open_store(store_path)
    name, version = parse_ref(ref)
    checks = verify(store, name, version)
    trust = trust_for(store)
    c = console()
    for ch in checks:
        if ch.intact:
            c.print(f"{ch.ref}: [green]intact[/green] ({ch.expected})")
        else:
            c.print(f"{ch.ref}: [bold red]NOT INTACT[/bold red]: {esc(ch.message)}")
        n, _, v = ch.ref.partition("@v")
        flags = trust.of(promoted_node(n, int(v))) if trust is not None else []
        if flags:  # the bytes are intact; what they were made from is not trusted
            c.print(f"  [bold yellow]{esc(flags[0].describe())}[/bold yellow]")
    if not all(ch.intact for ch in checks):
        sys.exit(1)


@cli.command("retire")
@store_option
@click.argument("target")
@click.option(
    "--state",
    type=click.Choice(["superseded", "invalidated", "withdrawn"]),
    required=True,
    help="Why it is retired: replaced by something better, found wrong, or taken back.",
)
@click.option("--reason", required=True, help="What happened, for whoever reads the record later.")
@click.option(
    "--superseded-by", default=None, metavar="X", help="What replaces it (any TARGET form)."
)
@click.option(
    "--json", "as_json", is_flag=True, help="The retirement record and downstream as JSON."
)
def retire_cmd(store_path, target, state, reason, superseded_by, as_json):  # type: ignore[no-untyped-def]
    """Retire TARGET (dataset path or hash, run, artifact RUN:name, promoted NAME@vN): write a
    retirement record and list everything downstream, which shows as SUSPECT from now on.
    Nothing is deleted or rewritten."""
    if superseded_by is not None and state != "superseded":
        raise click.UsageError("--superseded-by goes with --state superseded.")
    store = open_store(store_path)
    r, downstream = retire(store, target, state=state, reason=reason, superseded_by=superseded_by)
    graph = build_graph(store)
    if as_json:
        doc = to_json_builtins(r)
        doc["downstream_nodes"] = [graph.nodes[n].to_json() for n in downstream if n in graph.nodes]
        click.echo(json.dumps(doc, indent=1))
        return
    c = console()
    c.print(
        f"retired {_node_text(graph, r.target, None)}  [bold red]{r.state}[/bold red]: {esc(r.reason)}"
    )
    if r.superseded_by:
        c.print(f"  superseded by {_node_text(graph, r.superseded_by, None)}")
    c.print(f"  retirement {r.id} by {esc(r.by)} at {fmt_time(r.at)}")
    groups: dict[str, list[str]] = {"run": [], "artifact": [], "promoted": [], "dataset": []}
    for n in downstream:
        if n in graph.nodes:
            groups[graph.nodes[n].kind].append(n)
    if not downstream:
        c.print("nothing downstream is recorded.")
        return
    counts = ", ".join(
        f"{len(v)} {k if k != 'promoted' else 'promoted version'}{'s' if len(v) != 1 else ''}"
        for k, v in groups.items()
        if v
    )
    c.print(f"downstream, now [bold yellow]SUSPECT[/bold yellow] ({counts}):")
    titles = {
        "run": "runs",
        "artifact": "artifacts",
        "promoted": "promoted versions",
        "dataset": "datasets (same content)",
    }
    for kind, ids in groups.items():
        if ids:
            c.print(f"  {titles[kind]}:")
            for n in ids:
                c.print(f"    {_node_text(graph, n, None)}")
    c.print(f"  runrec lineage {esc(target)} --down    runrec ls")


@cli.command("retirements")
@store_option
@click.option("--json", "as_json", is_flag=True, help="A JSON list, for tools.")
def retirements_cmd(store_path, as_json):  # type: ignore[no-untyped-def]
    """List retirement records, oldest first."""
    store = open_store(store_path)
    problems: list[str] = []
    rets = list_retirements(store, problems)
    for p in problems:
        warn(p)
    if as_json:
        click.echo(json.dumps([to_json_builtins(r) for r in rets], indent=1))
        return
    c = console()
    if not rets:
        c.print("nothing retired.")
        return
    t = Table(box=None, pad_edge=False, header_style="bold")
    for col in ("retirement", "at", "by", "state", "target", "reason", "superseded by"):
        t.add_column(col, no_wrap=col not in ("reason", "target"))
    for r in rets:
        t.add_row(
            r.id,
            fmt_time(r.at),
            esc(r.by),
            r.state,
            esc(f"{r.target_label} ({r.target.split(':', 1)[0]})"),
            esc(r.reason),
            esc(r.superseded_by or "-"),
        )
    c.print(t)
