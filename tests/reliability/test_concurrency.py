"""1,000 runs completing at once on one store: zero lost updates, zero torn records.

200 real writer processes (forked by a fresh interpreter) line up at a gate (a barrier), like
array tasks finishing in the same second, and each completes 5 runs exactly as a job does
(``job.execute``: node capture, the start version, the function's ``log_config`` and
``log_metrics``, the end version with its result blob), while another process annotates the
same runs (``annotate.annotate``) and a packer (``runrec pack``'s ``packs.pack_store``, in a
loop) moves the finished runs into packs. Then every run is checked: every version there, every file
decodes, the fold gives the final state, config, metrics, result and every annotation.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections import Counter

import cloudpickle
import jobfns
import msgspec
from helpers import run_cli
from helpers import write_figures as _results

import runrec_cluster as rr
from runrec_cluster import fsck
from runrec_cluster.record import ConfigEntry, Entrypoint, Execution, RunState, to_patch
from runrec_cluster.store import layout

WRITERS = int(os.environ.get("RUNREC_CONCURRENCY_WRITERS", "200"))
RUNS_PER_WRITER = 5
RUNS = WRITERS * RUNS_PER_WRITER
ANNOTATION_PASSES = 2
BARRIER_TIMEOUT_S = 300


# packs finished runs over and over while the burst runs, until the stop file appears
PACKER = r"""
import json, os, sys
from runrec_cluster.store import packs
root, stop, out = sys.argv[1:4]
rounds = runs = 0
while True:
    last = os.path.exists(stop)
    runs += packs.pack_store(root).runs
    rounds += 1
    if last:
        break
json.dump({"rounds": rounds, "runs": runs}, open(out, "w"))
"""


def _lr(i: int) -> float:
    return round(0.0001 * (i + 1), 6)


# -- the processes ----------------------------------------------------------------------------

# A fresh interpreter (single-threaded, whatever this test process runs) forks the writers and
# the annotator: cheap (they share its imports), and safe from fork-with-threads deadlocks.
# The barrier is a gate: it holds an exclusive flock on a file; every child counts itself in,
# then blocks on a shared flock of the same file. Once all are in, one unlock wakes them all.
BURST = r"""
import fcntl, json, os, random, sys, time, traceback
import multiprocessing as mp
from runrec_cluster.job import execute as job
from runrec_cluster.lineage.annotate import annotate
from runrec_cluster.store import Store

root, out_dir, ids_file = sys.argv[1:4]
per, passes, timeout = int(sys.argv[4]), int(sys.argv[5]), float(sys.argv[6])
run_ids = json.load(open(ids_file))
writers = len(run_ids) // per
gate = os.path.join(out_dir, "gate")
VERDICTS = ("negative", "positive", "inconclusive")


def finish(name, info):
    with open(os.path.join(out_dir, name + ".json"), "w") as f:
        json.dump(info, f)
    os._exit(1 if "error" in info else 0)


def line_up(alive, info):
    fd = os.open(gate, os.O_RDONLY)  # its own open file: the lock the parent holds is not ours
    with alive.get_lock():
        alive.value += 1
    fcntl.flock(fd, fcntl.LOCK_SH)  # blocks until the gate opens
    info["alive_at_go"] = alive.value  # arrived, and none has left, when the gate opened
    info["t_go"] = time.time()


def writer(wid, mine, alive):
    # one array task's node: wait for the others, then complete its runs as the job does
    info = {"wid": wid, "pid": os.getpid()}
    try:
        line_up(alive, info)
        for rid in mine:
            job.execute(root, rid)
        info["t_done"] = time.time()
    except BaseException:
        info["error"] = traceback.format_exc()
    finish(f"w{wid}", info)


def annotator(alive):
    # a person (or a script) annotating the same runs while they complete
    info = {"pid": os.getpid(), "written": {}}
    try:
        store = Store(root)
        line_up(alive, info)
        rng = random.Random(4)
        for p in range(passes):
            order = list(run_ids)
            rng.shuffle(order)
            for i, rid in enumerate(order):
                _, a = annotate(store, rid, verdict=VERDICTS[i % 3], note=f"pass {p}: {rid[-6:]}")
                info["written"].setdefault(rid, []).append(a.id)
        info["t_done"] = time.time()
    except BaseException:
        info["error"] = traceback.format_exc()
    finish("annotator", info)


