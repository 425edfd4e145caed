"""A map_array of many tasks writes its launch records as one pack and its scheduler ids as a
second one (issue 17): real job processes on the local backend, ground truth from the files
(tests/rawstore.py) and from the real `runrec` command."""

import json
import os

import jobfns
import pytest
from helpers import run_cli
from rawstore import raw_packs, raw_run_ids, raw_versions

import runrec_cluster as rr
from runrec_cluster.store import layout

TASKS = 70  # above Store.write_versions' BATCH_PACK_RUNS (64): packed


@pytest.fixture
def ex(store, repo, monkeypatch):
    monkeypatch.chdir(repo)
    return rr.Executor(backend="local", store=store, name="lp", local_max_parallel=2)


def _loose_files(root: str) -> list[str]:
    return [os.path.join(d, n) for d, _, ns in os.walk(os.path.join(root, "runs")) for n in ns]


def test_a_large_sweep_writes_one_launch_pack_and_runs_through(ex, store, repo):
    hs = ex.map_array(jobfns.add, [{"a": i} for i in range(TASKS)])
    ids = {h.run_id for h in hs}
    (shard,) = {r[: layout.SHARD_LEN] for r in ids}
    # right after the call: every run exists in the files, from the launch and dispatch packs
    assert ids <= raw_run_ids(store.root)
    assert len(raw_packs(store.root, shard)) == 2  # the launch, the submitter's dispatch
    for h in hs:
        rec = rr.Store(store.root).load(h.run_id)
        assert rec.name == "lp" and rec.sweep_id and rec.execution.backend == "local"
    assert [h.result(timeout=600) for h in hs] == [i + 10 for i in range(TASKS)]
    for i, h in enumerate(hs):
        raw = raw_versions(store.root, h.run_id)
        events = [(v["event"], v["writer"]["role"]) for v in raw]
        assert events[:2] == [("launch", "submitter"), ("dispatch", "submitter")], events
        assert ("start", "job") in events and events[-1] == ("end", "job")
        assert raw[0]["patch"]["sweep_index"] == i
        assert "#" in raw[0]["_path"] and "#" in raw[1]["_path"]  # both in packs
        assert raw[-1]["patch"]["state"] == "succeeded"
    # only the versions written after the launch are loose: the supervisor's process
    # identity, the job's start and end
    assert len(_loose_files(store.root)) == 3 * TASKS
    # the command line sees them like any run
    ls = run_cli("ls", "--store", store.root, "--json", "--limit", "500")
    assert ls.returncode == 0, ls.stderr
    assert {r["run_id"] for r in json.loads(ls.stdout)} == ids
    hist = run_cli("history", "--store", store.root, hs[0].run_id)
    assert hist.returncode == 0 and "launch" in hist.stdout and "end" in hist.stdout
    fsck = run_cli("fsck", "--store", store.root, "--json")
    assert fsck.returncode == 0, fsck.stdout + fsck.stderr
    assert not json.loads(fsck.stdout)["problems"]
    # `runrec pack` folds the loose versions of the finished runs; the launch pack stays
    pk = run_cli("pack", "--store", store.root)
    assert pk.returncode == 0, pk.stderr
    assert _loose_files(store.root) == []
    assert len(raw_packs(store.root, shard)) == 3
    assert [rr.load(store, h.run_id).state for h in hs] == [rr.RunState.SUCCEEDED] * TASKS
    assert [v["event"] for v in raw_versions(store.root, hs[0].run_id)][-1] == "end"


def test_rerun_sweep_writes_its_launch_records_together(ex, store):
    hs = ex.map_array(jobfns.add, [{"a": i} for i in range(TASKS)])
    for h in hs:
        h.wait(timeout=600)
    sweep = hs[0].record().sweep_id
    (shard,) = {h.run_id[: layout.SHARD_LEN] for h in hs}
    before = set(raw_packs(store.root, shard))
    new = rr.rerun_sweep(store, sweep, reason="launch pack test")
    assert len(new) == TASKS
    new_shards = {h.run_id[: layout.SHARD_LEN] for h in new}
    added = {p for s in new_shards for p in raw_packs(store.root, s)} - before
    assert len(added) == 2  # the reruns' launch pack and their dispatch pack
    for old, h in zip(hs, new, strict=True):
        raw = raw_versions(store.root, h.run_id)
        assert raw[0]["event"] == "launch" and "#" in raw[0]["_path"]
        assert raw[0]["patch"]["rerun_of"] == old.run_id
    assert [h.result(timeout=600) for h in new] == [i + 10 for i in range(TASKS)]
