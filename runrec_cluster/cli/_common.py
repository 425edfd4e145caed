"""The ``runrec`` command: a thin layer over the Python API.

Exit codes: 0 ok, 1 error or failed run, 2 usage. Errors print one clear message, no traceback
(set RUNREC_DEBUG=1 to see it).
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import click

from runrec_cluster.errors import ExpressionError, RunrecError, StoreError

STORE_HELP = "Store directory (default: $RUNREC_STORE, else [tool.runrec] store in pyproject.toml, else ./runrec-store)."


def _store_opt(f: Callable[..., Any]) -> Callable[..., Any]:
    return click.option("--store", "store_path", default=None, metavar="PATH", help=STORE_HELP)(f)


def _open_store(path: str | None, must_exist: bool = True):  # type: ignore[no-untyped-def]
    from runrec_cluster.errors import StoreError
    from runrec_cluster.store import Store

    s = Store(path)
    if must_exist and not s.exists():
        raise StoreError(
            f"no store at {s.root}. Pass --store PATH or set RUNREC_STORE, or run `runrec demo` to create one."
        )
    return s


def _console(stderr: bool = False):  # type: ignore[no-untyped-def]
    from rich.console import Console

    stream = sys.stderr if stderr else sys.stdout
    width = None if stream.isatty() else int(os.environ.get("COLUMNS", "0") or 0) or 200
    return Console(stderr=stderr, highlight=False, soft_wrap=False, width=width)


def _warn(msg: str) -> None:
    _console(stderr=True).print(f"[yellow]warning:[/yellow] {msg}", markup=True)


def _esc(s: Any) -> str:
    from runrec_cluster.views.show import escape

    return escape(str(s))


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="runrec-cluster", prog_name="runrec")
def cli() -> None:
    """Record every R&D run while it happens: code, config, data, environment, hardware."""


# ---------------------------------------------------------------------------------------------
# ls
# ---------------------------------------------------------------------------------------------


def _load_all(store, warn=True, check=True):  # type: ignore[no-untyped-def]
    """Every readable record; unreadable files are reported as warnings, the rest listed.
    Runs that are not terminal are checked with their backend (the job may be gone)."""
    from runrec_cluster.api import refresh_many
    from runrec_cluster.record import fold
    from runrec_cluster.store import ReadProblem

    out = []
    damaged = set()
    for run_id in store.run_ids():
        problems: list[ReadProblem] = []
        vs = store.versions(run_id, problems)
        if problems:
            damaged.add(run_id)  # never infer a verdict from a partly unreadable history
        for p in problems:
            if warn:
                _warn(f"skipped unreadable record file {p.path}: {p.message}")
        if not vs:
            continue
        try:
            rec = fold(vs)
        except Exception as exc:  # a version that decodes but does not fold
            if warn:
                _warn(f"run {run_id} does not fold into a record ({exc}); see `runrec fsck`")
            continue
        out.append(rec)
    if check:
        try:
            fresh = {
                r.run_id: r
                for r in refresh_many(store, [r for r in out if r.run_id not in damaged])
            }
        except StoreError as exc:  # a read-only or full store still lists
            _warn(
                f"could not record the state of runs whose job is gone ({exc}); "
                "shown as last recorded."
            )
            fresh = {}
        out = [fresh.get(r.run_id, r) for r in out]
    return out


def _short_ids(ids: list[str], minimum: int = 10) -> dict[str, str]:
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


def _fmt_time(dt: datetime | None) -> str:
    if dt is None:
        return "-"
    return dt.astimezone().strftime("%Y-%m-%d %H:%M:%S")


def _fmt_dur(s: float | None) -> str:
    if s is None:
        return "-"
    if s < 1:
        return f"{s * 1000:.0f}ms"
    if s < 60:
        return f"{s:.1f}s"
    if s < 3600:
        return f"{int(s // 60)}m{int(s % 60):02d}s"
    return f"{int(s // 3600)}h{int(s % 3600 // 60):02d}m"


def _fmt_val(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    return str(v)


def _state_text(rec) -> str:  # type: ignore[no-untyped-def]
    s = rec.state.value
    if rec.failure is not None and rec.state.value != "succeeded":
        s += f" ({rec.failure.cause.value})"
    return s


_STATE_STYLE = {
    "succeeded": "green",
    "failed": "red",
    "cancelled": "yellow",
    "running": "cyan",
    "submitted": "blue",
}


def _ls_row(rec, trust=None) -> dict[str, Any]:  # type: ignore[no-untyped-def]
    node = rec.node
    flags = trust.of_run(rec.run_id) if trust is not None else []
    return {
        "run_id": rec.run_id,
        "name": rec.name,
        "state": rec.state.value,
        "cause": rec.failure.cause.value if rec.failure else None,
        "backend": rec.execution.backend if rec.execution else None,
        "job_id": (rec.execution.scheduler.get("job_id") if rec.execution else None),
        "sweep_id": rec.sweep_id,
        "sweep_index": rec.sweep_index,
        "created_at": rec.created_at.isoformat() if rec.created_at else None,
        "duration_s": rec.duration_s,
        "host": node.hostname if node else None,
        "metrics": rec.metrics,
        "trust": trust.marker(f"run:{rec.run_id}") if flags else None,
        "retirements": sorted({f.retirement.id for f in flags}),
        "rerun_of": rec.rerun_of,
    }


@cli.command("ls")
@_store_opt
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
    help="Show these columns of the flat run view (docs/query.md).",
)
@click.option(
    "--sort",
    default=None,
    metavar="COLUMN",
    help="Sort by COLUMN (COLUMN:desc or -COLUMN: highest first; missing values last).",
)
def ls_cmd(
    store_path, states, name, sweep, limit, negative, as_json, where=None, columns=None, sort=None
):  # type: ignore[no-untyped-def]
    """List runs, newest last. Runs built on something retired are marked SUSPECT."""
    from runrec_cluster.record import RunState

    valid = {s.value for s in RunState}
    for s in states:
        if s not in valid:
            raise click.BadParameter(
                f"{s!r} is not a state; choose from {', '.join(sorted(valid))}.",
                param_hint="--state",
            )
    store = _open_store(store_path)
    recs = _load_all(store)
    from runrec_cluster.lineage.trust import trust_for

    problems: list[str] = []
    trust = trust_for(store, recs, problems)  # None (nothing read) when nothing was retired
    for p in problems:
        _warn(p)
    if states:
        recs = [r for r in recs if r.state.value in states]
    if name:
        recs = [r for r in recs if name in r.name]
    if sweep:
        sw = sweep.lower()
        recs = [r for r in recs if r.sweep_id and r.sweep_id.startswith(sw)]
    recs.sort(key=lambda r: (r.created_at or datetime.min.replace(tzinfo=UTC), r.run_id))
    from runrec_cluster.rerun.core import order_with_reruns

    ordered = order_with_reruns(recs)  # a rerun right after its original
    recs = [r for r, _ in ordered]
    depth = {r.run_id: d for r, d in ordered}
    if negative:
        from runrec_cluster.lineage.annotate import negatives

        keep = {n.record.run_id for n in negatives(recs)}
        recs = [r for r in recs if r.run_id in keep]
    from runrec_cluster.cli.query import ls_select, print_rows

    recs, rows, cols = ls_select(store, recs, trust, where, columns, sort)
    if limit:
        recs, rows = recs[-limit:], (rows[-limit:] if rows is not None else None)
    if cols and not negative:
        if as_json:
            click.echo(
                json.dumps([{c: r.get(c) for c in cols} for r in rows], indent=1, default=str)
            )
        else:
            print_rows(rows, cols)
        return
    if negative:
        from runrec_cluster.cli.lineage import print_negatives

        print_negatives(recs, trust, as_json)
        return
    if as_json:
        click.echo(json.dumps([_ls_row(r, trust) for r in recs], indent=1, default=str))
        return
    _print_table(recs, trust, depth)


def _rerun_mark(rec, depth: int) -> str:  # type: ignore[no-untyped-def]
    """``↳ `` (indented by depth) before a rerun listed under its original; ``rerun `` before
    one whose original is not listed."""
    if depth:
        return "  " * (depth - 1) + "↳ "
    return "rerun " if rec.rerun_of else ""


def _mark(marker: str) -> str:
    style = {"RETIRED": "bold red", "SUSPECT": "bold yellow"}.get(marker, "")
    return f"[{style}]{marker}[/{style}]" if style else ""


def _print_table(recs, trust=None, depth=None) -> None:  # type: ignore[no-untyped-def]
    from rich.table import Table

    short = _short_ids([r.run_id for r in recs])
    metric_keys: list[str] = []
    for r in recs:
        for k in r.metrics:
            if k not in metric_keys and len(metric_keys) < 3:
                metric_keys.append(k)
    marks = {r.run_id: trust.marker(f"run:{r.run_id}") for r in recs} if trust else {}
    trust_col = ["trust"] if any(marks.values()) else []
    t = Table(box=None, pad_edge=False, header_style="bold")
    for col in (
        "id",
        "name",
        "state",
        *trust_col,
        "backend",
        "created",
        "duration",
        "host",
        *metric_keys,
    ):
        t.add_column(_esc(col), no_wrap=col not in ("name",))
    for r in recs:
        node = r.node
        backend = r.execution.backend if r.execution else "-"
        job = r.execution.scheduler.get("job_id") if r.execution else None
        if job:
            backend += f" {job}"
        st = _state_text(r)
        style = _STATE_STYLE.get(r.state.value, "")
        t.add_row(
            short[r.run_id],
            _esc(
                _rerun_mark(r, (depth or {}).get(r.run_id, 0))
                + r.name
                + (f" [{r.sweep_index}]" if r.sweep_index is not None else "")
            ),
            f"[{style}]{_esc(st)}[/{style}]" if style else _esc(st),
            *([_mark(marks[r.run_id])] if trust_col else []),
            _esc(backend),
            _fmt_time(r.created_at),
            _fmt_dur(r.duration_s),
            _esc(node.hostname if node else "-"),
            *[_esc(_fmt_val(r.metrics[k])) if k in r.metrics else "-" for k in metric_keys],
        )
    c = _console()
    if not recs:
        c.print("no runs match.")
        return
    c.print(t)


# ---------------------------------------------------------------------------------------------
# show / export / schema
# ---------------------------------------------------------------------------------------------


def _load_one(store, run):  # type: ignore[no-untyped-def]
    from runrec_cluster.api import refresh

    rec = store.load(run)
    from runrec_cluster.record import SCHEMA_VERSION

    if rec.schema_version > SCHEMA_VERSION:
        _warn(
            f"run {rec.run_id} was written by a newer record schema (v{rec.schema_version}; this runrec "
            f"reads v{SCHEMA_VERSION}): fields it does not know are not shown. Upgrade runrec-cluster."
        )
    try:
        return refresh(store, rec)
    except StoreError as exc:  # a read-only or full store still shows
        _warn(f"could not record the state of run {rec.run_id} ({exc}); shown as last recorded.")
        return rec


@cli.command("show")
@_store_opt
@click.argument("run")
def show_cmd(store_path, run):  # type: ignore[no-untyped-def]
    """Show one run in readable sections (RUN: id or unique prefix)."""
    store = _open_store(store_path)
    rec = _load_one(store, run)
    from runrec_cluster.lineage.trust import trust_for
    from runrec_cluster.store.promoted import list_promotions
    from runrec_cluster.views.show import render

    trust = trust_for(store)
    promoted = [
        e.promotion
        for e in list_promotions(store)
        if e.promotion and e.promotion.run_id == rec.run_id
    ]
    render(
        _console(), store, rec, flags=trust.of_run(rec.run_id) if trust else [], promoted=promoted
    )


@cli.command("export")
@_store_opt
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
    store = _open_store(store_path)
    rec = _load_one(store, run)
    if fmt == "openlineage":
        from runrec_cluster.lineage.trust import trust_for
        from runrec_cluster.views.openlineage import run_events

        events = run_events(store, rec, namespace=namespace, trust=trust_for(store))
        text = "\n".join(json.dumps(e, ensure_ascii=False, sort_keys=True) for e in events)
    else:
        from runrec_cluster.views.export import export_json

        text = json.dumps(export_json(store, rec), indent=2, ensure_ascii=False)
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
    type=click.Choice(["record", "version"]),
    default="record",
    show_default=True,
    help="The folded run record, or one stored version file.",
)
def schema_cmd(of):  # type: ignore[no-untyped-def]
    """Print the JSON Schema of the record, generated from the Structs."""
    import msgspec

    from runrec_cluster.record import RecordVersion, RunRecord

    click.echo(
        json.dumps(msgspec.json.schema(RunRecord if of == "record" else RecordVersion), indent=2)
    )


@cli.command("history")
@_store_opt
@click.argument("run")
def history_cmd(store_path, run):  # type: ignore[no-untyped-def]
    """List every stored version of a run, oldest first."""
    from rich.table import Table

    store = _open_store(store_path)
    run_id = store.resolve(run)
    vs = sorted(store.versions(run_id), key=lambda v: (v.seq, v.written_at))
    t = Table(box=None, header_style="bold")
    for col in ("seq", "written", "event", "writer", "fields"):
        t.add_column(_esc(col))
    for v in vs:
        t.add_row(
            str(v.seq),
            _fmt_time(v.written_at),
            v.event,
            _esc(f"{v.writer.role}@{v.writer.host}:{v.writer.pid}"),
            _esc(", ".join(sorted(v.patch))),
        )
    _console().print(t)


@cli.command("logs")
@_store_opt
@click.argument("run")
@click.option("--stderr", "which", flag_value="stderr", help="Show stderr (default: both).")
@click.option("--stdout", "which", flag_value="stdout", help="Show stdout.")
def logs_cmd(store_path, run, which):  # type: ignore[no-untyped-def]
    """Print a run's captured stdout and stderr (local backend; Slurm and Ray keep their own)."""
    store = _open_store(store_path)
    rec = store.load(run)
    d = (rec.execution.log_dir if rec.execution else None) or store.log_dir(rec.run_id)
    found = False
    for name in ("stdout", "stderr"):
        if which and which != name:
            continue
        path = os.path.join(d, f"{name}.txt")
        if os.path.exists(path):
            found = True
            click.echo(f"==> {path} <==", err=True)
            with open(path, encoding="utf-8", errors="replace") as f:
                sys.stdout.write(f.read())
    if not found:
        click.echo(f"no logs for run {rec.run_id} in {d}.", err=True)


