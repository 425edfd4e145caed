"""``runrec rerun`` and ``runrec diff``.

A thin layer over ``runrec_cluster.rerun`` and ``views.diff``; refusals are RunrecErrors (one
line, exit 1), usage mistakes are click's (exit 2).
"""

from __future__ import annotations

import json
import sys
from typing import Any

import click
from rich.table import Table

from runrec_cluster.cli._common import (
    cli,
    console,
    esc,
    key_values,
    load_one,
    open_store,
    print_ended,
    state_text,
    store_option,
)
from runrec_cluster.rerun import rerun, rerun_sweep
from runrec_cluster.views import verdict
from runrec_cluster.views.diff import Change, diff, relation, same_sections, to_json


def _short(v: Any, width: int = 60) -> str:
    s = v if isinstance(v, str) else json.dumps(v, default=str, ensure_ascii=False)
    if v is None:
        s = "-"
    return s if len(s) <= width else s[: width - 1] + "…"


@cli.command("rerun")
@store_option
@click.argument("run", required=False)
@click.option(
    "--sweep",
    default=None,
    metavar="ID",
    help="Rerun every run of this sweep (id or prefix) as one new sweep.",
)
@click.option(
    "--hardware",
    default=None,
    metavar="CLASS",
    help="Run on this hardware class instead of the original's.",
)
@click.option(
    "--set",
    "sets",
    multiple=True,
    metavar="KEY=VALUE",
    help="Override a config key (coerced to the recorded type); repeatable.",
)
@click.option(
    "--backend",
    default=None,
    help="Run on this backend (local, slurm, ray) instead of the original's.",
)
@click.option("--reason", default="", help="Why: kept in the new record.")
@click.option(
    "--allow-changed-inputs",
    is_flag=True,
    help="Rerun even if a recorded input changed (recorded as a difference).",
)
@click.option(
    "--workdir",
    default=None,
    metavar="DIR",
    type=click.Path(file_okay=False),
    help="Materialize the code here (default: STORE/worktrees/<id>).",
)
@click.option(
    "--env",
    "env",
    type=click.Choice(["recorded", "current"]),
    default=None,
    help="recorded: run in a virtual environment with the original's distributions and Python "
    "(built with uv, cached by package set); current: today's environment (declared).",
)
@click.option(
    "--with",
    "with_packages",
    multiple=True,
    metavar="PKG==VER",
    help="Install this version into the recreated environment (declared; implies --env "
    "recorded); repeatable.",
)
@click.option(
    "--allow-missing",
    is_flag=True,
    help="--env recorded: build without the distributions the package index lacks (listed).",
)
@click.option("--wait", is_flag=True, help="Wait for the rerun(s) to end; exit 1 when one fails.")
@click.option(
    "--check",
    is_flag=True,
    help="Wait, then judge and record whether the rerun reproduced the original (metrics, "
    "artifacts); exit 1 when it did not.",
)
@click.option(
    "--rtol",
    type=click.FloatRange(min=0),
    default=0.0,
    show_default=True,
    help="--check: metrics within this relative tolerance count as reproduced.",
)
def rerun_cmd(  # type: ignore[no-untyped-def]
    store_path, run, sweep, hardware, sets, backend, reason, allow_changed_inputs, workdir,
    env, with_packages, allow_missing, wait, check, rtol,
):  # fmt: skip
    """Rerun RUN from its record (code, config, inputs) as a new run that points back to it:
    runrec rerun RUN [--hardware CLASS] [--set key=value ...] [--env recorded [--with PKG==VER]]
    [--check [--rtol X]]   or   runrec rerun --sweep ID."""
    if bool(run) == bool(sweep):
        raise click.UsageError("give a RUN, or --sweep ID (not both).")
    if with_packages and env == "current":
        raise click.UsageError(
            "--with installs into the recreated environment: use --env recorded."
        )
    if rtol and not check:
        raise click.UsageError("--rtol is the tolerance of --check: add --check.")
    store = open_store(store_path)
    c = console()
    err = console(stderr=True)
    kw = dict(
        hardware=hardware,
        overrides=key_values(sets, "--set", strip=True),
        backend=backend,
        reason=reason,
        allow_changed_inputs=allow_changed_inputs,
        workdir=workdir,
        echo=lambda m: err.print(esc(m)),
        env=env,
        with_packages=list(with_packages),
        allow_missing=allow_missing,
    )
    handles = rerun_sweep(store, sweep, **kw) if sweep else [rerun(store, run, **kw)]
    for h in handles:
        rec = store.load(h.run_id)
        b = rec.execution.backend if rec.execution else "?"
        hw = (
            f", hardware {rec.execution.hardware}"
            if rec.execution and rec.execution.hardware
            else ""
        )
        c.print(f"submitted rerun [bold]{h.run_id}[/bold] of {rec.rerun_of} ({b}{esc(hw)})")
        for d in rec.rerun.intended if rec.rerun else []:
            c.print(f"  intended: {esc(d.what)}: {esc(_short(d.before))} -> {esc(_short(d.after))}")
    first = handles[0].run_id
    orig = store.load(first).rerun_of or ""
    if sweep:
        sid = store.load(first).sweep_id or ""
        c.print(f"  runrec ls --sweep {sid[:12]}    runrec diff {orig[:12]} {first[:12]}")
    else:
        c.print(f"  runrec show {first[:12]}    runrec diff {orig[:12]} {first[:12]}    runrec ls")
    if any(store.load(h.run_id).execution.backend == "ray" for h in handles) and not wait:  # type: ignore[union-attr]
        c.print("  (ray: waiting, since Ray stops a run when its submitting process exits)")
        wait = True
    if wait or check:
        bad = 0
        for h in handles:
            rec = h.wait()
            print_ended(c, rec)
            bad += rec.state.value != "succeeded"
            if check:
                orig_rec = store.load(rec.rerun_of or "")
                rep = verdict.check(store, orig_rec, rec, rtol)
                verdict.record_check(store, rec.run_id, rep)
                for line in verdict.describe(rep):
                    c.print(esc(line))
                bad += not verdict.reproduced(rep) and rec.state.value == "succeeded"
        if bad:
            sys.exit(1)


