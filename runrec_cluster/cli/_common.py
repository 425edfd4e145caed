"""What every ``runrec`` command shares: the ``cli`` group, ``main()``, the ``--store`` and
``--where/--columns/--sort`` options, console output, escaping and formatting, reading runs.

Imports no other ``runrec_cluster.cli`` module: the command modules import this one.
Exit codes: 0 ok, 1 error or failed run, 2 usage. Errors print one clear message, no traceback
(set RUNREC_DEBUG=1 to see it).
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from datetime import datetime
from typing import Any, TypeVar

import click
from rich.console import Console

from runrec_cluster.api import refresh, refresh_many
from runrec_cluster.capture.hardware import flagged, mismatch_warning
from runrec_cluster.errors import ExpressionError, RunrecError, StoreError
from runrec_cluster.record import SCHEMA_VERSION, RunRecord
from runrec_cluster.store import ReadProblem, Store, layout
from runrec_cluster.views.show import escape

F = TypeVar("F", bound=Callable[..., Any])

STORE_HELP = "Store directory (default: $RUNREC_STORE, else [tool.runrec] store in pyproject.toml, else ./runrec-store)."
WHERE_HELP = (
    "Only runs matching EXPR, e.g. 'config.lr > 0.01 and state == \"failed\"' (docs/query.md)."
)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="runrec-cluster", prog_name="runrec")
def cli() -> None:
    """Record every R&D run while it happens: code, config, data, environment, hardware."""


def main(argv: list[str] | None = None) -> None:
    """The ``runrec`` entry point: runs the group, turns errors into one line and an exit code."""
    try:
        rc = cli.main(args=argv, prog_name="runrec", standalone_mode=False)
    except click.exceptions.Abort:
        click.echo("aborted.", err=True)
        sys.exit(1)
    except click.ClickException as exc:
        exc.show()
        sys.exit(exc.exit_code)
    except ExpressionError as exc:  # a malformed --where / --criteria: a usage error
        if os.environ.get("RUNREC_DEBUG"):
            raise
        click.echo(f"error: {exc}", err=True)
        sys.exit(2)
    except RunrecError as exc:
        if os.environ.get("RUNREC_DEBUG"):
            raise
        click.echo(f"error: {exc}", err=True)
        sys.exit(1)
    except BrokenPipeError:
        sys.exit(0)
    except KeyboardInterrupt:
        click.echo("interrupted.", err=True)
        sys.exit(1)
    sys.exit(rc if isinstance(rc, int) else 0)


# ---------------------------------------------------------------------------------------------
# options
# ---------------------------------------------------------------------------------------------


def store_option(f: F) -> F:
    """``--store PATH`` (passed to the command as ``store_path``)."""
    return click.option("--store", "store_path", default=None, metavar="PATH", help=STORE_HELP)(f)


def query_options(columns_help: str, sort_help: str) -> Callable[[F], F]:
    """``--where EXPR``, ``--columns A,B,...`` and ``--sort COLUMN`` over the flat run view
    (``ls`` and ``table``); each command words what its columns and sort do."""

    def decorate(f: F) -> F:
        f = click.option("--sort", default=None, metavar="COLUMN", help=sort_help)(f)
        f = click.option("--columns", default=None, metavar="A,B,...", help=columns_help)(f)
        return click.option("--where", default=None, metavar="EXPR", help=WHERE_HELP)(f)

    return decorate


def key_values(values: tuple[str, ...], param_hint: str, strip: bool = False) -> dict[str, str]:
    """``KEY=VALUE`` arguments as a dict (keys stripped of spaces with ``strip``); anything else
    is a usage error naming the option."""
    out: dict[str, str] = {}
    for v in values:
        k, eq, val = v.partition("=")
        if strip:
            k = k.strip()
        if not eq or not k:
            raise click.BadParameter(f"{v!r} is not KEY=VALUE.", param_hint=param_hint)
        out[k] = val
    return out


# ---------------------------------------------------------------------------------------------
# output
# ---------------------------------------------------------------------------------------------


def console(stderr: bool = False) -> Console:
    """A rich console on stdout (or stderr); 200 columns (or $COLUMNS) when not a terminal."""
    stream = sys.stderr if stderr else sys.stdout
    width = None if stream.isatty() else int(os.environ.get("COLUMNS", "0") or 0) or 200
    return Console(stderr=stderr, highlight=False, soft_wrap=False, width=width)


def warn(msg: str) -> None:
    console(stderr=True).print(f"[yellow]warning:[/yellow] {msg}", markup=True)


def print_ended(c: Console, rec: RunRecord) -> None:
    """What a command that waited prints when a run ended: ``run ID STATE``, then (on stderr) a
    warning naming each hardware mismatch, so a flagged run cannot pass unnoticed."""
    c.print(f"run {rec.run_id} {esc(state_text(rec))}")
    line = mismatch_warning(rec)
    if line:
        warn(esc(line))


def esc(s: Any) -> str:
    """``s`` as text safe for rich markup, control characters shown escaped."""
    return escape(str(s))


def fmt_time(dt: datetime | None) -> str:
    if dt is None:
        return "-"
    return dt.astimezone().strftime("%Y-%m-%d %H:%M:%S")


def fmt_duration(s: float | None) -> str:
    if s is None:
        return "-"
    if s < 1:
        return f"{s * 1000:.0f}ms"
    if s < 60:
        return f"{s:.1f}s"
    if s < 3600:
        return f"{int(s // 60)}m{int(s % 60):02d}s"
    return f"{int(s // 3600)}h{int(s % 3600 // 60):02d}m"


def fmt_value(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    return str(v)


def short_ids(ids: list[str], minimum: int = 10) -> dict[str, str]:
    """The shortest prefix (at least ``minimum``) that tells each id apart from its neighbours."""
    s = sorted(ids)
    out = {}
    for i, rid in enumerate(s):
        need = minimum
        for j in (i - 1, i + 1):
            if 0 <= j < len(s):
                other = s[j]
                k = 0
                while k < len(rid) and rid[k] == other[k]:
                    k += 1
                need = max(need, k + 1)
        out[rid] = rid[:need]
    return out


def state_text(rec: RunRecord) -> str:
    """``failed (oom)``: the state, and the failure cause when it did not succeed;
    ``succeeded (hardware mismatch)`` when the node did not meet the run's hardware class."""
    notes = []
    if rec.failure is not None and rec.state.value != "succeeded":
        notes.append(rec.failure.cause.value)
    if flagged(rec) and "hardware_mismatch" not in notes:
        notes.append("hardware mismatch")
    return rec.state.value + (f" ({', '.join(notes)})" if notes else "")


