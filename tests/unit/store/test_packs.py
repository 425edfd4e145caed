"""Packs (store/packs.py): finished runs' versions in one file, read through Store like loose ones."""

from __future__ import annotations

import os
import stat

import pytest

from runrec_cluster.errors import CorruptRecord
from runrec_cluster.store import Store, codec, layout, packs


def _run(store: Store, *, finish: bool = True, extra: int = 0) -> str:
    rid = layout.new_id()
    store.write_version(rid, "launch", {"run_id": rid, "name": "p", "tags": {"kind": "p"}})
    store.write_version(rid, "start", {"state": "running"}, role="job")
    for i in range(extra):
        store.write_version(rid, "metrics", {"metrics": {f"m{i}": i}}, role="job")
    if finish:
        store.write_version(rid, "end", {"state": "succeeded", "exit_code": 0}, role="job")
    return rid


def _files(root: str) -> list[str]:
    return sorted(
        os.path.relpath(os.path.join(d, n), root) for d, _, ns in os.walk(root) for n in ns
    )


def test_pack_moves_finished_runs_and_reads_back_the_same(tmp_path):
    store = Store(tmp_path / "s")
    store.ensure_writable()
    done = [_run(store, extra=3) for _ in range(150)]  # several chunks
    running = _run(store, finish=False)
    before = {rid: store.load(rid) for rid in [*done, running]}
    stats = packs.pack_store(store.root)
    assert stats.runs == 150 and stats.versions == 150 * 6 and len(stats.packs) == 1
    # the finished runs' directories are gone; the running one is loose still
    for rid in done:
        assert not os.path.exists(layout.run_dir(store.root, rid))
    assert os.listdir(layout.run_dir(store.root, running))
    fresh = Store(store.root)
    assert sorted(fresh.run_ids()) == sorted([*done, running])
    for rid, rec in before.items():
        assert fresh.load(rid) == rec
        # prefix resolution finds packed runs (16 characters: 12 may be shared by two ids made
        # in one millisecond, 10 bits of randomness apart)
        assert fresh.load(rid[:16]) == rec
    assert len(fresh.load_all()) == 151
    # a second pack finds nothing to do
    assert packs.pack_store(store.root).runs == 0


def test_a_late_version_goes_loose_beside_the_pack_and_folds_in(tmp_path):
    store = Store(tmp_path / "s")
    store.ensure_writable()
    rid = _run(store)
    packs.pack_store(store.root)
    assert not os.path.exists(layout.run_dir(store.root, rid))
    v = Store(store.root).write_version(rid, "annotate", {"tags": {"late": "yes"}})
    assert v.seq == 4  # continues after the packed versions, not from 1
    rec = Store(store.root).load(rid)
    assert rec.tags == {"kind": "p", "late": "yes"} and rec.state.value == "succeeded"
    # packing again moves the late version into a second pack; still read exactly once
    stats = packs.pack_store(store.root)
    assert stats.runs == 1 and stats.versions == 1
    assert [x.seq for x in Store(store.root).versions(rid)] == [1, 2, 3, 4]


def test_a_version_both_loose_and_packed_is_read_once(tmp_path):
    store = Store(tmp_path / "s")
    store.ensure_writable()
    rid = _run(store)
    d = layout.run_dir(store.root, rid)
    loose = {n: codec.decompress(open(os.path.join(d, n), "rb").read()) for n in os.listdir(d)}
    # as a packer killed after its pack landed and before it deleted anything
    path = os.path.join(packs.shard_dir(store.root, rid[:5]), f"{layout.new_id()}.pack")
    os.makedirs(os.path.dirname(path))
    with open(path, "wb") as f:
        f.write(packs.encode_pack({rid: list(loose.items())}))
    vs = Store(store.root).versions(rid)
    assert sorted(v.seq for v in vs) == [1, 2, 3]
    # the next pack deletes the loose copies without writing another pack
    stats = packs.pack_store(store.root)
    assert stats.packs == [] and stats.deleted == 3
    assert sorted(v.seq for v in Store(store.root).versions(rid)) == [1, 2, 3]


