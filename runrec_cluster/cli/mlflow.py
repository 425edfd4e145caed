"""``runrec mlflow-sync``: mirror runs into an MLflow tracking server (``runrec_cluster.mlflow``).

A thin shell over ``mlflow.sync``: mlflow (the ``mlflow`` extra) is imported by the library on
first use, a missing extra is a one-line error naming the install. Exit 0 when the sync went
through, 1 when the server cannot be reached or refuses a write, 2 for a usage problem (a
tracking URI without scheme, a bad ``--where``).
"""

from __future__ import annotations

import json

import click

from runrec_cluster.cli._common import WHERE_HELP, cli, console, esc, open_store, store_option, warn
from runrec_cluster.errors import ConfigError
from runrec_cluster.mlflow.client import check_tracking_uri
from runrec_cluster.mlflow.sync import DEFAULT_EXPERIMENT, DEFAULT_WORKERS, SyncReport, sync


@cli.command("mlflow-sync")
@store_option
@click.option(
    "--tracking-uri",
    envvar="MLFLOW_TRACKING_URI",
    required=True,
    metavar="URI",
    help="The MLflow tracking server, e.g. http://127.0.0.1:5000 (default: $MLFLOW_TRACKING_URI).",
)
@click.option(
    "--experiment",
    default=DEFAULT_EXPERIMENT,
    show_default=True,
    metavar="NAME",
    help="The MLflow experiment (created when missing).",
)
@click.option("--where", default=None, metavar="EXPR", help=WHERE_HELP)
@click.option(
    "--copy-artifacts",
    is_flag=True,
    help="Upload each artifact's kept copy to the MLflow run (default: link it with tags).",
)
@click.option(
    "--workers",
    type=click.IntRange(1, 64),
    default=DEFAULT_WORKERS,
    show_default=True,
    help="Runs written to MLflow at once.",
)
@click.option(
    "--no-check",
    is_flag=True,
    help="Do not ask the backends about runs that have not ended (sync them as recorded).",
)
@click.option("--json", "as_json", is_flag=True, help="Print what was done as JSON.")
def mlflow_sync_cmd(  # type: ignore[no-untyped-def]
    store_path, tracking_uri, experiment, where, copy_artifacts, workers, no_check, as_json
):
    """Copy runs into an MLflow tracking server: config as params (with provenance tags),
    metrics with their history, runrec facts as tags, sweeps as parent runs. Run it again (e.g.
    from cron) to update: nothing is duplicated (docs/adopting.md)."""
    try:
        check_tracking_uri(tracking_uri)
    except ConfigError as exc:
        raise click.BadParameter(str(exc), param_hint="--tracking-uri") from None
    if not experiment.strip():
        raise click.BadParameter("is empty; name an MLflow experiment.", param_hint="--experiment")
    store = open_store(store_path)
    report = sync(
        store,
        tracking_uri,
        experiment,
        where,
        copy_artifacts=copy_artifacts,
        check=not no_check,
        workers=workers,
    )
    for p in report.problems:
        warn(esc(p))
    if as_json:
        click.echo(json.dumps(_json(report), indent=1, sort_keys=True))
        return
    _print(report)


def _print(r: SyncReport) -> None:
    c = console()
    made = ", created" if r.experiment_created else ""
    c.print(
        f"synced {r.synced} runs to MLflow experiment {esc(r.experiment)!s} (id "
        f"{esc(r.experiment_id)}{made}) at {esc(r.uri)}: {len(r.created)} created, "
        f"{len(r.updated)} updated, {len(r.unchanged)} unchanged; "
        f"{len(r.sweeps_created) + len(r.sweeps_updated)} sweep parent runs written; "
        f"{len(r.uploaded)} artifacts uploaded; {r.seconds:.1f}s"
    )
    for rid, notes in sorted(r.notes.items()):
        for n in notes:
            c.print(f"  {esc(rid)}: {esc(n)}")
    if r.deleted:
        warn(
            f"{len(r.deleted)} runs were deleted in MLflow and are left alone (restore them in "
            f"MLflow to sync them again): {esc(', '.join(r.deleted[:10]))}"
            + (" ..." if len(r.deleted) > 10 else "")
        )


def _json(r: SyncReport) -> dict[str, object]:
    return {
        "tracking_uri": r.uri,
        "experiment": r.experiment,
        "experiment_id": r.experiment_id,
        "experiment_created": r.experiment_created,
        "created": r.created,
        "updated": r.updated,
        "unchanged": r.unchanged,
        "deleted": r.deleted,
        "sweeps_created": r.sweeps_created,
        "sweeps_updated": r.sweeps_updated,
        "uploaded": r.uploaded,
        "mlflow_run_ids": r.mlflow_ids,
        "notes": r.notes,
        "problems": r.problems,
        "seconds": round(r.seconds, 3),
    }
