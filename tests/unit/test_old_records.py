"""Records written by every released schema version must still read. tests/fixtures/store-v1
was written by schema v1 (a real local command run with a dataset); add store-v2 and a test
like this one with each schema change."""

import os
import shutil

import runrec_cluster as rr
from runrec_cluster.export import export_json

HERE = os.path.dirname(__file__)


def test_schema_v1_store_reads(tmp_path):
    src = os.path.join(HERE, "..", "fixtures", "store-v1")
    store_dir = tmp_path / "store"
    shutil.copytree(src, store_dir)  # moved to another path: records still resolve
    store = rr.Store(store_dir)
    (run_id,) = list(store.run_ids())
    rec = store.load(run_id[:8])
    assert rec.schema_version == 1 and rec.name == "fixture-v1" and rec.tags == {"schema": "v1"}
    assert rec.state == rr.RunState.SUCCEEDED and rec.exit_code == 0
    assert rec.entrypoint.kind == "command" and rec.entrypoint.argv[-1] == "print('fixture')"
    assert rec.inputs[0].digest.startswith("sha256:") and rec.inputs[0].size == 4
    assert rec.launch_env.package_count > 0 and rec.node.hostname
    doc = export_json(store, rec)
    assert isinstance(doc["inlined"]["launch_env.packages"], dict)
    assert [h["event"] for h in doc["history"]][0] == "launch"
