"""Reruns on the real Slurm cluster (slurm/up): the same run on another hardware class lands on
the other node, and `runrec diff` shows the class as intended and the node as incidental; the
code comes from a worktree of the recorded commit and patch; a whole sweep reruns as an array."""

import importlib
import json
import secrets
import sys

import pytest
from helpers import git, run_cli
from slurm_target import NODE_X, NODE_Y

import runrec_cluster as rr

pytestmark = pytest.mark.usefixtures("slurm")

MODULE = """\
import os

OFFSET = {offset}


def where(x):
    return {{"value": x + OFFSET, "node": os.environ.get("SLURMD_NODENAME")}}
"""


@pytest.fixture
def gitproject(project):
    """The Slurm project (hardware classes in runrec.toml) as a git repository with a module
    whose recorded version is an uncommitted change."""
    name = f"where_{secrets.token_hex(4)}"
    (project / f"{name}.py").write_text(MODULE.format(offset=1))
    git(project, "init", "-q", "-b", "main")
    git(project, "add", ".")
    git(project, "commit", "-qm", "first")
    (project / f"{name}.py").write_text(MODULE.format(offset=100))  # dirty
    sys.path.insert(0, str(project))
    try:
        mod = importlib.import_module(name)
    finally:
        sys.path.remove(str(project))
    return project, name, mod


def slurm_ex(store, **kw):
    return rr.Executor(backend="slurm", store=store, timeout_min=5, cpus=1, mem_gb=0.5, **kw)


def test_same_run_on_another_hardware_class(store, gitproject):
    project, name, mod = gitproject
    orig_h = slurm_ex(store, hardware="fakegpu").submit(mod.where, 5)
    assert orig_h.result(timeout=120) == {"value": 105, "node": NODE_X}
    orig = orig_h.record()
    # the tree moves on before the rerun
    git(project, "commit", "-qam", "second")
    (project / f"{name}.py").write_text(MODULE.format(offset=1000))
    git(project, "commit", "-qam", "third")

    out = run_cli(
        "rerun", orig.run_id[:12], "--hardware", "cpu-y", "--reason", "same run on hwclass-y",
        "--wait", "--store", store.root, cwd=project,
    )  # fmt: skip
    assert out.returncode == 0, out.stdout + out.stderr
    assert "intended: hardware: fakegpu -> cpu-y" in out.stdout
    assert "materialized" in out.stderr
    new_id = out.stdout.split("submitted rerun ")[1].split()[0]
    rec = store.load(new_id)
    assert rr.RunHandle(store, new_id).result() == {"value": 105, "node": NODE_Y}  # same code
    assert rec.node.scheduler_node == NODE_Y and "hwclass-y" in rec.node.features
    assert rec.execution.hardware == "cpu-y" and rec.execution.hardware_match is True
    assert rec.rerun.function_from == "name" and rec.rerun.code_from == "worktree"
    assert (rec.code.commit, rec.code.patch_blob) == (orig.code.commit, orig.code.patch_blob)
    assert rec.rerun_of == orig.run_id and rec.rerun.reason == "same run on hwclass-y"

    out = run_cli("diff", orig.run_id, new_id, "--json", "--store", store.root)
    assert out.returncode == 0, out.stderr
    ch = {c["key"]: c for c in json.loads(out.stdout)["differences"]}
    assert ch["hardware"]["label"] == "intended"
    assert (ch["hardware"]["a"], ch["hardware"]["b"]) == ("fakegpu", "cpu-y")
    assert ch["hardware.expect"]["label"] == "intended"
    node = ch["node.scheduler_node"]
    assert (node["a"], node["b"], node["label"]) == (NODE_X, NODE_Y, "incidental")
    assert ch["node.features"]["label"] == "incidental"
    assert "metrics.value" not in ch and "result" in ch  # the node name is in the result
    out = run_cli("diff", orig.run_id, new_id, "--store", store.root)
    assert out.returncode == 0 and "is a rerun of" in out.stdout
    row = next(ln for ln in out.stdout.splitlines() if ln.startswith("hardware ") and "cpu-y" in ln)
    assert "intended" in row
    row = next(ln for ln in out.stdout.splitlines() if "node.scheduler_node" in ln)
    assert NODE_X in row and NODE_Y in row and "incidental" in row


def test_sweep_rerun_as_an_array_on_another_class(store, project):
    import jobfns

    handles = slurm_ex(store, hardware="fakegpu").map_array(
        jobfns.add, [{"a": i, "b": 1} for i in range(3)]
    )
    origs = [h.wait(timeout=120) for h in handles]
    assert {r.node.scheduler_node for r in origs} == {NODE_X}
    notes = []
    from runrec_cluster.rerun.core import rerun_sweep

    news = rerun_sweep(
        store, origs[0].sweep_id, hardware="cpu-y", overrides={"b": 10}, echo=notes.append
    )
    recs = [h.wait(timeout=120) for h in news]
    assert any("cannot be pinned" in n for n in notes)  # the project is no git repository
    assert [h.result() for h in news] == [10, 11, 12]
    assert {r.node.scheduler_node for r in recs} == {NODE_Y}
    assert all("array_job_id" in r.execution.scheduler for r in recs)
    assert [r.rerun_of for r in recs] == [o.run_id for o in origs]
    assert recs[0].rerun.code_from == "unpinned" and recs[0].warnings
