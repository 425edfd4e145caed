"""Issue 13, repros 6 and 7 and compare's integers: strict JSON everywhere, trust in the export.

Real runs on the local backend in a real git repository; the runrec CLI in a subprocess; every
export parsed by a strict parser (Python ``json`` refusing NaN / Infinity, and node's
``JSON.parse`` when ``node`` is on PATH). Ground truth comes from the test: the values the job
was given, the retirement and promotion files in the store, the note the test wrote.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess

import cloudpickle
import fidelity_export_jobs as jobs
import pytest
from helpers import git, run_cli

import runrec_cluster as rr

cloudpickle.register_pickle_by_value(jobs)

NODE = shutil.which("node")


def _refuse(name: str) -> float:
    raise ValueError(f"not strict JSON: bare {name}")


def strict_loads(text: str):
    """Python's parser refusing NaN / Infinity / -Infinity, and node's JSON.parse if present."""
    doc = json.loads(text, parse_constant=_refuse)
    if NODE:
        r = subprocess.run(
            [NODE, "-e", 'JSON.parse(require("fs").readFileSync(0, "utf8"))'],
            input=text,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert r.returncode == 0, r.stderr
    return doc


def _pointer(doc, ptr: str):
    for tok in ptr.split("/")[1:]:
        tok = tok.replace("~1", "/").replace("~0", "~")
        doc = doc[int(tok)] if isinstance(doc, list) else doc[tok]
    return doc


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    work = tmp_path_factory.mktemp("work")
    git(work, "init", "-q", "-b", "main")
    (work / ".gitignore").write_text("store/\nout/\n")
    (work / "data").mkdir()
    (work / "data" / "train.csv").write_text("x,y\n1,0\n2,1\n")
    git(work, "add", ".")
    git(work, "commit", "-qm", "first")
    (work / "out").mkdir()
    store = rr.Store(work / "store")
    old = os.getcwd()
    os.chdir(work)
    try:
        ex = rr.Executor(backend="local", store=store)
        h = ex.submit(
            jobs.nonfinite_metrics,
            str(work / "data" / "train.csv"),
            str(work / "out" / "model.json"),
            inputs=[rr.Dataset(work / "data" / "train.csv")],
            name="nonfinite",
        )
        assert h.result(timeout=180) == 3
        sweep = ex.map_array(jobs.plain, [{"i": i} for i in range(4)], name="sweep")
        for s in sweep:
            try:
                s.result(timeout=180)
            except Exception:
                pass
    finally:
        os.chdir(old)
    return work, str(work / "store"), h.run_id, sweep[0].record().sweep_id


def cli(store, *args):
    return run_cli(*args, env={"RUNREC_STORE": store})


EXPECTED = {"acc": "NaN", "loss": "Infinity", "margin": "-Infinity"}


def test_export_json_is_strict_and_names_nonfinite(world):
    _, store, rid, _ = world
    r = cli(store, "export", rid, "--format", "json")
    assert r.returncode == 0, r.stderr
    doc = strict_loads(r.stdout)
    m = doc["record"]["metrics"]
    assert m["ok"] == 0.5
    for k, spelled in EXPECTED.items():
        assert m[k] is None
        assert doc["nonfinite"][f"/record/metrics/{k}"] == spelled
        assert _pointer(doc, f"/record/metrics/{k}") is None
    # config value too, and every pointer names a null
    ptrs = [p for p in doc["nonfinite"] if p.startswith("/record/config/ratio")]
    assert ptrs and all(doc["nonfinite"][p] == "Infinity" for p in ptrs)
    assert all(_pointer(doc, p) is None for p in doc["nonfinite"])
    assert doc["record"]["config"]["seed"]["value"] == 886812345


def test_openlineage_is_strict_and_names_nonfinite(world):
    _, store, rid, _ = world
    r = cli(store, "export", rid, "--format", "openlineage")
    assert r.returncode == 0, r.stderr
    import ol_schema  # openlineage-python, as tests/integration/local/test_lineage.py uses it

    lines = r.stdout.strip().splitlines()
    assert [strict_loads(x)["eventType"] for x in lines] == ["START", "COMPLETE"]
    for x in lines:  # the extra facet keeps the events valid RunEvents
        ol_schema.validate(strict_loads(x))
    end = strict_loads(lines[1])
    values = end["run"]["facets"]["runrec_nonfinite"]["values"]
    for k, spelled in EXPECTED.items():
        ptr = f"/run/facets/runrec_run/metrics/{k}"
        assert values[ptr] == spelled and _pointer(end, ptr) is None
    assert end["run"]["facets"]["runrec_run"]["metrics"]["ok"] == 0.5


def test_table_and_ls_json_are_strict(world):
    _, store, rid, _ = world
    r = cli(store, "table", "--format", "json", "--where", "name == 'nonfinite'")
    assert r.returncode == 0, r.stderr
    (row,) = strict_loads(r.stdout)
    for k, spelled in EXPECTED.items():
        assert row[f"metrics.{k}"] is None
        assert row["nonfinite"][f"/metrics.{k}"] == spelled
    assert row["metrics.ok"] == 0.5
    # a missing value stays a plain null (a sweep run has no metrics.acc): not in "nonfinite"
    r = cli(store, "table", "--format", "json", "--columns", "run_id,metrics.acc,metrics.score")
    rows = strict_loads(r.stdout)
    others = [x for x in rows if x["run_id"] != rid]
    assert len(others) == 4 and all("nonfinite" not in x for x in others)
    r = cli(store, "ls", "--json")
    assert r.returncode == 0, r.stderr
    strict_loads(r.stdout)
    r = cli(store, "ls", "--json", "--columns", "run_id,metrics.loss")
    assert r.returncode == 0, r.stderr
    rows = strict_loads(r.stdout)
    (mine,) = [x for x in rows if x["run_id"] == rid]
    assert mine["metrics.loss"] is None and mine["nonfinite"] == {"/metrics.loss": "Infinity"}


def test_compare_prints_integers_as_integers(world):
    _, store, _, sweep_id = world
    r = cli(store, "compare", sweep_id, "--json")
    assert r.returncode == 0, r.stderr
    doc = strict_loads(r.stdout)
    by_index = {x["sweep_index"]: x for x in doc["runs"]}
    assert by_index[2]["state"] == "failed" and by_index[2]["config.seed"] is None
    for i in (0, 1, 3):
        seed = by_index[i]["config.seed"]
        assert type(seed) is int and seed == 886812345 + i
        assert (
            type(by_index[i]["metrics.frac"]) is float and by_index[i]["metrics.frac"] == 0.25 + i
        )
    r = cli(store, "compare", sweep_id)
    assert r.returncode == 0, r.stderr
    assert "886812345" in r.stdout and "886812348" in r.stdout, r.stdout
    assert "e+08" not in r.stdout and "1.25" in r.stdout, r.stdout


def test_export_carries_trust(world, tmp_path):
    work, store0, rid, _ = world
    store = str(tmp_path / "store")
    shutil.copytree(store0, store)
    r = cli(store, "promote", rid, "model", "--to", "best")
    assert r.returncode == 0, r.stderr
    promoted_dirs = sorted(os.listdir(os.path.join(store, "promoted", "best")))
    assert promoted_dirs == ["v1"]
    r = cli(store, "annotate", rid, "--verdict", "negative", "--note", "labels were swapped")
    assert r.returncode == 0, r.stderr
    before = (
        set(os.listdir(os.path.join(store, "retirements")))
        if os.path.isdir(os.path.join(store, "retirements"))
        else set()
    )
    data = str(work / "data" / "train.csv")
    r = cli(store, "retire", data, "--state", "invalidated", "--reason", "rows 2-3 swapped")
    assert r.returncode == 0, r.stderr
    (new,) = set(os.listdir(os.path.join(store, "retirements"))) - before
    ret_id = new.split(".")[0]
    r = cli(store, "export", rid, "--format", "json")
    assert r.returncode == 0, r.stderr
    trust = strict_loads(r.stdout)["trust"]
    (flag,) = trust["run"]
    assert flag["kind"] == "suspect" and flag["retirement_id"] == ret_id
    assert flag["reason"] == "rows 2-3 swapped" and flag["state"] == "invalidated"
    (inp,) = trust["inputs"].values()
    assert inp["path"] == data and inp["flags"][0]["kind"] == "retired"
    assert inp["flags"][0]["retirement_id"] == ret_id
    assert trust["artifacts"]["model"][0]["kind"] == "suspect"
    (p,) = trust["promotions"]
    assert p["ref"] == "best@v1" and p["artifact"] == "model" and p["run_id"] == rid
    assert p["flags"] and p["flags"][0]["retirement_id"] == ret_id
    (a,) = trust["annotations"]
    assert a["verdict"] == "negative" and a["note"] == "labels were swapped"
    assert trust["problems"] == []
    # a trusted run says so: empty lists, not missing keys
    r = cli(store0, "export", rid, "--format", "json")
    t0 = strict_loads(r.stdout)["trust"]
    assert t0["run"] == [] and t0["inputs"] == {} and t0["promotions"] == []
    assert t0["annotations"] == []


def test_negative_results_json_is_strict(world, tmp_path):
    """`ls --negative --json` of a run whose metrics hold NaN / Infinity (annotated negative)."""
    _, store0, rid, _ = world
    store = str(tmp_path / "store")
    shutil.copytree(store0, store)
    r = cli(store, "annotate", rid, "--verdict", "negative", "--note", "diverged")
    assert r.returncode == 0, r.stderr
    r = cli(store, "ls", "--negative", "--json")
    assert r.returncode == 0, r.stderr
    (row,) = [x for x in strict_loads(r.stdout) if x["run_id"] == rid]
    assert row["verdict"]["verdict"] == "negative"
    assert row["annotations"][0]["note"] == "diverged"
    assert "nonfinite" in row and set(row["nonfinite"].values()) <= set(EXPECTED.values())
