"""Versions of many runs written together (Store.write_versions): the launch of a map_array in
one pack file, read back like loose versions by runrec and by the tests' own raw reader."""

from __future__ import annotations

import os
import random
import signal
import stat
import subprocess
import sys
import textwrap
import time

import pytest
from rawstore import raw_packs, raw_run_ids, raw_versions

from runrec_cluster.store import Store, layout, packs
from runrec_cluster.store.store import BATCH_PACK_RUNS

HERE = os.path.dirname(os.path.abspath(__file__))
TESTS = os.path.dirname(os.path.dirname(HERE))


def _store(tmp_path, **kw) -> Store:
    store = Store(tmp_path / "s")
    store.ensure_writable(**kw)
    return store


def _launches(n: int) -> list[tuple[str, str, dict]]:
    out = []
    for i in range(n):
        rid = layout.new_id()
        patch = {"run_id": rid, "name": "b", "sweep_index": i, "state": "submitted", "attempt": 1}
        out.append((rid, "launch", patch))
    return out


def _files(root: str, sub: str) -> list[str]:
    return sorted(
        os.path.relpath(os.path.join(d, n), root)
        for d, _, ns in os.walk(os.path.join(root, sub))
        for n in ns
    )


def test_a_large_batch_is_one_pack_and_every_run_reads_back(tmp_path):
    store = _store(tmp_path)
    items = _launches(100)
    vs = store.write_versions(items, new_runs=True)
    assert [v.seq for v in vs] == [1] * 100
    shard = items[0][0][: layout.SHARD_LEN]
    # one file for the whole call (ids made in the same ~2.3 h: one shard), no run directory
    pack_files = [f for f in _files(store.root, "packs") if f.endswith(".pack")]
    assert len(pack_files) == 1 and pack_files[0].startswith(f"packs/{shard}/")
    assert _files(store.root, "runs") == []
    fresh = Store(store.root)
    assert sorted(fresh.run_ids()) == sorted(r for r, _, _ in items)
    for rid, _, patch in items:
        rec = fresh.load(rid)
        assert rec.name == "b" and rec.sweep_index == patch["sweep_index"]
        assert fresh.load(rid[:14]).run_id == rid  # prefixes find runs that only a pack holds
        assert fresh.run_signature(rid) is not None
        # the tests' own reader (zstandard + msgspec, the documented layout) sees the same
        raw = raw_versions(store.root, rid)
        assert [(v["seq"], v["event"], v["patch"]["sweep_index"]) for v in raw] == [
            (1, "launch", patch["sweep_index"])
        ]
    assert raw_run_ids(store.root) == {r for r, _, _ in items}


def test_a_small_batch_stays_loose(tmp_path):
    store = _store(tmp_path)
    items = _launches(BATCH_PACK_RUNS - 1)
    store.write_versions(items, new_runs=True)
    assert not os.path.exists(packs.packs_dir(store.root))
    for rid, _, _ in items:
        assert len(store.version_files(rid)) == 1


def test_a_job_writes_its_versions_loose_beside_the_launch_pack(tmp_path):
    store = _store(tmp_path)
    items = _launches(70)
    store.write_versions(items, new_runs=True)
    rid = items[3][0]
    job = Store(store.root)  # the job: another process, its own Store
    start = job.write_version(rid, "start", {"state": "running"}, role="job")
    end = job.write_version(rid, "end", {"state": "succeeded", "exit_code": 0}, role="job")
    assert (start.seq, end.seq) == (2, 3)
    assert len(store.version_files(rid)) == 2  # the launch stays in the pack
    reader = Store(store.root)
    assert [v.event for v in sorted(reader.versions(rid), key=lambda v: v.seq)] == [
        "launch",
        "start",
        "end",
    ]
    assert reader.load(rid).state.value == "succeeded"
    assert [v["event"] for v in raw_versions(store.root, rid)] == ["launch", "start", "end"]


