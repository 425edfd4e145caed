"""kill -9 at random moments of a real writer process; after every kill the store reads and
fsck is clean, or names exactly the leftover temporary files on disk.

Writer processes are forked by a small *zygote* (a separate Python process that imported
runrec once and forks a writer per trial), so 200+ trials cost milliseconds each instead of an
interpreter start-up each. A writer records the new run's launch, then writes blobs (small, and
large enough that a kill lands inside the write) and record versions (small, and large) that
reference them, into one store shared by every trial; after each completed write it appends an
*ack* line to a file. The test SIGKILLs it either at a random instant or the moment a temporary
file shows up in the run's directory (a kill inside a write), then checks:

- fsck reports no problem; its leftovers are exactly the ``.tmp-*`` files on disk and the run
  directories that have no version yet; the real ``runrec fsck --json`` agrees (every 8th trial);
- every run loads (``Store.versions`` reports no unreadable file) or is an empty leftover; the
  real ``runrec ls --json`` lists exactly the runs with versions (every 8th trial);
- every acked version and blob is on disk and intact: a write that returned survives the kill.

At the end ``--repair`` with the default age keeps every (young) leftover, ``--min-age 0``
moves them all to quarantine, and the store is clean with nothing acked missing.

A packer (``packs.pack_store`` in a loop, its own process) runs during every writer's life: the
writers end some runs and add later versions to ended (packed) runs, so versions, small blobs
and logs move into packs while the writer is killed. The packer is frozen (SIGSTOP, at whatever
instant it is) while a trial's checks run and thawed for the next trial; every 10th trial it is
SIGKILLed instead and a new one started. "On disk" then means loose or packed: an acked version
must be readable through ``Store.versions``, an acked blob through ``Store.get_blob``.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time

from helpers import write_figures as _results

from runrec_cluster import fsck
from runrec_cluster.store import Store, layout

TRIALS = int(os.environ.get("RUNREC_KILL9_TRIALS", "200"))
CLI_EVERY = 20  # the real `runrec fsck --json` (and every other time `runrec ls --json`)

ZYGOTE = r"""
import json, os, random, signal, sys, traceback
from runrec_cluster.store import Store

BIG = os.urandom(1 << 20)


