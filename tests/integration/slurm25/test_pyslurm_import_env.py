"""Importing pyslurm must not leave the process pointed at the 25.11 cluster.

Slurm's library ``setenv``s SLURM_CONF while pyslurm imports; every later subprocess would
inherit it, and a Slurm of another release (the 22.05 cluster's sacct) would read 25.11's
config. The ground truth is the 22.05 ``sinfo`` run by the test itself, outside any runrec
process."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
from conftest import PREFIX

pytestmark = [pytest.mark.slurm, pytest.mark.usefixtures("slurm25")]

CHILD = """
import subprocess, sys
from runrec_cluster.backends import slurm_pyslurm
print(slurm_pyslurm.pyslurm_module().__version__)
out = subprocess.run(["/usr/bin/sinfo", "-h", "-o", "%N"], capture_output=True, text=True)
print(out.returncode)
print(out.stdout.strip())
print(out.stderr.strip())
"""


def test_import_leaves_other_slurm_releases_working():
    env = {k: v for k, v in os.environ.items() if k != "SLURM_CONF"}
    env["PATH"] = f"{PREFIX}/bin:{env['PATH']}"  # 25.11 first; its etc/ link gives the config
    truth = subprocess.run(
        ["/usr/bin/sinfo", "-h", "-o", "%N"], capture_output=True, text=True, env=env, timeout=30
    )
    assert truth.returncode == 0, truth.stderr  # the 22.05 cluster answers without runrec
    out = subprocess.run(
        [sys.executable, "-c", CHILD], capture_output=True, text=True, env=env, timeout=60
    )
    assert out.returncode == 0, out.stderr
    version, rc, nodes, err = (out.stdout.split("\n") + ["", "", "", ""])[:4]
    assert version.startswith("25.11."), out.stdout
    assert (rc, nodes) == ("0", truth.stdout.strip()), f"22.05 sinfo after import: {err}"
