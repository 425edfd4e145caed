"""Many writers at once, and writers killed at random instants, on one real store."""

import os
import random
import signal
import subprocess
import sys
import time

from runrec_cluster.store import Store, layout

WRITER = r"""
import sys, os
from runrec_cluster.store import Store
root, wid, n = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
runs = sys.argv[4:]
s = Store(root)
for j in range(n):
    rid = runs[(wid + j) % len(runs)]
    s.write_version(rid, "metrics", {"metrics": {f"w{wid}_{j}": j}}, role="test")
    if j % 5 == 0:
        s.put_blob(os.urandom(2000))
"""

LOOPER = r"""
import sys, os
from runrec_cluster.store import Store
s = Store(sys.argv[1]); rid = sys.argv[2]
i = 0
while True:
    s.write_version(rid, "metrics", {"metrics": {f"k{i}": "x" * 5000}}, role="test")
    s.put_blob(os.urandom(50000))
    i += 1
"""


def test_many_processes_many_runs_zero_lost_updates(tmp_path):
    store = Store(tmp_path / "s")
    store.ensure_writable()
    runs = [layout.new_id() for _ in range(12)]
    for r in runs:
        store.write_version(r, "launch", {"run_id": r, "name": "c"})
    writers, per = 24, 30
    procs = [
        subprocess.Popen([sys.executable, "-c", WRITER, store.root, str(w), str(per), *runs])
        for w in range(writers)
    ]
    assert all(p.wait(timeout=300) == 0 for p in procs)
    expected = {r: set() for r in runs}
    for w in range(writers):
        for j in range(per):
            expected[runs[(w + j) % len(runs)]].add(f"w{w}_{j}")
    for r in runs:
        rec = store.load(r)
        assert set(rec.metrics) == expected[r], f"lost updates on {r}"
        assert rec.name == "c"
    total = sum(len(store.versions(r)) for r in runs)
    assert total == writers * per + len(runs)


def test_kill_9_during_writes_leaves_a_readable_store(tmp_path):
    store = Store(tmp_path / "s")
    store.ensure_writable()
    rid = layout.new_id()
    store.write_version(rid, "launch", {"run_id": rid})
    rng = random.Random(1)
    trials = 25
    for _ in range(trials):
        p = subprocess.Popen([sys.executable, "-c", LOOPER, store.root, rid])
        time.sleep(0.25 + rng.random() * 0.3)  # past start-up, mid-write
        os.kill(p.pid, signal.SIGKILL)
        p.wait()
        problems = []
        store.versions(rid, problems)
        assert problems == []
    rec = store.load(rid)
    assert rec.metrics  # every written update reads back
    # every complete blob matches its hash (temporary leftovers are ignored by readers)
    for _root, _dirs, files in os.walk(os.path.join(store.root, "blobs")):
        for f in files:
            if not f.startswith(layout.TMP_PREFIX):
                store.get_blob("sha256:" + f.removesuffix(".zst"))  # verifies the hash
