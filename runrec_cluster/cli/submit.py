"""``runrec submit / hash / demo``: the commands that start runs or hash their inputs."""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from typing import Any

import click
from rich.progress import BarColumn, DownloadColumn, Progress, TransferSpeedColumn

from runrec_cluster.api import Executor, RunHandle
from runrec_cluster.capture.config import parse_scalar
from runrec_cluster.capture.config_sources import ConfigEnv, ConfigFile
from runrec_cluster.capture.data import Dataset
from runrec_cluster.capture.inputs import hash_input
from runrec_cluster.cli._common import (
    cli,
    console,
    key_values,
    open_store,
    print_ended,
    store_option,
)
from runrec_cluster.cli._table import print_runs
from runrec_cluster.demo import run_demo
from runrec_cluster.errors import JobTimeout


class HashProgress:
    """A rich progress bar for long hashing, shown on a terminal once 0.5 s have passed."""

    def __enter__(self) -> Callable[[int, int], None]:
        self.bar: Progress | None = None
        self.task: Any = None
        self.t0 = time.monotonic()

        def cb(done: int, total: int) -> None:
            if self.bar is None:
                if not sys.stderr.isatty() or time.monotonic() - self.t0 < 0.5:
                    return
                self.bar = Progress(
                    "hashing",
                    BarColumn(),
                    DownloadColumn(),
                    TransferSpeedColumn(),
                    console=console(stderr=True),
                    transient=True,
                )
                self.bar.start()
                self.task = self.bar.add_task("hash", total=total)
            self.bar.update(self.task, completed=done, total=total)

        return cb

    def __exit__(self, *exc: Any) -> None:
        if self.bar is not None:
            self.bar.stop()


@cli.command("hash")
@store_option
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
    store = open_store(store_path, must_exist=False)
    store.ensure_writable()
    with HashProgress() as cb:
        ref = hash_input(store, Dataset(path), progress=cb, algo=algo)
    click.echo(f"{ref.digest}  {ref.path}  ({ref.size} bytes, {ref.file_count} files)")


# ---------------------------------------------------------------------------------------------
# submit
# ---------------------------------------------------------------------------------------------

SLURM_OPTIONS = ("slurm_partition", "slurm_constraint", "slurm_gres", "slurm_account", "slurm_qos")


def _backend_options(
    backend: str, options: tuple[str, ...], slurm: dict[str, str | None]
) -> dict[str, Any]:
    """``--option KEY=VALUE`` (values typed like config values) and the ``--slurm-*`` options,
    which need ``--backend slurm``."""
    opts = {k: parse_scalar(v) for k, v in key_values(options, "--option").items()}
    for key, val in slurm.items():
        if val is not None:
            if backend != "slurm":
                raise click.UsageError(f"--{key.replace('_', '-')} needs --backend slurm.")
            opts[key] = val
    return opts


