"""Reruns on the real Ray cluster (ray/up): a rerun with an override, its record and its diff;
the original's Ray options (runrec-general, to stay off the out-of-memory node) carry over."""

import json

import jobfns
import pytest
from helpers import run_cli

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
