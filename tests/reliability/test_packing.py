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

from helpers import write_figures

from runrec_cluster import fsck
from runrec_cluster.store import Store, layout, packs

WRITERS = 6
RUNS_PER_WRITER = 25
KILL_TRIALS = int(os.environ.get("RUNREC_PACK_KILL_TRIALS", "200"))
TRIALS_PER_STORE = 25  # a fresh store every 25 kills: each check reads a small store whole
RUNS_PER_TRIAL = 20


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
    """Read runs acked so far, over and over: every acked version must be there, every run
    must load and be listed (a run is loose or packed, never neither)."""
    checks = 0
    while not os.path.exists(stop) or checks < 20:
        before = _acked(ack_dir)  # acks first, then the read: each of these was written already
        store = Store(root)
        listed = set(store.run_ids())
        assert set(before) <= listed, f"run_ids() missed {sorted(set(before) - listed)[:3]}"
        for rid, markers in before.items():
            got = _markers(store, rid)
            missing = markers - set(got)
            assert not missing, f"reader missed {sorted(missing)} of run {rid}"
            assert store.load(rid).run_id == rid
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
    """Finished runs with a small result blob and a log, as the local backend leaves them."""
    for i in range(n):
        rid = layout.new_id()
        marker = f"{tag}-{i}"
        blob = store.put_blob(f"result {marker}".encode())
        for event, patch in (
            ("launch", {"run_id": rid, "name": tag}),
            (
                "end",
                {"state": "failed", "exit_code": 1, "result": {"blob": blob, "format": "msgpack"}},
            ),
        ):
            store.write_version(rid, event, {**patch, "tags": {"m": f"{marker}-{event}"}})
            _ack(ack, rid, f"{marker}-{event}")
        d = layout.log_dir(store.root, rid)
        os.makedirs(d)
        with open(os.path.join(d, "stdout.txt"), "w") as f:
            f.write(f"log {marker}\n")


def _check_store(root: str, acked: dict[str, set[str]], trial: int) -> int:
    """Every acked version exactly once, every result blob and log readable; fsck clean."""
    fresh = Store(root)
    for rid, markers in acked.items():
        got = _markers(fresh, rid)
        assert set(got) == markers and set(got.values()) == {1}, (trial, rid)
        rec = fresh.load(rid)
        launch = next(v for v in fresh.versions(rid) if v.event == "launch")
        marker = launch.patch["tags"]["m"].rsplit("-", 1)[0]
        if rec.result is not None:
            assert fresh.get_blob(rec.result.blob) == f"result {marker}".encode(), (trial, rid)
            assert fresh.read_log(rid, "stdout.txt") == f"log {marker}\n".encode(), (trial, rid)
    rep = fsck.check(fresh)
    assert not rep.problems, (trial, [(f.kind, f.path, f.message) for f in rep.problems])
    temps = {f.path for f in rep.leftovers if f.kind == "temp_file"}
    assert all(os.path.basename(p).startswith(layout.TMP_PREFIX) for p in temps)
    return rep.counts.versions


def test_packer_killed_at_random_instants_loses_nothing(tmp_path):
    """KILL_TRIALS SIGKILLs of a packer (versions, small blobs, logs) at random instants of its
    pack, in stores of TRIALS_PER_STORE kills each; after every kill every acked version is read
    exactly once, every blob and log reads, fsck has no problem."""
    rng = random.Random(1718)
    killed = versions_checked = runs = 0
    t_start = time.perf_counter()
    for first in range(0, KILL_TRIALS, TRIALS_PER_STORE):
        root = str(tmp_path / f"store{first}")
        store = Store(root)
        store.ensure_writable()
        acks = tmp_path / f"acks{first}"
        acks.mkdir()
        ack = os.open(acks / "all", os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        # how long one pack of a trial's worth of runs takes here, to aim the kills inside it
        _finished_runs(store, RUNS_PER_TRIAL, ack, f"probe{first}")
        t0 = time.perf_counter()
        packs.pack_store(root, log_quiet_s=0)
        span = time.perf_counter() - t0
        for trial in range(first, min(first + TRIALS_PER_STORE, KILL_TRIALS)):
            _finished_runs(store, RUNS_PER_TRIAL, ack, f"t{trial}")
            for rid in rng.sample(sorted(_acked(str(acks))), 3):  # late versions of packed runs
                marker = f"t{trial}-late-{rid}"
                store.write_version(rid, "annotate", {"tags": {"m": marker}})
                _ack(ack, rid, marker)
            pid = _child(packs.pack_store, root, 0.0, 0.0)
            time.sleep(rng.uniform(0, span * 1.3))
            os.kill(pid, signal.SIGKILL)
            killed += _wait(pid) == -signal.SIGKILL
            versions_checked += _check_store(root, _acked(str(acks)), trial)
        # a last pack finishes what the kills left; everything still there exactly once
        packs.pack_store(root, log_quiet_s=0)
        empty = [d for d, ds, fs in os.walk(layout.runs_dir(root)) if not ds and not fs]
        assert [d for d in empty if layout.RUN_ID_RE.match(os.path.basename(d))] == []
        acked = _acked(str(acks))
        versions_checked += _check_store(root, acked, -1)
        runs += len(acked)
        os.close(ack)
    assert killed >= KILL_TRIALS // 4  # most kills landed while it was still packing
    write_figures(
        "test_packer_killed_at_random_instants_loses_nothing",
        f"{KILL_TRIALS} packers (versions, small blobs, logs) SIGKILLed at a random instant of "
        f"their pack, {TRIALS_PER_STORE} per store, {RUNS_PER_TRIAL} new finished runs and 3 late "
        "versions of packed runs before each; after every kill every acked version read once, "
        "every blob and log read back, fsck without problems",
        trials=KILL_TRIALS,
        killed_while_packing=killed,
        runs=runs,
        versions_checked=versions_checked,
        seconds=round(time.perf_counter() - t_start, 1),
    )