def test_a_damaged_pack_is_reported_not_silently_skipped(tmp_path):
    store = Store(tmp_path / "s")
    store.ensure_writable()
    rid = _run(store)
    (path,) = packs.pack_store(store.root).packs
    os.chmod(path, 0o644)
    with open(path, "r+b") as f:
        f.truncate(os.path.getsize(path) - 5)
    with pytest.raises(CorruptRecord, match="pack"):
        packs.read_index(path)
    probs = []
    assert Store(store.root).versions(rid, probs) == []
    assert probs and probs[0].path == path and "truncated" in probs[0].message
    with pytest.raises(CorruptRecord, match="runrec fsck"):
        Store(store.root).versions(rid)


def test_iter_pack_reads_every_run_once(tmp_path):
    store = Store(tmp_path / "s")
    store.ensure_writable()
    ids = {_run(store) for _ in range(70)}
    (path,) = packs.pack_store(store.root).packs
    got = [rid for rid, entries in packs.iter_pack(packs.read_index(path)) if len(entries) == 3]
    assert sorted(got) == sorted(ids)


def test_packs_get_the_store_permission_modes(tmp_path):
    store = Store(tmp_path / "s")
    store.ensure_writable(mode="private")
    _run(store)
    (path,) = packs.pack_store(store.root).packs
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o400
    assert stat.S_IMODE(os.stat(os.path.dirname(path)).st_mode) == 0o700
    assert stat.S_IMODE(os.stat(packs.packs_dir(store.root)).st_mode) == 0o700


def test_min_age_leaves_recent_runs_loose(tmp_path):
    store = Store(tmp_path / "s")
    store.ensure_writable()
    rid = _run(store)
    assert packs.pack_store(store.root, min_age_s=3600).runs == 0
    assert os.path.isdir(layout.run_dir(store.root, rid))


def test_the_query_index_sees_runs_move_into_packs_and_late_versions(tmp_path):
    from runrec_cluster.query.index import Index  # the query layer, above the store

    store = Store(tmp_path / "s")
    store.ensure_writable()
    ids = [_run(store) for _ in range(5)]
    idx = Index(store)
    assert idx.update().runs == 5
    packs.pack_store(store.root)
    st = idx.update(full=True)  # every run's signature changed (its directory went away)
    assert st.runs == 5 and st.removed == 0
    Store(store.root).write_version(ids[0], "annotate", {"tags": {"late": "1"}})
    assert idx.update().runs == 5  # through the journal: the run is packed, its late version loose
    df = idx.select()
    assert sorted(df["run_id"]) == sorted(ids)
    assert set(df[df["run_id"] == ids[0]]["state"]) == {"succeeded"}
    cold = Index(Store(store.root), index_dir=tmp_path / "cold")
    assert cold.update(rebuild=True).runs == 5


def test_fsck_reads_packs_and_reports_a_damaged_one(tmp_path):
    from runrec_cluster import fsck  # above the store

    store = Store(tmp_path / "s")
    store.ensure_writable()
    ids = [_run(store) for _ in range(3)]
    (path,) = packs.pack_store(store.root).packs
    Store(store.root).write_version(ids[0], "annotate", {"tags": {"late": "1"}})
    rep = fsck.check(Store(store.root))
    assert not rep.problems, rep.problems
    assert rep.counts.runs == 3 and rep.counts.versions == 10 and rep.counts.packs == 1
    os.chmod(path, 0o644)
    with open(path, "r+b") as f:
        f.seek(20)
        f.write(b"\0" * 16)  # inside the first chunk
    rep = fsck.check(Store(store.root))
    assert [f.kind for f in rep.problems][:1] == ["bad_pack"]
    assert rep.problems[0].path == path


