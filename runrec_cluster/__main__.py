"""``python -m runrec_cluster``: the ``runrec`` command."""

from runrec_cluster.cli import main

main()