@cli.command("cancel")
@_store_opt
@click.argument("run")
def cancel_cmd(store_path, run):  # type: ignore[no-untyped-def]
    """Cancel a run that has not ended."""
    from runrec_cluster.api import RunHandle

    store = _open_store(store_path)
    rid = store.resolve(run)
    RunHandle(store, rid).cancel()
    click.echo(f"cancelled {rid} (state: {store.load(rid).state.value})")


@cli.command("hash")
@_store_opt
@click.argument("path", type=click.Path(exists=False))
@click.option(
    "--algo",
    type=click.Choice(["blake3", "sha256"]),
    default=None,
    help="blake3 (the default, what runs record; b3sum prints the same hex) or sha256 (what "
    "sha256sum prints, and what records before BLAKE3 hold).",
)
def hash_cmd(store_path, path, algo):  # type: ignore[no-untyped-def]
    """Hash a dataset (file or directory) as a run would record it (uses the store's cache)."""
    from runrec_cluster.capture.data import Dataset
    from runrec_cluster.capture.inputs import hash_input

    store = _open_store(store_path, must_exist=False)
    store.ensure_writable()
    with _progress() as cb:
        ref = hash_input(store, Dataset(path), progress=cb, algo=algo)
    click.echo(f"{ref.digest}  {ref.path}  ({ref.size} bytes, {ref.file_count} files)")