def test_a_batch_to_runs_that_exist_continues_their_seqs(tmp_path):
    store = _store(tmp_path)
    items = _launches(80)
    store.write_versions(items, new_runs=True)
    ahead = items[5][0]
    store.write_version(ahead, "start", {"state": "running"}, role="job")  # loose v2
    dispatch = [
        (rid, "dispatch", {"execution": {"scheduler": {"job_id": i}}})
        for i, (rid, _, _) in enumerate(items)
    ]
    vs = {v.run_id: v for v in store.write_versions(dispatch)}
    assert vs[ahead].seq == 3  # after the loose start
    assert {v.seq for r, v in vs.items() if r != ahead} == {2}  # after the packed launch
    assert len(packs.list_packs(store.root, items[0][0][: layout.SHARD_LEN])) == 2
    rec = Store(store.root).load(items[7][0])
    assert rec.execution is None or rec.execution.scheduler == {"job_id": 7}


def test_one_version_per_run_in_a_batch(tmp_path):
    store = _store(tmp_path)
    items = _launches(70)
    with pytest.raises(ValueError):
        store.write_versions([*items, items[0]], new_runs=True)
    assert not os.path.exists(packs.packs_dir(store.root))


def test_the_query_index_finds_launch_packed_runs_through_the_journal(tmp_path):
    from runrec_cluster.query.index import Index  # the query layer, above the store

    store = _store(tmp_path)
    idx = Index(store)
    assert idx.update().runs == 0
    items = _launches(90)
    Store(store.root).write_versions(items, new_runs=True)
    st = idx.update()
    assert st.runs == 90 and not st.full_scan  # the journal named them: no directory scan
    job = Store(store.root)
    job.write_version(items[0][0], "end", {"state": "succeeded"}, role="job")
    assert idx.update().runs == 90
    df = idx.select()
    assert sorted(df["run_id"]) == sorted(r for r, _, _ in items)
    assert set(df[df["run_id"] == items[0][0]]["state"]) == {"succeeded"}
    assert set(df[df["run_id"] != items[0][0]]["state"]) == {"submitted"}
    cold = Index(Store(store.root), index_dir=tmp_path / "cold")
    assert cold.update(rebuild=True).runs == 90


def test_packing_finished_launch_packed_runs_leaves_the_unfinished_alone(tmp_path):
    from runrec_cluster import fsck  # above the store

    store = _store(tmp_path)
    items = _launches(70)
    store.write_versions(items, new_runs=True)
    done = [rid for rid, _, _ in items[:40]]
    for rid in done:
        store.write_version(rid, "end", {"state": "succeeded", "exit_code": 0}, role="job")
    before = {rid: store.load(rid) for rid, _, _ in items}
    st = packs.pack_store(store.root)
    assert st.runs == 40 and st.versions == 40 and st.skipped == 0
    fresh = Store(store.root)
    assert {rid: fresh.load(rid) for rid, _, _ in items} == before
    assert _files(store.root, "runs") == []  # the finished runs' end versions went into a pack
    rep = fsck.check(fresh)
    assert not rep.problems, rep.problems
    assert rep.counts.runs == 70 and rep.counts.versions == 110 and rep.counts.packs == 2


def test_launch_packs_get_the_store_permission_modes(tmp_path):
    store = _store(tmp_path, mode="private")
    store.write_versions(_launches(70), new_runs=True)
    (shard,) = os.listdir(packs.packs_dir(store.root))
    (path,) = packs.list_packs(store.root, shard)
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o400
    assert stat.S_IMODE(os.stat(os.path.dirname(path)).st_mode) == 0o700
    assert stat.S_IMODE(os.stat(packs.packs_dir(store.root)).st_mode) == 0o700