ctx = mp.get_context("fork")
alive = ctx.Value("i", 0)
lock = os.open(gate, os.O_RDWR | os.O_CREAT, 0o644)
fcntl.flock(lock, fcntl.LOCK_EX)
t0 = time.monotonic()
procs = [
    ctx.Process(target=writer, args=(w, run_ids[w * per : (w + 1) * per], alive))
    for w in range(writers)
]
procs.append(ctx.Process(target=annotator, args=(alive,)))
for p in procs:
    p.start()
fork_s = time.monotonic() - t0
while alive.value < len(procs):  # all counted in: alive, and about to block on the gate
    if time.monotonic() - t0 > timeout or any(p.exitcode is not None for p in procs):
        break
    time.sleep(0.05)
fcntl.flock(lock, fcntl.LOCK_UN)  # open the gate
for p in procs:
    p.join()
json.dump(
    {"fork_s": fork_s, "exit_codes": [p.exitcode for p in procs]},
    open(os.path.join(out_dir, "burst.json"), "w"),
)
"""


# -- the test ---------------------------------------------------------------------------------


def _launch_records(store: rr.Store) -> list[str]:
    """What the submitter writes for an array of RUNS tasks (launch record, pickled call)."""
    sweep = layout.new_id()
    ids = []
    for i in range(RUNS):
        rid = layout.new_id()
        blob = store.put_blob(cloudpickle.dumps((jobfns.train, (_lr(i),), {})))
        store.write_version(
            rid,
            "launch",
            {
                **to_patch(
                    run_id=rid,
                    name="burst",
                    sweep_id=sweep,
                    sweep_index=i,
                    config={"lr": ConfigEntry(value=_lr(i), source="given")},
                    entrypoint=Entrypoint(kind="function", function="jobfns:train", call_blob=blob),
                    execution=Execution(backend="local", log_dir=store.log_dir(rid)),
                ),
                "state": RunState.SUBMITTED.value,
                "state_source": "submitter",
                "attempt": 1,
            },
        )
        ids.append(rid)
    return ids


def _peak_overlap(intervals: list[tuple[float, float]]) -> int:
    events = sorted([(a, 1) for a, _ in intervals] + [(b, -1) for _, b in intervals])
    cur = peak = 0
    for _, d in events:
        cur += d
        peak = max(peak, cur)
    return peak


def test_1000_runs_completing_at_once_lose_nothing(tmp_path):
    t_start = time.monotonic()
    store = rr.Store(tmp_path / "store")
    store.ensure_writable()
    run_ids = _launch_records(store)
    out_dir = tmp_path / "procs"
    out_dir.mkdir()

    ids_file = tmp_path / "run-ids.json"
    ids_file.write_text(json.dumps(run_ids))
    stop, packed = tmp_path / "stop-packer", tmp_path / "packer.json"
    packer = subprocess.Popen([sys.executable, "-c", PACKER, store.root, str(stop), str(packed)])
    r = subprocess.run(
        [
            sys.executable,
            "-c",
            BURST,
            store.root,
            str(out_dir),
            str(ids_file),
            str(RUNS_PER_WRITER),
            str(ANNOTATION_PASSES),
            str(BARRIER_TIMEOUT_S),
        ],
        capture_output=True,
        text=True,
        timeout=900,
    )
    stop.write_text("")
    assert packer.wait(timeout=600) == 0
    assert r.returncode == 0, r.stderr
    packer_info = json.loads(packed.read_text())
    assert packer_info["runs"] > 0  # it packed while the writers and the annotator wrote
    burst = json.loads((out_dir / "burst.json").read_text())
    infos = [json.loads((out_dir / f"w{w}.json").read_text()) for w in range(WRITERS)]
    ann = json.loads((out_dir / "annotator.json").read_text())
    errors = [i["error"] for i in [*infos, ann] if "error" in i]
    assert errors == [], errors[0]
    assert burst["exit_codes"] == [0] * (WRITERS + 1)

    # alive together: the gate opened only when all had arrived, and none had ended yet
    alive_at_go = max(i["alive_at_go"] for i in infos)
    assert alive_at_go == WRITERS + 1
    assert len({i["pid"] for i in infos}) == WRITERS
    peak_writing = _peak_overlap([(i["t_go"], i["t_done"]) for i in infos])
    burst_s = max(i["t_done"] for i in infos) - min(i["t_go"] for i in infos)
    release_spread_s = max(i["t_go"] for i in infos) - min(i["t_go"] for i in infos)
    # the annotator's work overlapped the writers' (it is not done before they start)
    assert ann["t_go"] < max(i["t_done"] for i in infos)

    # every run, every version, every file
    expected_ann = ann["written"]
    lost, torn, versions_total, seq_ties = [], [], 0, 0
    for i, rid in enumerate(run_ids):
        problems: list = []
        vs = store.versions(rid, problems)
        torn += [f"{p.path}: {p.message}" for p in problems]
        versions_total += len(vs)
        events = Counter(v.event for v in vs)
        want = {"launch": 1, "start": 1, "config": 1, "metrics": 1, "end": 1}
        want["annotate"] = len(expected_ann.get(rid, []))
        for ev, n in want.items():
            if events.get(ev, 0) != n:
                lost.append(f"{rid}: {events.get(ev, 0)} {ev} version(s), expected {n}")
        seqs = Counter(v.seq for v in vs)
        seq_ties += sum(1 for n in seqs.values() if n > 1)
        rec = store.load(rid)
        lr = _lr(i)
        checks = {
            "state": rec.state == RunState.SUCCEEDED and rec.state_source == "job",
            "config": {k: (e.value, e.source) for k, e in rec.config.items()}
            == {"lr": (lr, "given"), "seed": (1234, "generated")},
            "metrics": rec.metrics == {"acc": round(1 - lr, 6), "epochs_done": 3},
            "result": rec.result is not None
            and msgspec.msgpack.decode(store.get_blob(rec.result.blob))
            == {"lr": lr, "acc": round(1 - lr, 6)},
            "annotations": [a.id for a in rec.annotations] == expected_ann.get(rid, []),
            "node": len(rec.nodes) == 1 and rec.process is not None,
            "times": rec.started_at is not None
            and rec.ended_at is not None
            and rec.started_at <= rec.ended_at,
            "sweep": rec.sweep_index == i and rec.name == "burst",
        }
        lost += [f"{rid}: {what} wrong after the fold" for what, ok in checks.items() if not ok]
    n_ann = sum(len(v) for v in expected_ann.values())
    assert n_ann == RUNS * ANNOTATION_PASSES

    # no torn file anywhere: no temporary leftovers, every blob matches its hash
    blobs = 0
    for sub in ("runs", "blobs"):
        for dirpath, _dirs, files in os.walk(os.path.join(store.root, sub)):
            for f in files:
                if f.startswith(layout.TMP_PREFIX):
                    torn.append(f"temporary file left behind: {os.path.join(dirpath, f)}")
                elif sub == "blobs":
                    store.get_blob("sha256:" + f.removesuffix(".zst"))  # checks the hash
                    blobs += 1

    # the real CLI lists all of them as succeeded
    out = run_cli("ls", "--json", "--store", store.root)
    assert out.returncode == 0, out.stderr
    states = Counter(r["state"] for r in json.loads(out.stdout))

    # fsck after the burst and the packing: no problem (versions read from packs and loose)
    check = fsck.check(store)
    fsck_problems = [(f.kind, f.path, f.message) for f in check.problems]

    figures = dict(
        writers=WRITERS,
        alive_together_at_barrier=alive_at_go,
        peak_writers_writing_together=peak_writing,
        runs=RUNS,
        versions_written=versions_total,
        annotations=n_ann,
        blobs_checked=blobs,
        runs_with_seq_ties=seq_ties,
        lost=len(lost),
        torn=len(torn),
        fork_seconds=round(burst["fork_s"], 2),
        barrier_release_spread_seconds=round(release_spread_s, 1),
        burst_seconds=round(burst_s, 1),
        total_seconds=round(time.monotonic() - t_start, 1),
        packer_rounds=packer_info["rounds"],
        runs_packed=packer_info["runs"],
        fsck_problems=len(fsck_problems),
        fsck_versions=check.counts.versions,
        fsck_packs=check.counts.packs,
    )
    _results(
        "test_1000_runs_completing_at_once_lose_nothing",
        f"{WRITERS} forked writer processes and 1 annotator, released together by one gate, "
        f"complete {RUNS} runs with job.execute (start, config, metrics, end + result blob) "
        f"while {n_ann} annotations are added to the same runs; every run is then checked.",
        **figures,
    )
    assert lost == [], f"{len(lost)} lost updates, e.g. {lost[:5]}"
    assert torn == [], f"{len(torn)} torn files, e.g. {torn[:5]}"
    assert fsck_problems == [], fsck_problems[:5]
    assert versions_total == RUNS * 5 + n_ann
    assert states == {"succeeded": RUNS}
    assert peak_writing >= WRITERS // 2  # most of them were mid-write at one instant