class _progress:
    """A rich progress bar for long hashing, shown on a terminal once 0.5 s have passed."""

    def __enter__(self) -> Callable[[int, int], None]:
        import time

        self.bar = None
        self.task = None
        self.t0 = time.monotonic()

        def cb(done: int, total: int) -> None:
            if self.bar is None:
                if not sys.stderr.isatty() or time.monotonic() - self.t0 < 0.5:
                    return
                from rich.progress import BarColumn, DownloadColumn, Progress, TransferSpeedColumn

                self.bar = Progress(
                    "hashing",
                    BarColumn(),
                    DownloadColumn(),
                    TransferSpeedColumn(),
                    console=_console(stderr=True),
                    transient=True,
                )
                self.bar.start()
                self.task = self.bar.add_task("hash", total=total)
            self.bar.update(self.task, completed=done, total=total)

        return cb

    def __exit__(self, *exc: Any) -> None:
        if self.bar is not None:
            self.bar.stop()


# ---------------------------------------------------------------------------------------------
# submit / demo
# ---------------------------------------------------------------------------------------------


def _kv(values: tuple[str, ...], what: str) -> dict[str, str]:
    out = {}
    for v in values:
        k, eq, val = v.partition("=")
        if not eq or not k:
            raise click.BadParameter(f"{v!r} is not KEY=VALUE.", param_hint=what)
        out[k] = val
    return out


