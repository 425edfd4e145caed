"""Packs under fire (store/packs.py): a packer running while writers add versions and readers
read, and a packer SIGKILLed at random instants. Ground truth is each writer's own *ack* file
(one line per version whose write returned, with a marker unique to that version), never
runrec's output; every acked version must be read back exactly once, and no reader may ever
miss a version acked before its read began (a run is loose or packed, never neither).

Writers, packers and readers are real processes (``os.fork``), as on a cluster where they run on
different nodes and share nothing but the filesystem.
"""

from __future__ import annotations

import os
import random
import signal
import time
from collections import Counter

from runrec_cluster import fsck
from runrec_cluster.store import Store, layout, packs

WRITERS = 6
RUNS_PER_WRITER = 25
KILL_TRIALS = int(os.environ.get("RUNREC_PACK_KILL_TRIALS", "50"))


def _child(fn, *args) -> int:
    pid = os.fork()
    if pid == 0:
        code = 0
        try:
            fn(*args)
        except BaseException:  # noqa: BLE001 - the parent sees the exit code
            import traceback

            traceback.print_exc()
            code = 1
        os._exit(code)
    return pid


def _ack(fd: int, rid: str, marker: str) -> None:
    os.write(fd, f"{rid} {marker}\n".encode())


def _writer(root: str, wid: int, ack_path: str) -> None:
    store = Store(root)
    ack = os.open(ack_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    rng = random.Random(wid)
    mine: list[str] = []
    for i in range(RUNS_PER_WRITER):
        rid = layout.new_id()
        for event, patch in (
            ("launch", {"run_id": rid, "name": f"w{wid}"}),
            ("start", {"state": "running"}),
            ("metrics", {"metrics": {"loss": i}}),
            ("end", {"state": "succeeded", "exit_code": 0}),
        ):
            marker = f"{wid}-{i}-{event}"
            store.write_version(rid, event, {**patch, "tags": {"m": marker}})
            _ack(ack, rid, marker)
        mine.append(rid)
        if mine and rng.random() < 0.7:  # a late annotation of a finished (maybe packed) run
            late = rng.choice(mine)
            marker = f"{wid}-{i}-late"
            store.write_version(late, "annotate", {"tags": {"late": marker, "m": marker}})
            _ack(ack, late, marker)
    os.close(ack)


def _packer(root: str, stop: str) -> None:
    while not os.path.exists(stop):
        packs.pack_store(root)
    packs.pack_store(root)


def _acked(ack_dir: str) -> dict[str, set[str]]:
    out: dict[str, set[str]] = {}
    for name in os.listdir(ack_dir):
        with open(os.path.join(ack_dir, name)) as f:
            data = f.read()
        for line in data[: data.rfind("\n") + 1].splitlines():
            rid, marker = line.split(" ")
            out.setdefault(rid, set()).add(marker)
    return out


def _markers(store: Store, rid: str) -> Counter[str]:
    got: Counter[str] = Counter()
    for v in store.versions(rid):
        m = (v.patch.get("tags") or {}).get("m")
        got[m] += 1
    return got


def _reader(root: str, ack_dir: str, stop: str) -> None:
    """Read runs acked so far, over and over: every acked version must be there."""
    checks = 0
    while not os.path.exists(stop) or checks < 20:
        before = _acked(ack_dir)  # acks first, then the read: each of these was written already
        store = Store(root)
        for rid, markers in before.items():
            got = _markers(store, rid)
            missing = markers - set(got)
            assert not missing, f"reader missed {sorted(missing)} of run {rid}"
            checks += 1


def _wait(pid: int) -> int:
    _, status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(status)


def test_packing_while_writers_write_and_readers_read_loses_nothing(tmp_path):
    root = str(tmp_path / "store")
    Store(root).ensure_writable()
    acks = tmp_path / "acks"
    acks.mkdir()
    stop = str(tmp_path / "stop")
    packer = _child(_packer, root, stop)
    readers = [_child(_reader, root, str(acks), stop) for _ in range(2)]
    writers = [_child(_writer, root, w, str(acks / f"w{w}")) for w in range(WRITERS)]
    assert [_wait(p) for p in writers] == [0] * WRITERS
    open(stop, "w").close()
    assert _wait(packer) == 0
    assert [_wait(p) for p in readers] == [0, 0]

    store = Store(root)
    truth = _acked(str(acks))
    assert len(truth) == WRITERS * RUNS_PER_WRITER
    assert sorted(store.run_ids()) == sorted(truth)
    for rid, markers in truth.items():
        got = _markers(store, rid)
        assert set(got) == markers and set(got.values()) == {1}, rid  # each exactly once
        assert store.load(rid).state.value == "succeeded"
    # everything finished is packed now: no run directory is left
    assert packs.pack_store(root).runs == 0
    left = [d for d, _, files in os.walk(layout.runs_dir(root)) if files]
    assert left == []
    assert not fsck.check(store).problems


def _finished_runs(store: Store, n: int, ack: int, tag: str) -> None:
    for i in range(n):
        rid = layout.new_id()
        for event, patch in (
            ("launch", {"run_id": rid, "name": tag}),
            ("end", {"state": "failed", "exit_code": 1}),
        ):
            marker = f"{tag}-{i}-{event}"
            store.write_version(rid, event, {**patch, "tags": {"m": marker}})
            _ack(ack, rid, marker)


def test_packer_killed_at_random_instants_loses_nothing(tmp_path):
    root = str(tmp_path / "store")
    store = Store(root)
    store.ensure_writable()
    acks = tmp_path / "acks"
    acks.mkdir()
    ack = os.open(acks / "all", os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    rng = random.Random(1718)
    # how long one pack of a trial's worth of runs takes here, to aim the kills inside it
    _finished_runs(store, 120, ack, "probe")
    t0 = time.perf_counter()
    packs.pack_store(root)
    span = time.perf_counter() - t0
    killed = 0
    for trial in range(KILL_TRIALS):
        _finished_runs(store, 120, ack, f"t{trial}")
        for rid in rng.sample(sorted(_acked(str(acks))), 3):  # late versions of packed runs
            marker = f"t{trial}-late-{rid}"
            store.write_version(rid, "annotate", {"tags": {"m": marker}})
            _ack(ack, rid, marker)
        pid = _child(packs.pack_store, root)
        time.sleep(rng.uniform(0, span * 1.3))
        os.kill(pid, signal.SIGKILL)
        killed += _wait(pid) == -signal.SIGKILL
        fresh = Store(root)
        for rid, markers in _acked(str(acks)).items():
            got = _markers(fresh, rid)
            assert set(got) == markers, (trial, rid)
            assert set(got.values()) == {1}, (trial, rid)
        rep = fsck.check(fresh)
        assert not rep.problems, (trial, [(f.kind, f.path, f.message) for f in rep.problems])
        temps = {f.path for f in rep.leftovers if f.kind == "temp_file"}
        assert all(os.path.basename(p).startswith(layout.TMP_PREFIX) for p in temps)
    assert killed >= KILL_TRIALS // 4  # most kills landed while it was still packing
    # a last pack finishes what the kills left; everything still there exactly once
    packs.pack_store(root)
    empty = [d for d, ds, fs in os.walk(layout.runs_dir(root)) if not ds and not fs]
    assert [d for d in empty if layout.RUN_ID_RE.match(os.path.basename(d))] == []
    fresh = Store(root)
    for rid, markers in _acked(str(acks)).items():
        got = _markers(fresh, rid)
        assert set(got) == markers and set(got.values()) == {1}
    assert not fsck.check(fresh).problems