# The submitter killed while it writes the launch pack of a map_array: all runs or none.
_SUBMIT = textwrap.dedent(
    """
    import os, sys
    import runrec_cluster as rr

    def work(x, blob):
        return x

    ex = rr.Executor(backend="local", store=sys.argv[1], cwd=sys.argv[2])
    n = int(sys.argv[3])
    # where the kill lands: "race" (the test kills from outside, at a random instant), or the
    # process kills itself half-way through writing the pack / right before linking it
    at = sys.argv[4]
    if at != "race":
        import signal
        real_write, real_link = os.write, os.link

        def die():
            os.kill(os.getpid(), signal.SIGKILL)

        def write(fd, data):
            if at == "mid-write" and len(data) > 2**20:
                real_write(fd, data[: len(data) // 2])
                die()
            return real_write(fd, data)

        def link(src, dst, *a, **k):
            if at == "before-link" and os.sep + "packs" + os.sep in dst:
                die()
            return real_link(src, dst, *a, **k)

        os.write, os.link = write, link
    # a large config of its own per run (incompressible): the pack takes a while to write
    calls = [(work, (), {"x": i, "blob": os.urandom(4000).hex()}) for i in range(n)]
    ex.prepare_calls(calls, sweep=True)
    print("written", flush=True)
    """
)


def _kill_when_pack_is_being_written(root: str, proc: subprocess.Popen, delay: float) -> bool:
    """Kill ``proc`` with SIGKILL ``delay`` s after a temporary file shows up under packs/;
    False when the process finished first."""
    base = packs.packs_dir(root)
    while proc.poll() is None:
        try:
            shards = os.listdir(base)
        except FileNotFoundError:
            shards = []
        if any(
            n.startswith(layout.TMP_PREFIX)
            for s in shards
            for n in (
                os.listdir(os.path.join(base, s)) if os.path.isdir(os.path.join(base, s)) else []
            )
        ):
            if delay:
                time.sleep(delay)
            proc.send_signal(signal.SIGKILL)
            proc.wait()
            return True
    return False


def test_kill_9_while_the_launch_pack_is_written_leaves_all_runs_or_none(tmp_path):
    n = 1000
    work = tmp_path / "work"
    work.mkdir()
    outcomes = []
    rng = random.Random(17)
    for trial, at in enumerate(("mid-write", "before-link", "race", "race", "race", "race")):
        root = str(tmp_path / f"s{trial}")
        Store(root).ensure_writable()
        env = dict(
            os.environ, PYTHONPATH=os.pathsep.join([TESTS, os.environ.get("PYTHONPATH", "")])
        )
        proc = subprocess.Popen(
            [sys.executable, "-c", _SUBMIT, root, str(work), str(n), at],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=env,
        )
        if at == "race":
            killed = _kill_when_pack_is_being_written(
                root, proc, 0.0 if trial % 2 == 0 else rng.uniform(0, 0.01)
            )
        else:
            proc.wait()
            killed = proc.returncode == -signal.SIGKILL
            assert killed, (at, proc.returncode)
        out, err = proc.communicate()
        if not killed:
            assert proc.returncode == 0, err.decode()
        # ground truth from the files themselves (no runrec code), and runrec's own view
        raw = raw_run_ids(root)
        seen = set(Store(root).run_ids())
        assert raw == seen
        assert len(raw) in (0, n), (trial, len(raw))
        left = [
            f
            for s in os.listdir(packs.packs_dir(root))
            for f in os.listdir(os.path.join(packs.packs_dir(root), s))
            if f.startswith(layout.TMP_PREFIX)
        ]
        if raw:
            (shard,) = {r[: layout.SHARD_LEN] for r in raw}
            assert len(raw_packs(root, shard)) == 1
            for rid in sorted(raw)[:: n // 10]:
                assert [v["event"] for v in raw_versions(root, rid)] == ["launch"]
        else:
            assert left, "no runs and no temporary pack: the kill came before the pack write"
        outcomes.append((at, killed, len(raw), bool(left)))
    # the kills inside the write left a temporary pack and no run visible
    assert [o for o in outcomes if o[0] != "race"] == [
        ("mid-write", True, 0, True),
        ("before-link", True, 0, True),
    ], outcomes