@cli.command("submit", context_settings={"ignore_unknown_options": False})
@_store_opt
@click.option("--backend", default="local", show_default=True, help="local, slurm or ray.")
@click.option("--name", default=None, help="Run name (default: the command's name).")
@click.option(
    "--input",
    "inputs",
    multiple=True,
    metavar="PATH",
    help="A dataset the run reads (hashed now); repeatable.",
)
@click.option("--tag", "tags", multiple=True, metavar="KEY=VALUE", help="A tag; repeatable.")
@click.option("--timeout-min", type=float, default=None)
@click.option("--cpus", type=int, default=None)
@click.option("--mem-gb", type=float, default=None)
@click.option("--gpus", type=int, default=None)
@click.option("--nodes", type=int, default=None)
@click.option(
    "--hardware", default=None, help="A hardware class from [tool.runrec.hardware.<name>]."
)
@click.option("--slurm-partition", default=None, help="Slurm partition (-p).")
@click.option("--slurm-constraint", default=None, help="Slurm node features (--constraint).")
@click.option("--slurm-gres", default=None, help="Slurm generic resources, e.g. gpu:1.")
@click.option("--slurm-account", default=None)
@click.option("--slurm-qos", default=None)
@click.option(
    "--option",
    "options",
    multiple=True,
    metavar="KEY=VALUE",
    help="Any backend option, e.g. slurm_exclude=n3 or ray_max_retries=0; repeatable.",
)
@click.option("--wait", is_flag=True, help="Wait for the run to end; exit 1 when it fails.")
@click.argument("command", nargs=-1, required=True)
def submit_cmd(
    store_path,
    backend,
    name,
    inputs,
    tags,
    timeout_min,
    cpus,
    mem_gb,
    gpus,
    nodes,
    hardware,
    slurm_partition,
    slurm_constraint,
    slurm_gres,
    slurm_account,
    slurm_qos,
    options,
    wait,
    command,
):  # type: ignore[no-untyped-def]
    """Submit a command as a recorded run:  runrec submit [OPTIONS] -- CMD [ARGS]..."""
    from runrec_cluster.api import Executor
    from runrec_cluster.capture.data import Dataset

    store = _open_store(store_path, must_exist=False)
    from runrec_cluster.capture.config import parse_scalar

    opts = {k: parse_scalar(v) for k, v in _kv(options, "--option").items()}
    for key, val in (
        ("slurm_partition", slurm_partition),
        ("slurm_constraint", slurm_constraint),
        ("slurm_gres", slurm_gres),
        ("slurm_account", slurm_account),
        ("slurm_qos", slurm_qos),
    ):
        if val is not None:
            if backend != "slurm":
                raise click.UsageError(f"--{key.replace('_', '-')} needs --backend slurm.")
            opts[key] = val
    with _progress() as cb:
        ex = Executor(
            backend=backend,
            store=store,
            name=name or "",
            timeout_min=timeout_min,
            cpus=cpus,
            mem_gb=mem_gb,
            gpus=gpus,
            nodes=nodes,
            hardware=hardware,
            hash_progress=cb,
            **opts,
        )
        h = ex.submit_command(
            list(command), inputs=[Dataset(p) for p in inputs], tags=_kv(tags, "--tag"), name=name
        )
    c = _console()
    c.print(f"submitted run [bold]{h.run_id}[/bold] ({backend})")
    if backend == "ray" and not wait:
        # Ray ends a driver's tasks when the driver exits: this process must stay
        c.print(
            "  (ray: waiting for the run, since Ray stops a run when its submitting process exits;"
            " for long runs submit from a script run with `ray job submit`)"
        )
        wait = True
    c.print(f"  runrec show {h.run_id[:12]}    runrec logs {h.run_id[:12]}    runrec ls")
    if wait:
        rec = h.wait()
        c.print(f"run {h.run_id} {_state_text(rec)}")
        if rec.state.value != "succeeded":
            sys.exit(1)