def writer(p):
    rng = random.Random(p["seed"])
    store = Store(p["root"], fsync=p["fsync"])
    ack = os.open(p["ack"], os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    new = p["new_run"]
    runs = [new] + p["runs"]
    store.write_version(new, "launch", {"run_id": new, "name": "kill9", "tags": {"t": str(p["seed"])}})
    os.write(ack, f"v {new} 1\n".encode())
    for i in range(p["iterations"]):
        large = rng.random() < 0.3
        n = rng.randint(128 << 10, 768 << 10) if large else rng.randint(10, 4000)
        off = rng.randint(0, len(BIG) - n)
        data = f"{p['seed']}:{i}:".encode() + BIG[off : off + n]
        digest = store.put_blob(data)
        os.write(ack, f"b {digest}\n".encode())
        rid = new if rng.random() < 0.6 else rng.choice(runs)
        patch = {
            "metrics": {f"m{p['seed']}_{i}": i},
            "result": {"blob": digest, "format": "msgpack", "summary": str(n)},
        }
        if rng.random() < 0.25:  # a large version (about 100-300 KB on disk)
            k = rng.randint(50 << 10, 150 << 10)
            patch["tags"] = {"pad": BIG[off : off + k].hex()}
        v = store.write_version(rid, "metrics", patch, role="job")
        os.write(ack, f"v {rid} {v.seq}\n".encode())
        if rng.random() < 0.3:  # the run ends: the packer may pack it (and its small blobs)
            v = store.write_version(rid, "end", {"state": "succeeded"}, role="job")
            os.write(ack, f"v {rid} {v.seq}\n".encode())
    os.write(ack, b"done\n")
    signal.pause()  # done: wait for the kill


for line in sys.stdin:
    cmd = json.loads(line)
    if cmd["op"] == "fork":
        pid = os.fork()
        if pid == 0:
            try:
                sys.stdin.close()
                writer(cmd)
            except BaseException:
                traceback.print_exc()
                os._exit(3)
            os._exit(0)
        print(pid, flush=True)
    elif cmd["op"] == "reap":
        _, status = os.waitpid(cmd["pid"], 0)
        print(status, flush=True)
"""


class Zygote:
    def __init__(self) -> None:
        self.p = subprocess.Popen(
            [sys.executable, "-c", ZYGOTE],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            bufsize=1,
        )

    def ask(self, **cmd) -> int:
        assert self.p.stdin is not None and self.p.stdout is not None
        self.p.stdin.write(json.dumps(cmd) + "\n")
        self.p.stdin.flush()
        line = self.p.stdout.readline()
        assert line, f"the zygote died (exit {self.p.poll()})"
        return int(line)

    def close(self) -> None:
        if self.p.stdin:
            self.p.stdin.close()
        try:
            self.p.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.p.kill()
            self.p.wait()


def temps_on_disk(root: str) -> set[str]:
    out = set()
    for dp, dn, fn in os.walk(root):
        if dp == root:
            dn[:] = [d for d in dn if d != fsck.QUARANTINE_DIR]
        out.update(os.path.join(dp, n) for n in fn + dn if n.startswith(layout.TMP_PREFIX))
    return out


PACKER = r"""
import sys
from runrec_cluster.store import packs
open(sys.argv[2], "w").close()  # imported: ready
while True:
    packs.pack_store(sys.argv[1], log_quiet_s=0)
"""
PACKER_KILL_EVERY = 25  # trials


def start_packer(root: str, ready: str) -> subprocess.Popen:
    if os.path.exists(ready):
        os.unlink(ready)
    p = subprocess.Popen([sys.executable, "-c", PACKER, root, ready])
    deadline = time.monotonic() + 60
    while not os.path.exists(ready) and time.monotonic() < deadline:
        time.sleep(0.01)
    return p


def runs_on_disk(store: Store) -> tuple[set[str], set[str]]:
    """(runs with at least one version, loose or packed; run directories without any)."""
    full, empty = set(), set()
    fresh = Store(store.root)
    for rid in fresh.run_ids():
        (full if fresh.versions(rid, []) else empty).add(rid)
    return full, empty


def acked_present(store: Store, rid: str, seq: int) -> bool:
    return any(v.seq == seq for v in Store(store.root).versions(rid, []))


def read_acks(path: str) -> tuple[set[tuple[str, int]], set[str]]:
    versions, blobs = set(), set()
    try:
        data = open(path).read()
    except FileNotFoundError:
        return versions, blobs
    for line in data.splitlines(keepends=True):
        if not line.endswith("\n"):
            continue  # killed while writing the ack: the write before it may or may not count
        parts = line.split()
        if parts[0] == "done":
            continue
        if parts[0] == "v":
            versions.add((parts[1], int(parts[2])))
        else:
            blobs.add(parts[1])
    return versions, blobs


def _done(ack: str) -> bool:
    try:
        with open(ack, "rb") as f:
            f.seek(-5, os.SEEK_END)
            return f.read() == b"done\n"
    except OSError:
        return False


def fsck_cli(root: str) -> dict:
    out = subprocess.run(
        [sys.executable, "-m", "runrec_cluster", "fsck", "--store", root, "--json"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    doc = json.loads(out.stdout)
    assert out.returncode == doc["exit_code"], out.stderr
    return doc


def test_kill_9_at_random_moments_leaves_a_store_fsck_accepts(tmp_path):
    store = Store(tmp_path / "store")
    store.ensure_writable()
    rng = random.Random(9)
    z = Zygote()
    ready = str(tmp_path / "packer-ready")
    packer = start_packer(store.root, ready)
    acked_v: set[tuple[str, int]] = set()
    acked_b: set[str] = set()
    runs: list[str] = []
    prev_temps: set[str] = set()
    fig = {
        "trials": 0,
        "targeted_kills": 0,
        "random_kills": 0,
        "kills_mid_file": 0,
        "mid_file_in_versions": 0,
        "mid_file_in_blobs": 0,
        "empty_run_dirs": 0,
        "fsck_api_runs": 0,
        "fsck_cli_runs": 0,
        "ls_cli_runs": 0,
        "fsck_problems": 0,
        "fsck_max_seconds": 0.0,
        "packers_killed": 0,
        "packs_seen": 0,
    }
    try:
        for trial in range(TRIALS):
            if trial and trial % PACKER_KILL_EVERY == 0:  # killed at whatever instant it was
                packer.kill()
                packer.wait()
                fig["packers_killed"] += 1
                packer = start_packer(store.root, ready)
            else:
                packer.send_signal(signal.SIGCONT)
            new = layout.new_id()
            ack = str(tmp_path / f"ack-{trial}")
            targeted = trial % 2 == 1
            if os.path.exists(ack):
                os.unlink(ack)
            pid = z.ask(
                op="fork",
                root=store.root,
                new_run=new,
                runs=rng.sample(runs, min(len(runs), 5)),
                seed=trial,
                ack=ack,
                iterations=rng.randint(1, 5),
                # fsync before the rename (RUNREC_FSYNC=1): a wider window inside each write
                fsync=targeted or trial % 4 == 0,
            )
            if targeted:
                # the moment a temporary file shows in the run's directory: inside a write
                d = layout.run_dir(store.root, new)
                want = rng.randint(0, 2)  # versions to let land first
                deadline = time.monotonic() + 1.0
                polls = 0
                while time.monotonic() < deadline:
                    polls += 1
                    if polls % 64 == 0 and _done(ack):
                        break  # the writer finished without being caught mid-write
                    try:
                        names = os.listdir(d)
                    except FileNotFoundError:
                        continue
                    if any(n.startswith(layout.TMP_PREFIX) for n in names) and (
                        sum(1 for n in names if n[0] == "v") >= want
                    ):
                        break
                fig["targeted_kills"] += 1
            else:
                time.sleep(rng.random() * 0.04)
                fig["random_kills"] += 1
            os.kill(pid, signal.SIGKILL)
            time.sleep(rng.random() * 0.03)  # the packer goes on a moment, then is frozen
            packer.send_signal(signal.SIGSTOP)  # at whatever instant, while the checks run
            status = z.ask(op="reap", pid=pid)
            assert os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL, (
                f"trial {trial}: the writer was not killed by SIGKILL (status {status}); "
                "it failed on its own"
            )
            fig["trials"] += 1
            v, b = read_acks(ack)
            acked_v |= v
            acked_b |= b
            if (new, 1) in v:  # its launch landed: later writers may add to it (as a job would)
                runs.append(new)

            # what is on disk
            temps = temps_on_disk(store.root)
            new_temps = temps - prev_temps
            if new_temps:
                fig["kills_mid_file"] += 1
                if any(os.sep + "runs" + os.sep in t for t in new_temps):
                    fig["mid_file_in_versions"] += 1
                if any(os.sep + "blobs" + os.sep in t for t in new_temps):
                    fig["mid_file_in_blobs"] += 1
            prev_temps = temps
            full, empty = runs_on_disk(store)

            # fsck: the API every trial, the real command every CLI_EVERY-th
            if trial % CLI_EVERY == 0:
                doc = fsck_cli(store.root)
                fig["fsck_cli_runs"] += 1
                problems = doc["problems"]
                leftovers = {(x["kind"], x["path"]) for x in doc["leftovers"]}
                notes = doc["notes"]
                secs = doc["seconds"]
                assert doc["exit_code"] == 0
            else:
                rep = fsck.check(store)
                fig["fsck_api_runs"] += 1
                problems = [f.to_dict() for f in rep.problems]
                leftovers = {(f.kind, f.path) for f in rep.leftovers}
                notes = [f.to_dict() for f in rep.notes]
                secs = rep.seconds
            fig["fsck_max_seconds"] = max(fig["fsck_max_seconds"], round(secs, 3))
            fig["fsck_problems"] += len(problems)
            assert problems == [], f"trial {trial}: {problems}"
            # a packer frozen between its pack and its deletes: versions in both places
            assert [n for n in notes if n["kind"] != "loose_and_packed"] == [], f"trial {trial}"
            expect = {("temp_file", t) for t in temps} | {
                ("empty_run_dir", layout.run_dir(store.root, r)) for r in empty
            }
            assert leftovers == expect, f"trial {trial}"

            # the store reads: every run loads, or is a run directory without any version yet
            for rid in full:
                problems_read: list = []
                assert store.versions(rid, problems_read) and problems_read == []
                assert store.load(rid).run_id == rid
            if trial % (2 * CLI_EVERY) == 0:
                ls = subprocess.run(
                    [sys.executable, "-m", "runrec_cluster", "ls", "--store", store.root, "--json"],
                    capture_output=True,
                    text=True,
                    timeout=300,
                )
                fig["ls_cli_runs"] += 1
                assert ls.returncode == 0, ls.stderr
                assert {r["run_id"] for r in json.loads(ls.stdout)} == full

            # a write that returned survives the kill
            for rid, seq in v:
                assert acked_present(store, rid, seq), (
                    f"trial {trial}: acked version {seq} of {rid} is missing"
                )
            for digest in b:
                assert Store(store.root).get_blob(digest), digest  # loose or packed, hashed
            fig["packs_seen"] = max(fig["packs_seen"], sum(1 for _ in _pack_files(store.root)))
    finally:
        z.close()
        packer.kill()
        packer.wait()

    full, empty = runs_on_disk(store)
    fig["empty_run_dirs"] = len(empty)
    temps = temps_on_disk(store.root)
    # --repair with the default age: everything is young, a live writer may own it: kept
    kept = fsck.repair(store)
    assert kept.ok and kept.repair is not None and kept.repair.quarantine is None
    assert set(kept.temp_files) == temps
    # --min-age 0 (nothing writes now): every leftover moves to quarantine
    done = fsck.repair(store, min_age_s=0)
    assert done.ok and done.findings == [], [f.to_dict() for f in done.findings]
    assert temps_on_disk(store.root) == set()
    moved = [a for a in done.repair.actions if a.action == "quarantine"]
    in_empty = {t for t in temps if os.path.basename(os.path.dirname(t)) in empty}
    assert len(moved) == len(temps - in_empty) + len(empty)  # an empty run moves with its temps
    after, empty_after = runs_on_disk(store)
    assert after == full and empty_after == set()
    for rid, seq in acked_v:
        assert acked_present(store, rid, seq), (rid, seq)
    for digest in acked_b:
        assert Store(store.root).get_blob(digest)  # checked against its hash
    assert fig["packs_seen"] > 0, "the packer packed nothing: the trials test no packing"
    c = done.counts
    assert fig["kills_mid_file"] > 0, "no kill landed inside a write: the trials test nothing"
    fig.update(
        temp_files_left=len(temps),
        versions_acked=len(acked_v),
        blobs_acked=len(acked_b),
        versions_on_disk=c.versions,
        blobs_on_disk=c.blobs,
        blobs_in_packs=c.packed_blobs,
        packs_at_end=c.packs,
        blob_bytes=c.blob_bytes,
        runs=c.runs,
        unreferenced_blobs=c.unreferenced_blobs,
        quarantined_after=len(moved),
        final_fsck_seconds=round(fsck.check(store).seconds, 3),
    )
    _results(
        "test_kill_9_at_random_moments_leaves_a_store_fsck_accepts",
        f"{fig['trials']} writer processes killed with SIGKILL at random moments (half the "
        "moment a temporary file appeared) while writing record versions and blobs (10 B to "
        "768 KB; a quarter of the versions 100-300 KB; fsync on in 5 of 8 trials) to one store, "
        "with a packer packing the ended runs at the same time (frozen at a random instant for "
        "the checks, SIGKILLed every 25 trials); after every kill fsck found no problem and named exactly the "
        "temporary files and empty run directories on disk, every run loaded, and every "
        "acknowledged write was intact",
        **fig,
    )


def _pack_files(root: str):
    for d, _, names in os.walk(os.path.join(root, "packs")):
        yield from (os.path.join(d, n) for n in names if n.endswith(".pack"))
