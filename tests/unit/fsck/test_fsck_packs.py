"""fsck and packs: blobs and logs in packs checked, versions in both places noted, and
``--repair`` of a damaged pack keeps every readable version (fsck/pack_repair.py). Ground truth:
the records this test wrote, read before the damage."""

from __future__ import annotations

import os

import msgspec

from runrec_cluster import fsck
from runrec_cluster.store import Store, codec, layout, packs


def _runs(store: Store, n: int, *, extra: int = 1) -> list[str]:
    ids = []
    for i in range(n):
        rid = layout.new_id()
        store.write_version(rid, "launch", {"run_id": rid, "name": f"r{i}"})
        for k in range(extra):
            store.write_version(rid, "metrics", {"metrics": {"k": k}}, role="job")
        blob = store.put_blob(f"result {i}".encode())
        store.write_version(
            rid, "end", {"state": "succeeded", "result": {"blob": blob, "format": "msgpack"}}
        )
        ids.append(rid)
    return ids


def _damage(path: str, at: int, data: bytes) -> None:
    os.chmod(path, 0o644)
    with open(path, "r+b") as f:
        f.seek(at)
        f.write(data)


def test_a_packed_store_with_blobs_and_logs_is_clean(tmp_path):
    store = Store(tmp_path / "s")
    store.ensure_writable()
    ids = _runs(store, 3)
    d = layout.log_dir(store.root, ids[0])
    os.makedirs(d)
    with open(os.path.join(d, "stdout.txt"), "wb") as f:
        f.write(b"out\n")
    st = packs.pack_store(store.root, log_quiet_s=0)
    assert st.blobs == 3 and st.logs == 1
    rep = fsck.check(Store(store.root))
    assert rep.findings == [], [f.to_dict() for f in rep.findings]
    assert rep.counts.packed_blobs == 3 and rep.counts.runs == 3 and rep.counts.versions == 9


def test_a_blob_in_a_pack_that_fails_its_hash_is_a_bad_pack(tmp_path):
    store = Store(tmp_path / "s")
    store.ensure_writable()
    rid = layout.new_id()
    path = os.path.join(packs.shard_dir(store.root, rid[:5]), f"{layout.new_id()}.pack")
    os.makedirs(os.path.dirname(path))
    with open(path, "wb") as f:
        f.write(packs.encode_pack({}, {"a" * 64: b"not what its name says"}))
    rep = fsck.check(Store(store.root))
    assert [(f.kind, f.digest) for f in rep.problems] == [("bad_pack", "sha256:" + "a" * 64)]


def test_versions_both_loose_and_packed_are_a_note(tmp_path):
    store = Store(tmp_path / "s")
    store.ensure_writable()
    (rid,) = _runs(store, 1)
    d = layout.run_dir(store.root, rid)
    loose = [(n, codec.decompress(open(os.path.join(d, n), "rb").read())) for n in os.listdir(d)]
    path = os.path.join(packs.shard_dir(store.root, rid[:5]), f"{layout.new_id()}.pack")
    os.makedirs(os.path.dirname(path))
    with open(path, "wb") as f:
        f.write(packs.encode_pack({rid: loose}))  # a packer killed before it deleted them
    rep = fsck.check(Store(store.root))
    assert rep.ok and [f.kind for f in rep.notes] == ["loose_and_packed"]
    assert "3 version(s) of 1 run(s)" in rep.notes[0].message
    assert rep.counts.versions == 3


def test_repair_of_a_truncated_pack_keeps_every_readable_run(tmp_path):
    store = Store(tmp_path / "s")
    store.ensure_writable()
    ids = _runs(store, 150)  # 3 chunks of versions
    before = {rid: store.load(rid) for rid in ids}
    (path,) = packs.pack_store(store.root).packs
    idx = packs.read_index(path)
    cut = idx.chunks[2][0] + 10  # inside the third chunk: the index and the blobs are gone too
    os.chmod(path, 0o644)
    with open(path, "r+b") as f:
        f.truncate(cut)
    rep = fsck.check(Store(store.root))
    assert [f.kind for f in rep.problems] == ["bad_pack"]
    done = fsck.repair(Store(store.root), min_age_s=0)
    kinds = [a.action for a in done.repair.actions]
    assert "rewrite_pack" in kinds and not os.path.exists(path)
    assert any("truncated chunk" in a.message for a in done.repair.actions)
    fresh = Store(store.root)
    kept = [rid for rid in ids if idx.runs[rid][0] < 2]
    assert len(kept) == 128
    for rid in kept:  # every run of the two whole chunks reads as before, the lost blob said
        rec = fresh.load(rid)
        assert msgspec.structs.replace(rec, warnings=[]) == before[rid]
        assert "is missing from the store; what it held is lost" in rec.warnings[0]
    assert sorted(fresh.run_ids()) == sorted(kept)
    # the results (blobs) were in the lost tail: the loss is written into each run
    assert not [f for f in done.problems if f.kind != "dangling_reference"]
    # the damaged pack is in quarantine, whole
    assert (
        os.path.getsize(os.path.join(done.repair.quarantine, os.path.relpath(path, store.root)))
        == cut
    )


def test_repair_sets_a_damaged_packed_version_aside_and_keeps_the_rest(tmp_path):
    store = Store(tmp_path / "s")
    store.ensure_writable()
    ids = _runs(store, 3, extra=2)
    before = {rid: store.load(rid) for rid in ids}
    entries = {}
    for rid in ids:
        d = layout.run_dir(store.root, rid)
        entries[rid] = [
            (n, codec.decompress(open(os.path.join(d, n), "rb").read()))
            for n in sorted(os.listdir(d))
        ]
    bad = ids[1]
    name2, _ = entries[bad][1]
    entries[bad][1] = (name2, b"\xc1 not msgpack")  # version 2 of one run, damaged in a pack
    path = os.path.join(packs.shard_dir(store.root, bad[:5]), f"{layout.new_id()}.pack")
    os.makedirs(os.path.dirname(path))
    with open(path, "wb") as f:
        f.write(packs.encode_pack(entries))
    for rid in ids:  # as a packer does once its pack is linked
        d = layout.run_dir(store.root, rid)
        for n in os.listdir(d):
            os.unlink(os.path.join(d, n))
        os.rmdir(d)
    rep = fsck.check(Store(store.root))
    assert [(f.kind, f.run_id, f.seq) for f in rep.problems] == [("bad_pack", bad, 2)]
    done = fsck.repair(Store(store.root), min_age_s=0)
    assert done.ok, [f.to_dict() for f in done.problems]
    fresh = Store(store.root)
    for rid in ids:
        if rid != bad:
            assert fresh.load(rid) == before[rid]
    vs = fresh.versions(bad)
    assert sorted(v.seq for v in vs) == [1, 2, 3, 4]
    (ph,) = [v for v in vs if v.seq == 2]
    assert (
        ph.event == fsck.FSCK_EVENT and "damaged and moved to quarantine" in ph.patch["warnings"][0]
    )
    moved = os.path.join(done.repair.quarantine, "runs", bad[:5], bad, name2)
    assert codec.decompress(open(moved, "rb").read()) == b"\xc1 not msgpack"
    assert fresh.load(bad).metrics == before[bad].metrics  # the other metrics version is kept