def test_a_cold_index_uses_the_kept_rows_of_packs_and_matches_folding(tmp_path):
    from runrec_cluster.query.columns import package_reader
    from runrec_cluster.query.index import Index
    from runrec_cluster.query.index_packs import write_rows

    store = Store(tmp_path / "s")
    store.ensure_writable()
    ids = [_run(store, extra=1) for _ in range(40)]
    folded = Index(store, index_dir=tmp_path / "i0").select(as_arrow=True)
    (path,) = packs.pack_store(store.root).packs
    assert write_rows(store, path, package_reader(store)) == 40
    Store(store.root).write_version(ids[0], "annotate", {"tags": {"late": "1"}})  # loose beside
    cold = Index(Store(store.root), index_dir=tmp_path / "i1")
    st = cold.update(rebuild=True)
    assert st.runs == 40 and st.read == 1  # only the run with a loose version was folded
    got = cold.select(as_arrow=True)
    drop = [c for c in folded.column_names if c.startswith("_dir")]
    want = folded.drop_columns(drop).sort_by("run_id").to_pylist()
    have = got.drop_columns(drop).sort_by("run_id").to_pylist()
    # the annotated run by its id: ids made in one millisecond do not sort in creation order
    late = [r["run_id"] for r in have if r.get("tags.late") == "1"]
    assert late == [ids[0]] and all(w.get("tags.late") is None for w in want)
    for w, h in zip(want, have, strict=True):
        w.pop("tags.late", None)
        h.pop("tags.late", None)
        assert w == h
    # a damaged rows file is ignored: every run is folded
    os.chmod(packs.rows_path(path), 0o644)
    with open(packs.rows_path(path), "wb") as f:
        f.write(b"junk")
    st = Index(Store(store.root), index_dir=tmp_path / "i2").update(rebuild=True)
    assert st.runs == 40 and st.read == 40


def test_runs_with_a_shared_launch_context_are_packed_and_read_whole(tmp_path):
    from runrec_cluster.record import CONTEXT_KEY

    store = Store(tmp_path / "s")
    store.ensure_writable()
    ctx = store.put_context({"name": "sweep", "tags": {"shared": "yes"}})
    ids = []
    for i in range(3):
        rid = layout.new_id()
        store.write_version(rid, "launch", {CONTEXT_KEY: ctx, "run_id": rid, "sweep_index": i})
        store.write_version(rid, "end", {"state": "cancelled"}, role="job")
        ids.append(rid)
    before = [store.load(r) for r in ids]
    assert before[0].tags == {"shared": "yes"}
    assert packs.pack_store(store.root).runs == 3
    assert [Store(store.root).load(r) for r in ids] == before


def test_an_empty_directory_a_killed_packer_left_is_removed_next_time(tmp_path):
    store = Store(tmp_path / "s")
    store.ensure_writable()
    rid = _run(store)
    packs.pack_store(store.root)
    d = layout.run_dir(store.root, rid)
    os.makedirs(d)  # as a packer killed between its last unlink and its rmdir
    assert packs.pack_store(store.root).runs == 0
    assert not os.path.exists(d)
    assert len(Store(store.root).versions(rid)) == 3


def test_enough_finished_loose_runs_start_a_background_pack(tmp_path, monkeypatch):
    import time

    from runrec_cluster.query import autopack
    from runrec_cluster.query.index import Index

    monkeypatch.setenv("RUNREC_AUTO_PACK", "4")
    monkeypatch.setenv("RUNREC_AUTO_PACK_MIN_AGE_S", "0")
    monkeypatch.chdir(os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(__file__)))))
    store = Store(tmp_path / "s")
    store.ensure_writable()
    ids = [_run(store) for _ in range(3)]
    running = _run(store, finish=False)
    idx = Index(store)
    assert idx.update().packing is False  # 3 finished runs: under the threshold
    ids.append(_run(store))
    st = idx.update(full=True)
    assert st.packing is True
    assert idx.update(full=True).packing is False  # once an hour at most (the stamp)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and any(
        os.path.exists(layout.run_dir(store.root, r)) for r in ids
    ):
        time.sleep(0.2)
    assert not any(os.path.exists(layout.run_dir(store.root, r)) for r in ids)
    assert os.path.isdir(layout.run_dir(store.root, running))
    assert len(list(Store(store.root).run_ids())) == 5
    for p in autopack._started:
        p.wait(timeout=60)
    monkeypatch.setenv("RUNREC_AUTO_PACK", "0")
    os.unlink(os.path.join(idx.dir, autopack.STAMP))
    assert idx.update(full=True).packing is False  # turned off


