"""Issue 13, repro 14: `runrec schema` declares itself (draft 2020-12, $id), closes every object
whose format is closed, types metrics, and covers the export document.

Real local runs (succeeded, failed, NaN metrics, a command, then promoted, annotated and retired)
exported through the real `runrec` CLI; each export is validated with the `jsonschema` library
against `runrec schema --of export` (tests/helpers.py validates every export the suite makes, the
same way), records against `--of record`, every stored version file against `--of version`, and
deliberately broken documents must fail.
"""

from __future__ import annotations

import copy
import json
import os
import shutil
import sys

import cloudpickle
import fidelity_export_jobs as jobs
import pytest
from helpers import check_export, git, json_schema, run_cli, schema_errors
from jsonschema import Draft202012Validator

import runrec_cluster as rr
from runrec_cluster.record import SCHEMA_VERSION
from runrec_cluster.store import codec
from runrec_cluster.store.codec import to_json_builtins
from runrec_cluster.views.export import FORMAT_VERSION

cloudpickle.register_pickle_by_value(jobs)

HERE = os.path.dirname(os.path.abspath(__file__))


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    work = tmp_path_factory.mktemp("schema")
    git(work, "init", "-q", "-b", "main")
    (work / ".gitignore").write_text("store/\nout/\n")
    (work / "data.csv").write_text("x,y\n1,0\n2,1\n")
    git(work, "add", ".")
    git(work, "commit", "-qm", "first")
    (work / "out").mkdir()
    store = rr.Store(work / "store")
    old = os.getcwd()
    os.chdir(work)
    try:
        ex = rr.Executor(backend="local", store=store)
        nan = ex.submit(
            jobs.nonfinite_metrics,
            str(work / "data.csv"),
            str(work / "out" / "model.json"),
            inputs=[rr.Dataset(work / "data.csv")],
            name="nonfinite",
        )
        assert nan.result(timeout=180) == 3
        sweep = ex.map_array(jobs.plain, [{"i": i} for i in range(3)], name="sweep")
        for s in sweep:
            s.wait(timeout=180)
        cmd = ex.submit_command([sys.executable, "-c", "print('hi')"], name="cmd")
        cmd.wait(timeout=180)
    finally:
        os.chdir(old)
    ids = {
        "nan": nan.run_id,
        "ok": sweep[0].run_id,
        "failed": sweep[2].run_id,
        "command": cmd.run_id,
    }
    assert store.load(ids["failed"]).state == rr.RunState.FAILED
    assert store.load(ids["ok"]).state == rr.RunState.SUCCEEDED
    return work, store, ids


def cli(store, *args, **kw):
    r = run_cli(*args, "--store", store.root, **kw)
    assert r.returncode == 0, (args, r.stderr)
    return r


def _export(store, rid):
    doc = json.loads(cli(store, "export", rid).stdout)  # run_cli validated it already
    assert schema_errors(doc, "export") == [] and schema_errors(doc["record"], "record") == []
    return doc


def test_schemas_declare_themselves_and_are_valid_2020_12():
    for kind, version in (("record", SCHEMA_VERSION), ("export", FORMAT_VERSION)):
        s = json_schema(kind)
        Draft202012Validator.check_schema(s)
        assert s["$schema"] == "https://json-schema.org/draft/2020-12/schema"
        assert s["$id"] == f"urn:runrec-cluster:schema:{kind}:{version}"
    default = json.loads(run_cli("schema").stdout)
    assert default == json_schema("record")
    version = json.loads(run_cli("schema", "--of", "version").stdout)
    Draft202012Validator.check_schema(version)
    r = run_cli("schema", "--of", "nope")
    assert r.returncode == 2 and "'record', 'version', 'export'" in r.stderr


def test_every_struct_is_closed_and_metrics_are_typed():
    s = json_schema("export")
    structs = [d for d in s["$defs"].values() if d.get("type") == "object" and "properties" in d]
    assert len(structs) > 20
    assert all(d["additionalProperties"] is False for d in structs), [
        d.get("title") for d in structs if d.get("additionalProperties") is not False
    ]
    assert s["additionalProperties"] is False
    rec = json_schema("record")["$defs"]
    assert rec["RunRecord"]["properties"]["metrics"]["additionalProperties"] == {
        "$ref": "#/$defs/Metric"
    }
    # open maps stay open, with typed values
    assert rec["RunRecord"]["properties"]["tags"]["additionalProperties"] == {"type": "string"}
    assert rec["RunRecord"]["properties"]["config"]["additionalProperties"] == {
        "$ref": "#/$defs/ConfigEntry"
    }


