"""Which local Slurm cluster the Slurm integration suite (tests/integration/slurm/) runs
against, chosen by ``$RUNREC_TEST_SLURM`` (docs/slurm.md, "Tested Slurm versions"):

- ``22.05`` (the default): the Debian cluster of slurm/up, nodes n1 / n2, Debian's commands
  (/usr/bin), runrec asking Slurm through the commands (``RUNREC_SLURM_API=cli``);
- ``25.11``: the cluster of slurm/up25 built from source, nodes m1 / m2, its commands first on
  PATH and its ``SLURM_CONF``, runrec asking Slurm through pyslurm (``RUNREC_SLURM_API=pyslurm``).

Both clusters have the same shape (slurm/up, slurm/up25): ``NODE_X`` has the features
cpu-a,hwclass-x and one fake GPU, ``NODE_Y`` cpu-b,hwclass-y; partitions debug (default),
low-requeue, low-cancel and high (which preempts the two low ones). The tests name nodes only
through these constants. ``ENV`` is what the suite's session sets in the test process, which
every job and command it starts inherits.
"""

from __future__ import annotations

import os

VERSIONS = ("22.05", "25.11")
VERSION = os.environ.get("RUNREC_TEST_SLURM") or "22.05"
if VERSION not in VERSIONS:
    raise ValueError(
        f"RUNREC_TEST_SLURM={VERSION!r} is not one of {', '.join(VERSIONS)}; "
        "unset it for the Debian 22.05 cluster (slurm/up) or set 25.11 (slurm/up25)"
    )

# slurm/env25's defaults (overridable there the same way)
PREFIX25 = os.environ.get("RUNREC_SLURM25_PREFIX", "/opt/runrec-slurm-25.11.7")
STATE25 = os.environ.get("RUNREC_SLURM25_STATE", "/var/tmp/runrec-slurm25")

if VERSION == "25.11":
    NODE_X, NODE_Y = "m1", "m2"
    API = "pyslurm"
    ENV = {
        "PATH": f"{PREFIX25}/bin:{os.environ.get('PATH', '')}",
        "SLURM_CONF": os.path.join(STATE25, "etc", "slurm.conf"),
        "RUNREC_SLURM_API": API,
    }
    UP = "slurm/up25"
else:
    NODE_X, NODE_Y = "n1", "n2"
    API = "cli"
    ENV = {"RUNREC_SLURM_API": API}
    UP = "slurm/up"
