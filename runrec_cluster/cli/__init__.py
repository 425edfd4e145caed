"""The ``runrec`` command line: a thin layer over the library (exit codes 0 / 1 / 2)."""

from runrec_cluster.cli import fsck, init, lineage, query, rerun  # noqa: F401  (registers the commands)
from runrec_cluster.cli._common import cli, main

__all__ = ["cli", "main"]
