"""``runrec init``: create a store, or show and change its permission settings.

A store is created by its first run anyway; ``init`` is for choosing who may read and add to it
(``store/policy.py``), once, before a lab starts sharing it:

    runrec init /nfs/lab/runrec --mode group --group lab

A command of its own rather than an option on ``submit``: the settings belong to the store, are
chosen once by whoever sets it up, and must not depend on which member happens to submit first.

Every new store gets a ``.gitignore`` of ``*`` (so a store inside a git repository never makes
the code dirty); ``init`` also adds one to an existing store that has none.
"""

from __future__ import annotations

import os

import click

from runrec_cluster.cli._common import STORE_HELP, cli
from runrec_cluster.errors import ConfigError, StoreError
from runrec_cluster.store import Store, admin, layout
from runrec_cluster.store import policy as perms
from runrec_cluster.store.admin import FixReport

_SHOW = 5  # entries named when some could not be fixed


@cli.command("init")
@click.argument("store_arg", metavar="[STORE]", required=False)
@click.option("--store", "store_path", default=None, metavar="PATH", help=STORE_HELP)
@click.option(
    "--mode",
    type=click.Choice(["umask", "private", "group", "all"]),
    default=None,
    help="Who may read and add to the store. umask: each writer's umask decides (the default); "
    "private: the owner only (0700 / 0400); group: the group reads and adds, others nothing "
    "(directories 2770, files 0440); all: as group, and everyone reads (2775 / 0444).",
)
@click.option(
    "--group",
    default=None,
    metavar="GROUP",
    help="Unix group (name or gid) for --mode group / all; default: the store directory's group.",
)
@click.option(
    "--fix",
    is_flag=True,
    help="Also give existing files and directories the settings (those you own; all as root).",
)
def init_cmd(store_arg, store_path, mode, group, fix):  # type: ignore[no-untyped-def]
    """Create a store, or show or change who may read and add to it.

    Without options, shows the settings of an existing store. Changing them also fixes the
    files and directories you own; other members run `runrec init STORE --fix` for theirs.
    """
    if store_arg and store_path and os.path.abspath(store_arg) != os.path.abspath(store_path):
        raise click.UsageError(f"two stores given: {store_arg} and --store {store_path}.")
    store = Store(store_arg or store_path)
    meta = perms.read_meta(store.root)
    if meta is None:
        try:
            store.ensure_writable(mode=mode, group=group)
        except ConfigError as exc:  # the options given: a usage mistake (exit 2)
            raise click.UsageError(str(exc)) from None
        pol = perms.policy_for(store.root)
        click.echo(f"created store {store.root}: {pol.describe()}")
        return 0
    meta_path = os.path.join(store.root, layout.META_FILE)
    current = perms.policy_from_meta(meta, meta_path)
    _gitignore(store)
    if mode is None and group is None:
        if not fix:
            click.echo(f"store {store.root}: {current.describe()}")
            return 0
        return _report(store.root, admin.fix_tree(store.root, current))
    try:
        keep = current.mode if current.mode in ("group", "all") else None
        wanted = perms.make_policy(store.root, mode or keep, group)
    except ConfigError as exc:
        raise click.UsageError(str(exc)) from None
    if wanted == current:
        click.echo(f"store {store.root}: {current.describe()} (unchanged)")
        if not fix:
            return 0
    else:
        if not store.exists():
            raise StoreError(
                f"{store.root} has store metadata but no runs/ directory: not a store?"
            )
        admin.change_policy(store.root, wanted, fsync=store.fsync)
        click.echo(f"store {store.root}: was {current.describe()}; now {wanted.describe()}")
    return _report(store.root, admin.fix_tree(store.root, wanted))


def _gitignore(store: Store) -> None:
    """Give an existing store the ``.gitignore`` of ``*`` a new store gets (if it has none)."""
    try:
        if store.ensure_gitignore():
            click.echo(
                f"added {os.path.join(store.root, layout.GITIGNORE)} (git ignores the store)"
            )
    except (OSError, StoreError) as exc:
        click.echo(f"note: could not add a .gitignore to {store.root}: {exc}", err=True)


def _report(root: str, rep: FixReport) -> int:
    click.echo(f"fixed {rep.fixed} entries; {rep.ok} already right")
    if rep.not_ours:
        shown = "\n  ".join(rep.not_ours[:_SHOW])
        more = f"\n  ... and {len(rep.not_ours) - _SHOW} more" if len(rep.not_ours) > _SHOW else ""
        click.echo(
            f"error: {len(rep.not_ours)} entries belong to other users and were left as they "
            f"were:\n  {shown}{more}\nHave their owners run `runrec init {root} --fix`, or run "
            "it as root.",
            err=True,
        )
    if rep.failed:
        shown = "\n  ".join(rep.failed[:_SHOW])
        click.echo(
            f"error: {len(rep.failed)} entries could not be changed:\n  {shown}\nCheck that you "
            "are in the store's group (`id -Gn`) and that the filesystem allows chmod / chgrp.",
            err=True,
        )
    return 1 if rep.not_ours or rep.failed else 0