@cli.command("reconcile")
@_store_opt
@click.argument("runs", nargs=-1)
def reconcile_cmd(store_path, runs):  # type: ignore[no-untyped-def]
    """Ask each backend about runs that are not terminal, and record its verdict (out of
    memory, timeout, cancelled, node failure, killed...) as a new version of the record."""
    from runrec_cluster import api

    store = _open_store(store_path)
    if runs:
        recs = [store.load(r) for r in runs]
    else:
        recs = _load_all(store, check=False)
    from runrec_cluster.record import needs_verdict

    open_recs = [r for r in recs if needs_verdict(r)]
    api.forget_check_times()
    after = api.refresh_many(store, open_recs, strict=True)
    changed = [
        (a, b)
        for a, b in zip(open_recs, after, strict=True)
        if (a.state, a.failure) != (b.state, b.failure)
    ]
    c = _console()
    for old, new in changed:
        c.print(
            f"{new.run_id}  {old.state.value} -> {_esc(_state_text(new))}: {_esc(new.failure.message if new.failure else '')}"
        )
    c.print(
        f"checked {len(open_recs)} open run(s); {len(changed)} updated; {len(open_recs) - len(changed)} still open."
    )


@cli.command("demo")
@_store_opt
@click.option(
    "--runs",
    type=click.IntRange(1, 64),
    default=4,
    show_default=True,
    help="Runs in the demo sweep.",
)
def demo_cmd(store_path, runs):  # type: ignore[no-untyped-def]
    """The main job: a small real sweep on the local backend with a dataset and an artifact."""
    from runrec_cluster.demo import run_demo

    store = _open_store(store_path, must_exist=False)
    c = _console()
    handles, sweep_id = run_demo(store, runs, echo=lambda m: c.print(m))
    recs = [h.record() for h in handles]
    _print_table(recs)
    c.print(
        f"\nstore: {store.root}\nnext: runrec show {recs[0].run_id[:12]}   runrec ls --sweep {sweep_id[:12]}   runrec export {recs[0].run_id[:12]} --format json"
    )
    if any(r.state.value != "succeeded" for r in recs):
        sys.exit(1)


# ---------------------------------------------------------------------------------------------

from runrec_cluster.cli import lineage as cli_lineage  # noqa: E402,F401  (registers lineage, annotate, promote, verify, retire...)

# isort: split
from runrec_cluster.cli import query as cli_query  # noqa: E402,F401  (registers table, compare, index, report)

# isort: split
from runrec_cluster.cli import rerun as cli_rerun  # noqa: E402,F401  (registers rerun, diff)

# isort: split
from runrec_cluster.cli import fsck as cli_fsck  # noqa: E402,F401  (registers fsck)

# isort: split
from runrec_cluster.cli import init as cli_init  # noqa: E402,F401  (registers init)


def main(argv: list[str] | None = None) -> None:
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