def test_exports_of_every_kind_of_run_validate(world, tmp_path):
    work, store0, ids = world
    store = rr.Store(shutil.copytree(store0.root, tmp_path / "store"))
    docs = {k: _export(store, rid) for k, rid in ids.items()}
    assert docs["nan"]["nonfinite"]["/record/metrics/acc"] == "NaN"
    assert docs["failed"]["record"]["failure"]["cause"] == "code_error"
    assert docs["command"]["record"]["entrypoint"]["kind"] == "command"
    # promoted, annotated, retired: the trust section fills up, and still validates
    cli(store, "promote", ids["nan"], "model", "--to", "best")
    cli(store, "annotate", ids["nan"], "--verdict", "negative", "--note", "swapped labels")
    cli(store, "retire", str(work / "data.csv"), "--state", "invalidated", "--reason", "bad rows")
    cli(store, "retire", ids["ok"], "--state", "withdrawn", "--reason", "wrong split")
    doc = _export(store, ids["nan"])
    t = doc["trust"]
    assert t["run"] and t["inputs"] and t["promotions"] and t["annotations"]
    assert _export(store, ids["ok"])["trust"]["run"][0]["kind"] == "retired"
    # -o writes the same document
    out = tmp_path / "x.json"
    cli(store, "export", ids["nan"], "-o", str(out))
    check_export(json.loads(out.read_text()))
    # every stored version file, as JSON, validates against --of version
    n = 0
    for rid in store.run_ids():
        for p in store.version_files(rid):
            with open(p, "rb") as f:
                v = to_json_builtins(codec.decode(f.read()))  # NaN stays a float here
            assert schema_errors(v, "version") == [], p
            n += 1
    assert n >= 12


def test_old_stores_export_valid_documents(tmp_path):
    for name in ("store-v1", "store-v2"):
        root = shutil.copytree(os.path.join(HERE, "..", "..", "fixtures", name), tmp_path / name)
        store = rr.Store(root)
        for rid in store.run_ids():
            _export(store, rid)


BROKEN = [
    ("an unknown top-level key", lambda d: d.update(extra=1)),
    ("an unknown record key", lambda d: d["record"].update(bogus=1)),
    ("an unknown key in a nested Struct", lambda d: d["record"]["code"].update(bogus=1)),
    ("a state of the wrong type", lambda d: d["record"].update(state=5)),
    ("a state that does not exist", lambda d: d["record"].update(state="finished")),
    ("metrics that are not a map", lambda d: d["record"].update(metrics=[1, 2])),
    ("a wrong format", lambda d: d.update(format="something-else")),
    ("a wrong format_version", lambda d: d.update(format_version="2")),
    ("an unknown inlined blob", lambda d: d["inlined"].update(secret="x")),
    ("a history entry with an unknown key", lambda d: d["history"][0].update(who="me")),
    ("a trust section without problems", lambda d: d["trust"].pop("problems")),
    ("a trust flag of an unknown kind", lambda d: d["trust"]["run"].append({**d["trust"]["run"][0], "kind": "doubtful"})),
    ("a non-finite spelled another way", lambda d: d["nonfinite"].update({"/record/metrics/acc": "nan"})),
    ("a config entry without its source", lambda d: next(iter(d["record"]["config"].values())).pop("source")),
    ("a config source outside the family", lambda d: next(iter(d["record"]["config"].values())).update(source="guessed")),
]  # fmt: skip


@pytest.mark.parametrize("what,breaks", BROKEN, ids=[b[0] for b in BROKEN])
def test_a_broken_document_fails(world, tmp_path, what, breaks):
    work, store0, ids = world
    store = rr.Store(shutil.copytree(store0.root, tmp_path / "store"))
    cli(store, "retire", ids["nan"], "--state", "withdrawn", "--reason", "x")
    doc = _export(store, ids["nan"])
    bad = copy.deepcopy(doc)
    breaks(bad)
    assert schema_errors(bad, "export"), f"{what}: the export schema accepted it"
    if bad.get("record") != doc["record"]:
        assert schema_errors(bad["record"], "record"), f"{what}: the record schema accepted it"