def test_a_warm_index_takes_just_packed_runs_from_their_kept_rows(tmp_path):
    from runrec_cluster.query.columns import package_reader
    from runrec_cluster.query.index import Index
    from runrec_cluster.query.index_packs import write_rows

    store = Store(tmp_path / "s")
    store.ensure_writable()
    ids = [_run(store) for _ in range(6)]
    idx = Index(store)
    before = idx.select(as_arrow=True).sort_by("run_id").to_pylist()
    (path,) = packs.pack_store(store.root).packs
    write_rows(store, path, package_reader(store))
    st = idx.update(full=True)
    assert st.runs == 6 and st.read == 0  # nothing folded again: the kept rows
    assert idx.select(as_arrow=True).sort_by("run_id").to_pylist() == before
    # a loose directory beside the pack (a packer killed before deleting): folded, not kept
    d = layout.run_dir(store.root, ids[1])
    os.makedirs(d)
    st = Index(Store(store.root), index_dir=tmp_path / "c").update(rebuild=True)
    assert st.runs == 6 and st.read == 1


def test_a_shard_listing_is_reused_only_while_its_directory_is_unchanged(tmp_path, monkeypatch):
    """``list_packs`` lists a shard of many launch packs again only when its directory's
    mtime moved (or is too recent to trust): a pack linked later is seen at once."""
    root = str(tmp_path)
    shard = "01abc"
    d = packs.shard_dir(root, shard)
    os.makedirs(d)
    first = os.path.join(d, "01abc" + "0" * 21 + ".pack")
    open(first, "wb").close()
    calls = []
    real = os.listdir
    monkeypatch.setattr(os, "listdir", lambda p: calls.append(p) or real(p))
    assert packs.list_packs(root, shard) == [first]
    assert packs.list_packs(root, shard) == [first] and len(calls) == 2, "recent: listed again"
    old = os.stat(d).st_mtime_ns - 60 * 10**9  # as if the last change were a minute old
    os.utime(d, ns=(old, old))
    packs.list_packs(root, shard)
    n = len(calls)
    assert packs.list_packs(root, shard) == [first] and len(calls) == n, "old, unchanged: reused"
    second = os.path.join(d, "01abc" + "1" * 21 + ".pack")
    open(second, "wb").close()  # a new pack moves the directory's mtime
    assert packs.list_packs(root, shard) == [first, second] and len(calls) == n + 1


def test_the_run_to_packs_map_gains_new_packs_and_matches_a_fresh_read(tmp_path):
    """A reader that has mapped a shard's runs to their packs adds the packs that appear
    later (a sweep's launch pack each) instead of re-reading the shard; what it answers is what
    a fresh reader answers, also for a run in two packs (launch pack, then `runrec pack`)."""
    store = Store(str(tmp_path / "s"))
    store.ensure_writable()

    def sweep(n: int) -> list[str]:
        ids = [layout.new_id() for _ in range(n)]
        store.write_versions(
            [(r, "launch", {"run_id": r, "name": "s", "state": "submitted"}) for r in ids],
            new_runs=True,
        )
        return ids

    first = sweep(70)
    cache = packs.PackCache(store.root)
    assert len(cache.run_packs(first[0])) == 1  # the map is built
    second = sweep(80)
    for rid in first[:3]:
        store.write_version(rid, "end", {"state": "succeeded", "exit_code": 0}, role="job")
    packs.pack_store(store.root)  # a third pack: first[:3]'s end versions
    third = sweep(65)

    def no_rebuild(*a, **k):
        raise AssertionError("the shard was read whole again")

    cache.shard_indexes = no_rebuild  # type: ignore[method-assign]
    fresh = packs.PackCache(store.root)
    for rid in [*first, *second, *third]:
        assert [i.path for i in cache.run_packs(rid)] == [i.path for i in fresh.run_packs(rid)]
    assert len(cache.run_packs(first[0])) == 2 and len(cache.run_packs(first[5])) == 1
    reader = Store(store.root)
    assert reader.load(first[0]).state.value == "succeeded"
    assert [reader.load(r).state.value for r in (second[0], third[-1])] == ["submitted"] * 2
