"""Fixtures for the real Slurm cluster brought up by slurm/up (n1: hwclass-x + fake GPU,
n2: hwclass-y). Unreachable cluster: skipped here, a failure where clusters are required."""

import shutil
import subprocess

import pytest


def _cluster_up() -> str | None:
    if not shutil.which("sinfo"):
        return "sinfo not found (run slurm/up)"
    try:
        out = subprocess.run(
            ["sinfo", "-h", "-o", "%N %t"], capture_output=True, text=True, timeout=20
        )
    except subprocess.TimeoutExpired:
        return "sinfo timed out"
    if out.returncode != 0:
        return f"sinfo failed: {out.stderr.strip()}"
    return None


@pytest.fixture(scope="session")
def slurm():
    why = _cluster_up()
    if why:
        pytest.skip(f"no Slurm cluster: {why}")
    return True


@pytest.fixture
def project(tmp_path, monkeypatch):
    """A project directory with hardware classes in runrec.toml; the tests run from it."""
    d = tmp_path / "proj"
    d.mkdir()
    (d / "runrec.toml").write_text(
        """
[hardware.cpu-y]
slurm = { constraint = "hwclass-y" }
expect = { node_features = "hwclass-y" }

[hardware.fakegpu]
slurm = { constraint = "hwclass-x", gres = "gpu:fake:1" }
expect = { node_features = ["hwclass-x"] }

[hardware.wrong]
slurm = { constraint = "hwclass-x" }
expect = { node_features = "hwclass-y" }
"""
    )
    monkeypatch.chdir(d)
    return d
