"""``runrec pack [--store S] [--min-age SECONDS] [--logs-min-age SECONDS] [--json]``: fold the
version files of finished runs, the small blobs they name and their small logs into packs (``store/packs.py``, docs/store-layout.md). Safe while writers and readers work
on the store, and after a ``kill -9`` at any instant (rerun it: it finishes what was left)."""

from __future__ import annotations

import json

import click

from runrec_cluster.cli._common import cli, open_store, store_option, warn
from runrec_cluster.errors import RunrecError
from runrec_cluster.query.columns import package_reader
from runrec_cluster.query.index_packs import write_rows
from runrec_cluster.store import pack_extras, packs


@cli.command("pack")
@store_option
@click.option(
    "--min-age",
    "min_age",
    type=click.FloatRange(min=0),
    default=0.0,
    show_default=True,
    metavar="SECONDS",
    help="Pack only runs whose directory has not changed for this long.",
)
@click.option(
    "--logs-min-age",
    "logs_min_age",
    type=click.FloatRange(min=0),
    default=pack_extras.LOG_QUIET_S,
    show_default=True,
    metavar="SECONDS",
    help="Pack the logs of a finished run only once they have not changed for this long.",
)
@click.option("--json", "as_json", is_flag=True, help="One JSON object: what was packed.")
def pack_cmd(store_path, min_age, logs_min_age, as_json):  # type: ignore[no-untyped-def]
    """Move the record versions of finished runs into pack files (one per shard and call), then
    delete the loose files: a run then costs a few hundred bytes of a pack instead of ~10 files.
    Runs still running stay loose; a version added later to a packed run is written loose beside
    the pack, and readers fold both."""
    store = open_store(store_path)
    st = packs.pack_store(store.root, min_age_s=min_age, log_quiet_s=logs_min_age)
    pk = package_reader(store)
    for p in st.packs:  # the index rows of the packed runs, for a fast cold index
        try:
            write_rows(store, p, pk)
        except (OSError, RunrecError) as exc:  # derived: the index folds the runs instead
            warn(f"could not write the index rows of {p} ({exc}); the query index reads the runs")
    if as_json:
        doc = {
            "store": store.root,
            "packs": st.packs,
            "runs": st.runs,
            "versions": st.versions,
            "deleted": st.deleted,
            "skipped": st.skipped,
            "blobs": st.blobs,
            "logs": st.logs,
            "journals": st.journals,
            "seconds": round(st.seconds, 3),
        }
        click.echo(json.dumps(doc, indent=2))
        return
    click.echo(
        f"packed {st.versions} version(s) of {st.runs} finished run(s) into {len(st.packs)} "
        f"pack(s) with {st.blobs} small blob(s) and the logs of {st.logs} run(s); deleted "
        f"{st.deleted} loose file(s) and {st.journals} change-journal file(s) of past days; "
        f"{st.skipped} run(s) left loose "
        f"(not finished, too recent or unreadable) in {st.seconds:.2f}s"
    )
    for p in st.packs:
        click.echo(f"  {p}")
