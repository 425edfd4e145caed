"""Reruns on the real Ray cluster (ray/up): a rerun with an override, its record and its diff;
the original's Ray options (runrec-general, to stay off the out-of-memory node) carry over."""

import json

import jobfns
import pytest
from helpers import run_cli, wait_for

import runrec_cluster as rr

pytestmark = pytest.mark.usefixtures("ray_cluster")

GENERAL = {"runrec-general": 1}


def test_rerun_with_an_override(store, project):
    ex = rr.Executor(backend="ray", store=store, cwd=project, ray_resources=GENERAL)
    orig_h = ex.submit(jobfns.train, 0.1, epochs=2)
    assert orig_h.result(timeout=120) == {"lr": 0.1, "acc": 0.9}
    orig = orig_h.record()
    notes = []
    h = rr.rerun(store, orig.run_id, overrides={"lr": "0.25"}, reason="lr sweep", echo=notes.append)
    assert h.result(timeout=120) == {"lr": 0.25, "acc": 0.75}
    rec = h.record()
    assert rec.execution.backend == "ray" and rec.execution.options["ray_resources"] == GENERAL
    assert rec.config["lr"].value == 0.25 and rec.config["lr"].source == "given"
    assert rec.config["epochs"].value == 2 and rec.metrics["epochs_done"] == 2
    assert rec.config["seed"].value == 1234 and rec.rerun.pinned == {"seed": 1234}
    assert rec.rerun.code_from == "unpinned" and rec.rerun.function_from == "pickle"
    assert any("pickled call" in n for n in notes)
    assert rec.node is not None and rec.node.scheduler_node
    doc = json.loads(
        run_cli("diff", orig.run_id, rec.run_id, "--json", "--store", store.root).stdout
    )
    ch = {c["key"]: c for c in doc["differences"]}
    assert (ch["config.lr"]["a"], ch["config.lr"]["b"], ch["config.lr"]["label"]) == (
        0.1, 0.25, "intended",
    )  # fmt: skip
    assert ch["metrics.acc"]["label"] == "incidental" and "delta -0.15" in ch["metrics.acc"]["note"]
    assert doc["b"]["reason"] == "lr sweep" and "is a rerun of" in doc["relation"]


CLASSES = """
[hardware.cpu]
ray = { resources = { "hwclass-cpu" = 1 } }
expect = { node_features = "hwclass-cpu" }

[hardware.a100]
ray = { accelerator_type = "A100", resources = { "hwclass-a100" = 1 } }
expect = { node_features = "hwclass-a100" }
"""


def ray_node_of(run_id):
    """Ground truth from Ray: the node the run's task ran on (found by the task's name), with
    that node's resources."""
    from ray.util.state import list_nodes, list_tasks

    def finished():  # the state API gets task events a moment after the task ends
        tasks = list_tasks(filters=[("name", "=", f"runrec-{run_id}")], detail=True)
        t = max(tasks, key=lambda x: x.attempt_number) if tasks else None
        return t if t is not None and t.state == "FINISHED" else None

    t = wait_for(f"Ray to report the task of {run_id} FINISHED", finished, timeout=60)
    nodes = {n.node_id: n for n in list_nodes(detail=True)}
    return t.node_id, dict(nodes[t.node_id].resources_total)


def test_rerun_on_another_hardware_class_lands_on_a_node_of_that_class(store, tmp_path):
    proj = tmp_path / "hwproj"
    proj.mkdir()
    (proj / "runrec.toml").write_text(CLASSES)
    orig_h = rr.Executor(backend="ray", store=store, cwd=proj, hardware="cpu").submit(
        jobfns.add, 1, b=2
    )
    assert orig_h.result(timeout=120) == 3
    orig = orig_h.record()
    h = rr.rerun(store, orig.run_id, hardware="a100", reason="same call on an A100 node")
    assert h.result(timeout=120) == 3
    rec = h.record()
    # Ray's own view: where each task ran, and what that node offers
    node0, res0 = ray_node_of(orig.run_id)
    node1, res1 = ray_node_of(rec.run_id)
    assert "hwclass-cpu" in res0 and "hwclass-a100" not in res0, res0
    assert res1.get("hwclass-a100") == 1 and res1.get("accelerator_type:A100") == 1, res1
    assert node1 != node0
    # the record agrees, and the sibling says what differs
    assert rec.node.scheduler_node == node1 and orig.node.scheduler_node == node0
    assert rec.execution.hardware == "a100" and rec.execution.hardware_match is True
    assert rec.rerun_of == orig.run_id
    assert any(
        d.what == "hardware" and (d.before, d.after) == ("cpu", "a100") for d in rec.rerun.intended
    ), rec.rerun.intended
    doc = json.loads(
        run_cli("diff", orig.run_id, rec.run_id, "--json", "--store", store.root).stdout
    )
    ch = {c["key"]: c for c in doc["differences"]}
    assert (ch["hardware"]["a"], ch["hardware"]["b"], ch["hardware"]["label"]) == (
        "cpu", "a100", "intended",
    )  # fmt: skip
    assert ch["hardware.request"]["label"] == "intended"