@cli.command("diff")
@store_option
@click.argument("a")
@click.argument("b")
@click.option("--json", "as_json", is_flag=True, help="One JSON document for tools.")
@click.option(
    "--all",
    "show_all",
    is_flag=True,
    help="Also list package differences one by one (default: counted).",
)
def diff_cmd(store_path, a, b, as_json, show_all):  # type: ignore[no-untyped-def]
    """Compare two runs: code, config, inputs, launch and node environment, determinism
    settings, hardware class, scheduler resources, state, metrics, artifacts. Each difference is labelled intended (declared when
    the rerun was made) or incidental."""
    store = open_store(store_path)
    ra, rb = load_one(store, a), load_one(store, b)
    if as_json:
        click.echo(json.dumps(to_json(store, ra, rb), indent=2, default=str, ensure_ascii=False))
        return
    c = console()
    changes = diff(store, ra, rb)
    for tag, r in (("A", ra), ("B", rb)):
        why = f'  reason: "{r.rerun.reason}"' if r.rerun and r.rerun.reason else ""
        c.print(f"[bold]{tag}[/bold] {r.run_id}  {esc(r.name)}  {esc(state_text(r))}{esc(why)}")
    c.print(esc(relation(ra, rb)))
    shown = changes
    if not show_all:  # one line per package list, not one per package
        shown = []
        counted: dict[tuple[str, str], list[Any]] = {}
        for ch in changes:
            head, _, _ = ch.key.rpartition(".")
            if head.endswith(".packages"):
                counted.setdefault((head, ch.label), []).append(ch)
            else:
                shown.append(ch)

        for (head, label), chs in counted.items():
            names = ", ".join(
                f"{x.key.rpartition('.')[2]} {x.a or '-'}->{x.b or '-'}" for x in chs[:4]
            )
            more = f" (+{len(chs) - 4} more; --all lists them)" if len(chs) > 4 else ""
            shown.append(Change(chs[0].section, head, f"{len(chs)} differ", names + more, label))
    if shown:
        t = Table(box=None, pad_edge=False, header_style="bold")
        for col in ("section", "key", "A", "B", "difference"):
            t.add_column(col, no_wrap=col in ("section", "difference"))
        for ch in shown:
            style = "cyan" if ch.label == "intended" else "yellow"
            label = f"[{style}]{ch.label}[/{style}]"
            b_text = _short(ch.b) + (f"  ({ch.note})" if ch.note else "")
            t.add_row(ch.section, esc(ch.key), esc(_short(ch.a)), esc(b_text), label)
        c.print(t)
    else:
        c.print("no differences.")
    same = same_sections(changes)
    if same:
        c.print(f"same: {', '.join(same)}")