# ---------------------------------------------------------------------------------------------
# reading runs
# ---------------------------------------------------------------------------------------------


def open_store(path: str | None, must_exist: bool = True) -> Store:
    s = Store(path)
    if must_exist and not s.exists():
        raise StoreError(
            f"no store at {s.root}. Pass --store PATH or set RUNREC_STORE, or run `runrec demo` to create one."
        )
    return s


def load_all(store: Store, warn_problems: bool = True, check: bool = True) -> list[RunRecord]:
    """Every readable record; unreadable files are reported as warnings, the rest listed.
    Runs that are not terminal are checked with their backend (the job may be gone)."""
    problems: list[ReadProblem] = []
    out = store.load_all(problems)
    if warn_problems:
        _warn_read(store, problems)
    if not check:
        return out
    return _refreshed(store, out, problems)


def load_some(store: Store, run_ids: list[str]) -> list[RunRecord]:
    """``load_all`` for the runs ``run_ids`` only (those that are in the store and fold), in
    that order: the same warnings, the same check of runs that are not terminal."""
    problems: list[ReadProblem] = []
    out = store.load_runs(run_ids, problems)
    _warn_read(store, problems)
    return _refreshed(store, out, problems)


def _warn_read(store: Store, problems: list[ReadProblem]) -> None:
    for p in problems:
        if p.path == layout.run_dir(store.root, p.run_id):  # versions that do not fold
            warn(p.message)
        else:
            warn(f"skipped unreadable record file {p.path}: {p.message}")


def _refreshed(store: Store, out: list[RunRecord], problems: list[ReadProblem]) -> list[RunRecord]:
    """``out`` with the runs that are not terminal checked with their backend (the job may be
    gone), except runs with a read problem."""
    damaged = {p.run_id for p in problems}  # never infer a verdict from a partial history
    try:
        fresh = {
            r.run_id: r for r in refresh_many(store, [r for r in out if r.run_id not in damaged])
        }
    except StoreError as exc:  # a read-only or full store still lists
        warn(
            f"could not record the state of runs whose job is gone ({exc}); shown as last recorded."
        )
        fresh = {}
    return [fresh.get(r.run_id, r) for r in out]


def load_one(store: Store, run: str) -> RunRecord:
    """Run ``run`` (id or unique prefix), checked with its backend when it has not ended."""
    rec = store.load(run)
    if rec.schema_version > SCHEMA_VERSION:
        warn(
            f"run {rec.run_id} was written by a newer record schema (v{rec.schema_version}; this runrec "
            f"reads v{SCHEMA_VERSION}): fields it does not know are not shown. Upgrade runrec-cluster."
        )
    try:
        return refresh(store, rec)
    except StoreError as exc:  # a read-only or full store still shows
        warn(f"could not record the state of run {rec.run_id} ({exc}); shown as last recorded.")
        return rec
