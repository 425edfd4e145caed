"""The query index of packed runs (issue 17): a cold build reads the kept rows beside the packs
(also of runs whose launch version is in a sweep's launch pack) and gives the same rows as
folding the runs loose; queries read only the columns they name; the trust flags of runs
without inputs or artifacts (no ``_lineage`` cell) are still computed."""

from __future__ import annotations

import os

from runrec_cluster.expr import parse
from runrec_cluster.lineage.retire import retire
from runrec_cluster.query.columns import package_reader
from runrec_cluster.query.index import Index
from runrec_cluster.query.index_packs import write_rows
from runrec_cluster.store import Store, layout, packs
from runrec_cluster.store.store import BATCH_PACK_RUNS


def _sweep(store: Store, n: int, *, finish: int | None = None) -> list[str]:
    """n runs launched together (one launch pack when n is large enough), then each run's job
    versions written loose; the first ``finish`` (default all) end."""
    items = []
    for i in range(n):
        rid = layout.new_id()
        patch = {
            "run_id": rid,
            "name": "sweep",
            "sweep_index": i,
            "state": "submitted",
            "attempt": 1,
            "config": {"lr": {"value": (0.1, 0.01)[i % 2], "source": "given"}},
            "tags": {"k": str(i % 3)},
        }
        items.append((rid, "launch", patch))
    store.write_versions(items, new_runs=True)
    ids = [rid for rid, _, _ in items]
    for i, rid in enumerate(ids):
        store.write_version(rid, "start", {"state": "running"}, role="job")
        store.write_version(rid, "metrics", {"metrics": {"acc": i / n}}, role="job")
        if finish is None or i < finish:
            store.write_version(rid, "end", {"state": "succeeded", "exit_code": 0}, role="job")
    return ids


def _rows(table) -> list[dict]:
    drop = [c for c in table.column_names if c.startswith("_dir")]
    return table.drop_columns(drop).sort_by("run_id").to_pylist()


def test_a_cold_index_of_launch_packed_runs_reads_kept_rows_equal_to_folding(tmp_path):
    store = Store(tmp_path / "s")
    store.ensure_writable()
    n = max(BATCH_PACK_RUNS, 80)
    ids = _sweep(store, n, finish=n - 5)  # 5 runs still running: they stay loose
    launch_packs = [
        p for s in packs.pack_shards(store.root) for p in packs.list_packs(store.root, s)
    ]
    assert launch_packs, "the sweep's launch versions went into a launch pack"
    loose = Index(store, index_dir=tmp_path / "loose").select(as_arrow=True)  # every run folded
    st = packs.pack_store(store.root)
    assert st.runs == n - 5
    for p in st.packs:
        assert write_rows(store, p, package_reader(store)) == n - 5
    cold = Index(Store(store.root), index_dir=tmp_path / "cold")
    ust = cold.update(rebuild=True)
    assert ust.runs == n and ust.read == 5  # only the 5 loose (unfinished) runs were folded
    assert _rows(cold.select(as_arrow=True)) == _rows(loose)
    # a late version beside the pack: that run is folded again, from all its versions
    Store(store.root).write_version(ids[0], "annotate", {"tags": {"late": "1"}})
    late = Index(Store(store.root), index_dir=tmp_path / "late")
    assert late.update(rebuild=True).read == 6
    got = {r["run_id"]: r for r in late.select(as_arrow=True).to_pylist()}
    assert got[ids[0]]["tags.late"] == "1" and got[ids[0]]["config.lr"] == 0.1
    assert got[ids[1]]["config.lr"] == 0.01 and got[ids[1]]["state"] == "succeeded"


def test_rows_of_one_pack_only_are_not_used_for_a_run_in_two_packs(tmp_path):
    """Rows written by an earlier runrec (format 1: folded from that pack's versions alone)
    would lack a launch pack's config: such runs are folded instead."""
    import pyarrow as pa
    import pyarrow.ipc as ipc

    store = Store(tmp_path / "s")
    store.ensure_writable()
    n = max(BATCH_PACK_RUNS, 70)
    _sweep(store, n)
    loose = Index(store, index_dir=tmp_path / "loose").select(as_arrow=True)
    (path,) = packs.pack_store(store.root).packs
    write_rows(store, path, package_reader(store))
    rows_file = packs.rows_path(path)
    with pa.memory_map(rows_file) as src:
        t = ipc.open_file(src).read_all()
    meta = dict(t.schema.metadata)
    meta[b"runrec.pack_rows"] = b"1"
    t = t.replace_schema_metadata(meta)
    os.chmod(rows_file, 0o644)
    with pa.OSFile(rows_file, "wb") as sink, ipc.new_file(sink, t.schema) as w:
        w.write_table(t)
    cold = Index(Store(store.root), index_dir=tmp_path / "cold")
    assert cold.update(rebuild=True).read == n  # every run is in the launch pack too
    assert _rows(cold.select(as_arrow=True)) == _rows(loose)


def test_a_query_reads_only_the_columns_it_names_and_gives_the_same_rows(tmp_path):
    store = Store(tmp_path / "s")
    store.ensure_writable()
    _sweep(store, 12)
    idx = Index(store)
    idx.update()
    expr = parse("config.lr == 0.1 and metrics.acc > 0.2")
    whole = idx.select(expr, as_arrow=True)
    some = Index(Store(store.root)).select(expr, columns=["run_id", "tags.k"], as_arrow=True)
    assert some.column_names == ["run_id", "tags.k"]
    assert some.to_pylist() == whole.select(["run_id", "tags.k"]).to_pylist()
    assert some.num_rows == sum(1 for i in range(12) if i % 2 == 0 and i / 12 > 0.2)


def test_trust_flags_of_runs_without_inputs_come_from_their_own_columns(tmp_path):
    store = Store(tmp_path / "s")
    store.ensure_writable()
    ids = _sweep(store, 6)
    retire(store, ids[2], state="invalidated", reason="bad shard")
    df = Index(Store(store.root)).select(columns=["run_id", "retired", "suspect"])
    flags = dict(zip(df["run_id"], df["retired"], strict=True))
    assert flags == {rid: rid == ids[2] for rid in ids}
    assert not df["suspect"].any()
