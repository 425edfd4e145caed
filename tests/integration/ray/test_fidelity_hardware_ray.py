"""Issue 13, repro 9 on the real Ray cluster: a class that only steers the scheduler (custom
resources, no ``expect``) records where Ray placed the task (ground truth: ``ray.nodes()``, asked
by the test: the one node offering ``hwclass-cpu``), never "not checked yet"; a class with
``on_mismatch = "fail"`` ends the run ``hardware_mismatch`` before the function is called."""

from __future__ import annotations

import jobfns
import pytest

import runrec_cluster as rr
from runrec_cluster.errors import JobFailed

pytestmark = pytest.mark.usefixtures("ray_cluster")

GENERAL = {"runrec-general": 1}  # keeps the task off the out-of-memory test node
STANDARD = {"CPU", "GPU", "memory", "object_store_memory"}
CLASSES = """
[hardware.steer-cpu]
ray = { resources = { "hwclass-cpu" = 1 } }

[hardware.wrong-strict]
ray = { resources = { "hwclass-cpu" = 1 } }
expect = { node_features = "hwclass-a100" }
on_mismatch = "fail"
"""


def ray_node(node_id: str) -> dict:
    import ray

    return next(n for n in ray.nodes() if n["NodeID"] == node_id)


def test_resources_only_class_records_the_ray_placement(store, project, ray_cluster):
    (project / "runrec.toml").write_text(CLASSES)
    ex = rr.Executor(
        backend="ray", store=store, cwd=project, hardware="steer-cpu", ray_resources=GENERAL
    )
    h = ex.submit(jobfns.add, 1)
    assert h.result(timeout=120) == 11
    rec = h.record()
    head = ray_cluster["head"]  # the only node with hwclass-cpu (conftest asks ray.nodes())
    truth = ray_node(head)
    feats = sorted(k for k in truth["Resources"] if k not in STANDARD and not k.startswith("node:"))
    assert rec.node.scheduler_node == head
    assert rec.execution.hardware_match is None
    assert rec.execution.hardware_placement == (
        f"placed by the scheduler on {truth['NodeManagerHostname']} (Ray node {head[:12]}) "
        f"(ray resources hwclass-cpu=1; node features: {', '.join(feats)}); no expect to check"
    )
    df = rr.query(store, columns=["hardware.class", "hardware.match", "hardware.placement"])
    row = df.to_dict(orient="records")[0]
    assert row["hardware.match"] is None and row["hardware.placement"].startswith(
        "placed by the scheduler on "
    )


def test_fail_mode_on_ray_does_not_call_the_function(store, project, tmp_path):
    (project / "runrec.toml").write_text(CLASSES)
    ex = rr.Executor(
        backend="ray", store=store, cwd=project, hardware="wrong-strict", ray_resources=GENERAL
    )
    out = tmp_path / "called"
    h = ex.submit(jobfns.with_artifact, str(out))
    with pytest.raises(JobFailed, match="hardware class 'wrong-strict'"):
        h.result(timeout=120)
    assert not out.exists()
    rec = h.record()
    assert rec.state == rr.RunState.FAILED and rec.failure.cause.value == "hardware_mismatch"
    assert rec.attempt == 1
    assert rec.execution.hardware_mismatches[0].startswith(
        "node_features: expected ['hwclass-a100']"
    )
