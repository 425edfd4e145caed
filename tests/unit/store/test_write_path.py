"""Store.write_version's path (issue 17): a run's first loose version makes the run directory
first and, when that mkdir succeeds, takes the listing as known (empty) instead of an lstat and
a listdir. These tests hold the rules that must not move: seqs continue from the loose and the
packed versions, every writer's seqs rise, links planted in the store are never written
through, the store's modes apply, nothing is lost with several writers at once."""

from __future__ import annotations

import multiprocessing
import os
import stat

import pytest

from runrec_cluster.errors import StoreError
from runrec_cluster.store import Store, layout, packs


def _store(tmp_path, **kw) -> Store:
    store = Store(tmp_path / "s")
    store.ensure_writable(**kw)
    return store


def _launch_pack(store: Store, n: int = 70) -> list[str]:
    ids = [layout.new_id() for _ in range(n)]
    store.write_versions([(r, "launch", {"run_id": r, "state": "submitted"}) for r in ids])
    assert os.path.isdir(packs.packs_dir(store.root))
    return ids


def _seqs(store: Store, run_id: str) -> list[int]:
    return sorted(v.seq for v in Store(store.root).versions(run_id))


def _names(store: Store, run_id: str) -> list[str]:
    return sorted(os.listdir(layout.run_dir(store.root, run_id)))


def test_the_first_loose_version_after_a_launch_pack_continues_its_seq(tmp_path):
    store = _store(tmp_path)
    ids = _launch_pack(store)
    for rid in ids[:5]:
        assert not os.path.exists(layout.run_dir(store.root, rid))
        v = store.write_version(rid, "end", {"state": "succeeded"}, role="job")
        assert v.seq == 2
        (name,) = _names(store, rid)
        assert layout.version_seq(name) == 2
    # the same Store again (the directory is known now), then another Store (it is not)
    assert store.write_version(ids[0], "annotate", {"tags": {"a": "1"}}).seq == 3
    assert Store(store.root).write_version(ids[0], "annotate", {"tags": {"b": "2"}}).seq == 4
    assert _seqs(store, ids[0]) == [1, 2, 3, 4]
    rec = Store(store.root).load(ids[0])
    assert rec.state.value == "succeeded" and rec.tags == {"a": "1", "b": "2"}


def test_a_new_run_and_a_new_shard_start_at_one(tmp_path):
    store = _store(tmp_path)
    rid = layout.new_id()
    shard = os.path.join(store.root, "runs", rid[: layout.SHARD_LEN])
    assert not os.path.exists(shard)
    assert store.write_version(rid, "launch", {"run_id": rid}).seq == 1
    assert store.write_version(rid, "start", {"state": "running"}).seq == 2
    other = rid[: layout.SHARD_LEN] + layout.new_id()[layout.SHARD_LEN :]
    assert store.write_version(other, "launch", {"run_id": other}).seq == 1
    assert _seqs(store, rid) == [1, 2] and _seqs(store, other) == [1]


def test_writers_take_turns_on_one_run_and_seqs_keep_rising(tmp_path):
    store = _store(tmp_path)
    rid = layout.new_id()
    a, b = Store(store.root), Store(store.root)
    got = []
    for i in range(6):
        w = (a, b)[i % 2]
        got.append(w.write_version(rid, "metrics", {"metrics": {f"m{i}": i}}, role="job").seq)
    assert got == [1, 2, 3, 4, 5, 6]
    assert len(_names(store, rid)) == 6


def test_after_the_packer_removed_the_run_directory_seqs_continue_from_the_pack(tmp_path):
    store = _store(tmp_path)
    rid = layout.new_id()
    store.write_version(rid, "launch", {"run_id": rid})
    store.write_version(rid, "end", {"state": "succeeded", "exit_code": 0}, role="job")
    d = layout.run_dir(store.root, rid)
    assert packs.pack_store(store.root).runs == 1
    assert not os.path.exists(d)  # packed, its directory removed: this Store had made it
    assert store.write_version(rid, "annotate", {"tags": {"a": "1"}}).seq == 3
    assert packs.pack_store(store.root).runs == 1 and not os.path.exists(d)
    assert Store(store.root).write_version(rid, "annotate", {"tags": {"b": "1"}}).seq == 4
    assert packs.pack_store(store.root).runs == 1 and not os.path.exists(d)
    os.makedirs(d)  # the empty directory of a packer killed before its rmdir
    assert Store(store.root).write_version(rid, "annotate", {"tags": {"c": "1"}}).seq == 5
    assert _seqs(store, rid) == [1, 2, 3, 4, 5]
    assert Store(store.root).load(rid).tags == {"a": "1", "b": "1", "c": "1"}


