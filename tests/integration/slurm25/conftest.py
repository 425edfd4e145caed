"""The Slurm 25.11 cluster of slurm/up25 (nodes m1 with a fake GPU, m2), with pyslurm 25.11 in
the test venv. Every test here runs with that cluster's commands first on PATH and its
SLURM_CONF (slurm/env25 says these two are all a process needs). A missing cluster or pyslurm
skips here, and fails where clusters are required (RUNREC_REQUIRE_CLUSTERS=1, tests/conftest.py:
the tests carry the ``slurm`` marker)."""

from __future__ import annotations

import importlib.metadata
import os
import subprocess

import pytest

PREFIX = os.environ.get("RUNREC_SLURM25_PREFIX", "/opt/runrec-slurm-25.11.7")
STATE = os.environ.get("RUNREC_SLURM25_STATE", "/var/tmp/runrec-slurm25")  # slurm/env25
SLURM_CONF = os.path.join(STATE, "etc", "slurm.conf")
APIS = ("cli", "pyslurm")


def _why_not() -> str | None:
    """Why the 25.11 cluster cannot be used from here; None: it can."""
    if not os.path.isfile(os.path.join(PREFIX, "bin", "sinfo")):
        return f"no Slurm 25.11 in {PREFIX} (run slurm/up25 --build)"
    try:
        version = importlib.metadata.version("pyslurm")
    except importlib.metadata.PackageNotFoundError:
        return "pyslurm is not installed in this venv (slurm/build25 installs it)"
    if not version.startswith("25.11."):
        return f"pyslurm {version} is not built for Slurm 25.11"
    try:
        out = subprocess.run(
            [os.path.join(PREFIX, "bin", "sinfo"), "-h", "-o", "%N %t"],
            capture_output=True,
            text=True,
            timeout=20,
            env={**os.environ, "SLURM_CONF": SLURM_CONF},
        )
    except subprocess.TimeoutExpired:
        return "sinfo (25.11) timed out: is slurmctld up? (slurm/up25)"
    if out.returncode != 0:
        return f"sinfo (25.11) failed: {out.stderr.strip()} (slurm/up25; slurm/diagnose25)"
    return None


@pytest.fixture(scope="module")
def slurm25():
    """PATH and SLURM_CONF of this process point at the 25.11 cluster for the module (and
    back to what they were after it: the 22.05 tests of the same session use /usr/bin)."""
    why = _why_not()
    if why:
        pytest.skip(f"no Slurm 25.11 cluster: {why}")
    mp = pytest.MonkeyPatch()
    mp.setenv("PATH", f"{PREFIX}/bin:{os.environ['PATH']}")
    mp.setenv("SLURM_CONF", SLURM_CONF)
    yield PREFIX
    mp.undo()


@pytest.fixture
def use_api(monkeypatch):
    """Set how runrec asks Slurm in this process (and in jobs submitted from it)."""

    def set_api(api: str) -> None:
        monkeypatch.setenv("RUNREC_SLURM_API", api)

    return set_api
