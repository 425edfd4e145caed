"""The ``runrec`` command line: a thin layer over the library (exit codes 0 / 1 / 2).

``_common`` holds the ``cli`` group, ``main()`` and the shared helpers; each command module
registers its commands on the group when imported here.
"""

from __future__ import annotations

from runrec_cluster.cli import fsck, init, lineage, mlflow, pack, query, rerun, runs, submit  # noqa: F401  (registers the commands)
from runrec_cluster.cli._common import cli, main

__all__ = ["cli", "main"]