def test_the_empty_directory_of_a_killed_packer_is_used_as_it_is(tmp_path):
    store = _store(tmp_path)
    (rid, *_) = _launch_pack(store)
    d = layout.run_dir(store.root, rid)
    os.makedirs(d)
    v = Store(store.root).write_version(rid, "end", {"state": "succeeded"}, role="job")
    assert v.seq == 2 and _names(store, rid) == [layout.version_name(2, _writer(store, rid))]


def _writer(store: Store, run_id: str) -> str:
    (name,) = _names(store, run_id)
    m = layout.VERSION_RE.match(name)
    assert m
    return m.group(2)


@pytest.mark.parametrize("where", ["run", "shard"])
def test_a_link_planted_at_the_run_or_its_shard_is_never_written_through(tmp_path, where):
    store = _store(tmp_path)
    outside = tmp_path / "outside"
    outside.mkdir()
    rid = layout.new_id()
    d = layout.run_dir(store.root, rid)
    link = d if where == "run" else os.path.dirname(d)
    os.makedirs(os.path.dirname(link), exist_ok=True)
    os.symlink(outside, link)
    for s in (store, Store(store.root)):
        with pytest.raises(StoreError, match="outside the store"):
            s.write_version(rid, "launch", {"run_id": rid})
    assert os.listdir(outside) == []


def test_a_link_planted_after_a_store_made_the_shard_is_refused_for_new_runs(tmp_path):
    store = _store(tmp_path)
    first = layout.new_id()
    store.write_version(first, "launch", {"run_id": first})
    outside = tmp_path / "outside"
    outside.mkdir()
    rid = first[: layout.SHARD_LEN] + layout.new_id()[layout.SHARD_LEN :]
    os.symlink(outside, layout.run_dir(store.root, rid))
    with pytest.raises(StoreError, match="outside the store"):
        store.write_version(rid, "launch", {"run_id": rid})
    assert os.listdir(outside) == []


def test_a_file_where_the_run_directory_goes_is_a_clear_error(tmp_path):
    store = _store(tmp_path)
    rid = layout.new_id()
    d = layout.run_dir(store.root, rid)
    os.makedirs(os.path.dirname(d))
    with open(d, "w") as f:
        f.write("not a directory")
    with pytest.raises(StoreError, match=rid):
        store.write_version(rid, "launch", {"run_id": rid})


@pytest.mark.parametrize("mode,dir_mode", [("private", 0o700), ("group", 0o2770)])
def test_a_run_directory_made_on_the_way_gets_the_store_modes(tmp_path, mode, dir_mode):
    store = _store(tmp_path, mode=mode)
    ids = _launch_pack(store)
    rid = layout.new_id()
    store.write_version(rid, "launch", {"run_id": rid})
    Store(store.root).write_version(ids[0], "end", {"state": "succeeded"}, role="job")
    for r in (rid, ids[0]):
        d = layout.run_dir(store.root, r)
        assert stat.S_IMODE(os.stat(d).st_mode) == dir_mode
        assert stat.S_IMODE(os.stat(os.path.dirname(d)).st_mode) == dir_mode


def _writer_proc(root: str, ids: list[str], k: int, go) -> None:
    store = Store(root)
    go.wait()
    for i in range(3):
        for rid in ids:
            store.write_version(rid, "metrics", {"metrics": {f"w{k}_{i}": i}}, role="job")


def test_writers_at_once_on_the_same_new_runs_lose_nothing(tmp_path):
    """4 processes write 3 versions each to the same 40 runs (half after a launch pack, half
    brand new), released together: all 12 versions of every run are there, each writer's seqs
    rise, and the file names never collide."""
    store = _store(tmp_path)
    ids = _launch_pack(store, 70)[:20] + [layout.new_id() for _ in range(20)]
    ctx = multiprocessing.get_context("fork")
    go = ctx.Event()
    procs = [ctx.Process(target=_writer_proc, args=(store.root, ids, k, go)) for k in range(4)]
    for p in procs:
        p.start()
    go.set()
    for p in procs:
        p.join(60)
        assert p.exitcode == 0
    for n, rid in enumerate(ids):
        vs = Store(store.root).versions(rid)
        metrics = [v for v in vs if v.event == "metrics"]
        assert len(metrics) == 12 and len(_names(store, rid)) == 12
        for k in range(4):
            mine = [
                v.seq
                for v in sorted(metrics, key=lambda v: v.seq)
                if any(key.startswith(f"w{k}_") for key in v.patch["metrics"])
            ]
            order = [
                next(iter(v.patch["metrics"]))
                for v in sorted(metrics, key=lambda v: v.seq)
                if any(key.startswith(f"w{k}_") for key in v.patch["metrics"])
            ]
            assert order == [f"w{k}_0", f"w{k}_1", f"w{k}_2"], (rid, order)
            assert mine == sorted(set(mine))  # strictly rising
            assert min(mine) >= (2 if n < 20 else 1)
        rec = Store(store.root).load(rid)
        assert len(rec.metrics) == 12
