"""``runrec fsck [--repair] [--min-age SECONDS] [--json]``.

A thin layer over ``runrec_cluster.fsck``. Exit 0: no problems (leftover temporary files and
notes do not count); 1: problems found, or remaining after ``--repair``, or the store cannot be
read; 2: usage.
"""

from __future__ import annotations

import json
import sys

import click

from runrec_cluster.cli._common import cli, open_store, store_option
from runrec_cluster.fsck import HINTS, FsckReport, check, repair


def _age(s: float | None) -> str:
    if s is None:
        return "gone"
    if s < 120:
        return f"{s:.0f}s old"
    if s < 7200:
        return f"{s / 60:.0f}min old"
    if s < 172800:
        return f"{s / 3600:.0f}h old"
    return f"{s / 86400:.0f}d old"


def _size(n: int) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1000 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000  # type: ignore[assignment]
    return f"{n} B"


def _plural(n: int, word: str) -> str:
    return f"{n} {word}" if n == 1 else f"{n} {word}s"


@cli.command("fsck")
@store_option
@click.option(
    "--repair",
    "do_repair",
    is_flag=True,
    help="Move damaged files (and leftovers older than --min-age) to STORE/quarantine/, record "
    "every loss in its run, rebuild the query index, then check again. Nothing is deleted.",
)
@click.option(
    "--min-age",
    "min_age",
    type=click.FloatRange(min=0),
    default=3600.0,
    show_default=True,
    metavar="SECONDS",
    help="With --repair: move leftover temporary files and empty run directories only when "
    "older than this (younger ones may belong to a writer that is still writing). 0 moves "
    "them all: only when nothing writes to the store.",
)
@click.option("--json", "as_json", is_flag=True, help="One JSON object (docs/fsck.md).")
@click.pass_context
def fsck_cmd(ctx, store_path, do_repair, min_age, as_json):  # type: ignore[no-untyped-def]
    """Check the store: record versions decode, histories are complete, blobs match their
    hashes, references resolve. Exit 0 when clean (leftover temporary files are named but do
    not fail), 1 when problems are found or remain after --repair."""
    given = ctx.get_parameter_source("min_age") != click.core.ParameterSource.DEFAULT
    if given and not do_repair:
        raise click.UsageError("--min-age goes with --repair.")
    store = open_store(store_path)
    report = repair(store, min_age_s=min_age) if do_repair else check(store)
    if as_json:
        click.echo(json.dumps(report.to_dict(), indent=2, ensure_ascii=False))
    else:
        _print(report)
    sys.exit(report.exit_code)


def _print(report: FsckReport) -> None:
    c = report.counts
    echo = click.echo
    echo(f"runrec fsck {report.store}")
    if report.repair is not None:
        r = report.repair
        found = [f for f in r.found if f.severity != "note"]
        n_p = sum(1 for f in found if f.severity == "problem")
        echo(
            f"found {_plural(n_p, 'problem')} and {_plural(len(found) - n_p, 'leftover')} "
            "before repairing:"
        )
        for f in found:
            echo(f"  {f.severity:<8} {f.kind:<22} {f.path}")
        if r.actions:
            echo("repair:")
            for a in r.actions:
                target = f" -> {a.to}" if a.to else ""
                echo(f"  {a.action:<11} {a.path}{target}")
                if a.action != "quarantine":
                    echo(f"              {a.message}")
        if r.quarantine:
            echo(f"moved aside to {r.quarantine} (list in fsck-repair.json; move back to restore)")
        echo("after repair:")
    echo(
        f"  checked {_plural(c.runs, 'run')} ({_plural(c.versions, 'version')}), "
        f"{_plural(c.blobs, 'blob')} ({_size(c.blob_bytes)}), "
        + (
            f"{_plural(c.packs, 'pack')} ({_plural(c.packed_blobs, 'packed blob')}), "
            if c.packs
            else ""
        )
        + f"{_plural(c.promotions, 'promoted version')}, {_plural(c.retirements, 'retirement')} "
        f"in {report.seconds:.2f}s"
    )
    for f in report.problems:
        echo(f"PROBLEM  {f.kind}: {f.path}")
        echo(f"         {f.message}")
        if f.hint:
            echo(f"         what to do: {f.hint}")
    for f in report.leftovers:
        echo(f"leftover {f.kind}: {f.path} ({_age(f.age_s)})")
    if report.leftovers:
        kinds = sorted({f.kind for f in report.leftovers})
        echo("         " + "; ".join(f"{k}: {fsck_hint(k)}" for k in kinds))
    for f in report.notes:
        echo(f"note     {f.kind}: {f.path}: {f.message}")
    n = len(report.problems)
    if n:
        again = " remain after repair" if report.repair is not None else " found"
        echo(f"{_plural(n, 'problem')}{again}.")
    else:
        tail = (
            f" ({_plural(len(report.leftovers), 'harmless leftover')})" if report.leftovers else ""
        )
        echo(f"clean: no problems{tail}.")


def fsck_hint(kind: str) -> str:
    return HINTS.get(kind, "")