# Option parsing stops at the first word that is not one of runrec's options: everything from
# the command's name on is the command, exactly as typed (``--`` before it is allowed, not needed)
@cli.command(
    "submit",
    context_settings={"ignore_unknown_options": False, "allow_interspersed_args": False},
)
@store_option
@click.option("--backend", default="local", show_default=True, help="local, slurm or ray.")
@click.option("--name", default=None, help="Run name (default: the command's name).")
@click.option(
    "--input",
    "inputs",
    multiple=True,
    metavar="PATH",
    help="A dataset the run reads (hashed now); repeatable.",
)
@click.option(
    "--config",
    "config_files",
    multiple=True,
    metavar="FILE",
    help="A config file the command reads (.yaml/.yml, .toml, .json): hashed as an input, its "
    "keys recorded as config marked file:<path>; repeatable, later files win (docs/config.md).",
)
@click.option(
    "--config-env",
    "config_envs",
    multiple=True,
    metavar="KEY=NAME",
    help="Record config key KEY from environment variable NAME (marked env:NAME); repeatable.",
)
@click.option(
    "--capture-args/--no-capture-args",
    default=None,
    help="Record a Python command's parsed argparse options with given/default provenance "
    "(default: on, unless RUNREC_CAPTURE_ARGPARSE=0; docs/config.md).",
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
    config_files,
    config_envs,
    capture_args,
    tags,
    timeout_min,
    cpus,
    mem_gb,
    gpus,
    nodes,
    hardware,
    options,
    wait,
    command,
    **slurm,  # the --slurm-* options (SLURM_OPTIONS)
):  # type: ignore[no-untyped-def]
    """Submit a command as a recorded run:  runrec submit [OPTIONS] [--] CMD [ARGS]...

    runrec's options go before the command; from CMD on, every word (options included) is the
    command's, exactly as recorded in the run's entrypoint."""
    store = open_store(store_path, must_exist=False)
    opts = _backend_options(backend, options, {k: slurm[k] for k in SLURM_OPTIONS})
    with HashProgress() as cb:
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
            list(command),
            inputs=[Dataset(p) for p in inputs],
            config_from=[ConfigFile(p) for p in config_files]
            + [ConfigEnv(n, key=k) for k, n in key_values(config_envs, "--config-env").items()],
            capture_args=capture_args,
            tags=key_values(tags, "--tag"),
            name=name,
        )
    c = console()
    c.print(f"submitted run [bold]{h.run_id}[/bold] ({backend})")
    sch = h.record().execution.scheduler if backend == "ray" else {}
    if backend == "ray" and not wait and not sch.get("detached"):
        # attached (ray_detached=false): Ray ends a driver's tasks when the driver exits
        c.print(
            "  (ray, attached: waiting for the run, since Ray stops a run when its submitting "
            "process exits; leave out ray_detached=false to submit and return)"
        )
        wait = True
    short = h.run_id[:12]
    c.print(
        f"  runrec wait {short}    runrec show {short}    runrec logs {short}    "
        f"runrec cancel {short}    runrec ls",
        soft_wrap=True,
    )
    if sch.get("driver_logs"):
        c.print(f"  {sch['driver_logs']}    (the runrec driver on the cluster)", soft_wrap=True)
    if wait:
        rec = h.wait()
        print_ended(c, rec)
        if rec.state.value != "succeeded":
            sys.exit(1)


@cli.command("wait")
@store_option
@click.argument("run")
@click.option(
    "--timeout", type=float, default=None, help="Give up after this many seconds (exit 1)."
)
def wait_cmd(store_path, run, timeout):  # type: ignore[no-untyped-def]
    """Wait for a run to end (from any process that reaches the store); exit 1 unless it
    succeeded."""
    store = open_store(store_path)
    h = RunHandle(store, store.resolve(run))
    try:
        rec = h.wait(timeout=timeout)
    except JobTimeout as exc:
        raise click.ClickException(str(exc)) from None
    print_ended(console(), rec)
    if rec.state.value != "succeeded":
        sys.exit(1)


# ---------------------------------------------------------------------------------------------
# demo
# ---------------------------------------------------------------------------------------------


@cli.command("demo")
@store_option
@click.option(
    "--runs",
    type=click.IntRange(1, 64),
    default=4,
    show_default=True,
    help="Runs in the demo sweep.",
)
def demo_cmd(store_path, runs):  # type: ignore[no-untyped-def]
    """The main job: a small real sweep on the local backend with a dataset and an artifact."""
    store = open_store(store_path, must_exist=False)
    c = console()
    handles, sweep_id = run_demo(store, runs, echo=lambda m: c.print(m))
    recs = [h.record() for h in handles]
    print_runs(recs)
    c.print(
        f"\nstore: {store.root}\nnext: runrec show {recs[0].run_id[:12]}   runrec ls --sweep {sweep_id[:12]}   runrec export {recs[0].run_id[:12]} --format json"
    )
    if any(r.state.value != "succeeded" for r in recs):
        sys.exit(1)
