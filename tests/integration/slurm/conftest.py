"""Fixtures for the real Slurm cluster: slurm/up's 22.05 (n1, n2) or, with
RUNREC_TEST_SLURM=25.11, slurm/up25's 25.11 through pyslurm (m1, m2); tests/slurm_target.py
says which and names the nodes (NODE_X: hwclass-x + fake GPU, NODE_Y: hwclass-y). Unreachable
cluster: skipped here, a failure where clusters are required."""

import shutil
import subprocess

import pytest
import slurm_target

from runrec_cluster.backends import slurm_pyslurm


@pytest.fixture(scope="session", autouse=True)
def slurm_target_env():
    """The chosen cluster's PATH / SLURM_CONF / RUNREC_SLURM_API for the whole session (jobs,
    submitting processes and CLI runs inherit them)."""
    mp = pytest.MonkeyPatch()
    for name, value in slurm_target.ENV.items():
        mp.setenv(name, value)
    yield slurm_target
    mp.undo()


def _cluster_up() -> str | None:
    if not shutil.which("sinfo"):
        return f"sinfo not found (run {slurm_target.UP})"
    try:
        version = subprocess.run(["sinfo", "-V"], capture_output=True, text=True, timeout=20)
        # "slurm 25.11.7", "slurm-wlm 22.05.8" (Debian)
        if not version.stdout.split()[-1:] or not version.stdout.split()[-1].startswith(
            f"{slurm_target.VERSION}."
        ):
            said = (version.stdout or version.stderr).strip()
            return f"RUNREC_TEST_SLURM={slurm_target.VERSION}, but `sinfo -V` says {said!r}"
        out = subprocess.run(
            ["sinfo", "-h", "-o", "%N %t"], capture_output=True, text=True, timeout=20
        )
    except subprocess.TimeoutExpired:
        return f"sinfo timed out (run {slurm_target.UP})"
    if out.returncode != 0:
        return f"sinfo failed: {out.stderr.strip()} (run {slurm_target.UP})"
    if slurm_target.API == "pyslurm" and (why := slurm_pyslurm.mismatch()):
        return f"RUNREC_SLURM_API=pyslurm, but {why} (slurm/build25 installs it)"
    return None


@pytest.fixture(scope="session")
def slurm(slurm_target_env):
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
