"""Issue 13, repro 9 on the real Slurm cluster: a class that only steers the scheduler (a
constraint, no ``expect``) records where Slurm placed the run (ground truth: sacct's NodeList and
scontrol's node features, asked by the test), never "not checked yet"; a class with
``on_mismatch = "fail"`` on a node that does not meet it ends the run ``hardware_mismatch``
before the user's command runs, and the scheduler's own verdict does not overwrite it."""

from __future__ import annotations

import subprocess
import sys
import time

import pytest
from helpers import run_cli

import runrec_cluster as rr

pytestmark = pytest.mark.usefixtures("slurm")

CLASSES = """
[hardware.steer-y]
slurm = { constraint = "hwclass-y" }

[hardware.wrong-strict]
slurm = { constraint = "hwclass-x" }
expect = { node_features = "hwclass-y" }
on_mismatch = "fail"
"""


def sacct_nodelist(job_id: str) -> str:
    """The node Slurm ran the job on, as sacct says (polled: fields settle after the end)."""
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        out = subprocess.run(
            ["sacct", "-j", job_id, "-X", "-n", "-P", "-o", "NodeList"],
            capture_output=True,
            text=True,
            timeout=30,
        ).stdout.split()
        if out and out[0] not in ("None", "(null)", "None assigned"):
            return out[0]
        time.sleep(1)
    raise AssertionError(f"sacct names no node for job {job_id}")


def node_features(node: str) -> list[str]:
    out = subprocess.run(
        ["scontrol", "-o", "show", "node", node], capture_output=True, text=True, timeout=30
    ).stdout
    field = next(w for w in out.split() if w.startswith("AvailableFeatures="))
    return sorted(field.split("=", 1)[1].split(","))


def test_constraint_only_class_records_the_slurm_placement(store, project):
    (project / "runrec.toml").write_text((project / "runrec.toml").read_text() + CLASSES)
    r = run_cli(
        "submit",
        "--store",
        store.root,
        "--backend",
        "slurm",
        "--hardware",
        "steer-y",
        "--mem-gb",
        "0.5",
        "--timeout-min",
        "5",
        "--wait",
        "--",
        sys.executable,
        "-c",
        "print('hi')",
        cwd=project,
    )
    assert r.returncode == 0, (r.stdout, r.stderr)
    assert "warning" not in r.stderr
    rec = store.load(next(store.run_ids()))
    job = rec.execution.scheduler["job_id"]
    node = sacct_nodelist(job)
    assert "hwclass-y" in node_features(node)  # ground truth: Slurm honoured the constraint
    assert rec.execution.hardware_match is None
    assert rec.execution.hardware_request == {"constraint": "hwclass-y"}
    feats = ", ".join(node_features(node))
    assert rec.execution.hardware_placement == (
        f"placed by the scheduler on {node} (slurm constraint=hwclass-y; node features: "
        f"{feats}); no expect to check"
    )
    show = run_cli("show", rec.run_id, "--store", store.root, cwd=project)
    text = " ".join(show.stdout.split())
    assert show.returncode == 0 and "not checked yet" not in text
    assert f"hardware class: steer-y (placed by the scheduler on {node} (slurm" in text
    df = rr.query(store, columns=["hardware.class", "hardware.match", "hardware.placement"])
    row = df.to_dict(orient="records")[0]
    assert row["hardware.class"] == "steer-y" and row["hardware.match"] is None
    assert row["hardware.placement"].startswith(f"placed by the scheduler on {node} ")


def test_fail_mode_on_slurm_stops_before_the_command(store, project, tmp_path):
    (project / "runrec.toml").write_text((project / "runrec.toml").read_text() + CLASSES)
    marker = tmp_path / "ran"
    code = f"import pathlib; pathlib.Path({str(marker)!r}).write_text('ran')"
    r = run_cli(
        "submit",
        "--store",
        store.root,
        "--backend",
        "slurm",
        "--hardware",
        "wrong-strict",
        "--mem-gb",
        "0.5",
        "--timeout-min",
        "5",
        "--wait",
        "--",
        sys.executable,
        "-c",
        code,
        cwd=project,
    )
    assert r.returncode == 1, (r.stdout, r.stderr)
    assert "failed (hardware_mismatch)" in r.stdout
    assert not marker.exists(), "the user's command ran"
    rec = store.load(next(store.run_ids()))
    node = sacct_nodelist(rec.execution.scheduler["job_id"])
    assert "hwclass-y" not in node_features(node)
    # the scheduler saw the job fail too; asking it again keeps the job's own cause
    run_cli("reconcile", "--store", store.root)
    rec = store.load(rec.run_id)
    assert rec.state == rr.RunState.FAILED and rec.failure.cause.value == "hardware_mismatch"
    assert rec.execution.hardware_match is False
    assert "node_features: expected ['hwclass-y']" in rec.failure.message
