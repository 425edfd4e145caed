"""Records written by every released schema version must still read. tests/fixtures/store-v1
was written by schema v1 (a real local command run with a dataset), store-v2 by schema v2 (a real
2-task local sweep with shared context blobs); add store-v3 and a test
like this one with each schema change."""

import os
import shutil

import runrec_cluster as rr
from runrec_cluster.views.export import export_json

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


def test_schema_v2_store_reads(tmp_path):
    """Schema v2: a sweep whose launch versions name one shared context blob, and whose start
    versions name the node's facts as another (written by a real 2-task local sweep)."""
    from runrec_cluster.record import CONTEXT_KEY
    from runrec_cluster.store import codec

    src = os.path.join(HERE, "..", "fixtures", "store-v2")
    store_dir = tmp_path / "store"
    shutil.copytree(src, store_dir)
    store = rr.Store(store_dir)
    ids = sorted(store.run_ids())
    assert len(ids) == 2
    recs = sorted((store.load(r) for r in ids), key=lambda r: r.sweep_index)
    for i, rec in enumerate(recs):
        assert rec.schema_version == 2 and rec.name == "fixture-v2" and rec.tags == {"schema": "v2"}
        assert rec.sweep_index == i and rec.config["x"].value == i + 1
        assert rec.state == rr.RunState.SUCCEEDED and rec.metrics["y"] == 2 * (i + 1) ** 2
        # what the context blobs hold comes back on reading
        assert rec.code.commit and rec.launch_env.package_count > 0
        assert rec.inputs[0].digest.startswith("blake3:") and rec.inputs[0].size == 5
        assert rec.execution.backend == "local" and rec.execution.log_dir.endswith(rec.run_id)
        assert rec.node.hostname and rec.node.os and rec.node.captured_at
    assert len({r.sweep_id for r in recs}) == 1
    raw = [codec.decode(open(store.version_files(r)[0], "rb").read()) for r in ids]
    assert len({v["patch"][CONTEXT_KEY] for v in raw}) == 1 and "code" not in raw[0]["patch"]
    doc = export_json(store, recs[0])
    assert doc["record"]["code"]["commit"] == recs[0].code.commit
