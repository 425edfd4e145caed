"""`runrec pack` through the real entry point: packed runs read the same in every command."""

from __future__ import annotations

import json
import os

from helpers import run_cli

from runrec_cluster.store import Store, layout


def _store(tmp_path) -> tuple[str, list[str]]:
    root = str(tmp_path / "s")
    store = Store(root)
    store.ensure_writable()
    ids = []
    for i in range(4):
        rid = layout.new_id()
        store.write_version(rid, "launch", {"run_id": rid, "name": f"r{i}", "tags": {"i": str(i)}})
        store.write_version(rid, "end", {"state": "failed" if i else "succeeded", "exit_code": i})
        ids.append(rid)
    running = layout.new_id()
    store.write_version(running, "launch", {"run_id": running, "name": "still"})
    return root, [*ids, running]


def test_pack_then_every_reader_sees_the_same(tmp_path):
    root, ids = _store(tmp_path)
    cmds = [["ls", "--json"], *(["show", r] for r in ids), *(["history", r] for r in ids)]
    cmds += [["export", ids[0]]]
    before = [run_cli(*c, "--store", root) for c in cmds]
    assert all(o.returncode == 0 for o in before), [o.stderr for o in before]
    out = run_cli("pack", "--store", root, "--json")
    assert out.returncode == 0, out.stderr
    doc = json.loads(out.stdout)
    assert doc["runs"] == 4 and doc["versions"] == 8 and len(doc["packs"]) == 1
    # ground truth on disk: the finished runs' directories are gone, the running one is there
    left = sorted(os.listdir(os.path.join(root, "runs", ids[0][:5])))
    assert left == [ids[-1]]
    after = [run_cli(*c, "--store", root) for c in cmds]
    for c, b, a in zip(cmds, before, after, strict=True):
        assert a.returncode == 0, (c, a.stderr)
        assert a.stdout == b.stdout, c
    fsck = run_cli("fsck", "--store", root)
    assert fsck.returncode == 0 and "clean" in fsck.stdout
    again = run_cli("pack", "--store", root)
    assert again.returncode == 0 and "packed 0 version(s)" in again.stdout


def test_pack_of_a_missing_store_is_a_clear_error(tmp_path):
    out = run_cli("pack", "--store", str(tmp_path / "nope"))
    assert out.returncode == 1
    assert "no store at" in out.stderr and "Traceback" not in out.stderr
    out = run_cli("pack", "--min-age", "-1", "--store", str(tmp_path))
    assert out.returncode == 2


def test_logs_of_a_packed_run_still_print(tmp_path):
    root, ids = _store(tmp_path)
    d = os.path.join(root, "logs", ids[0][:5], ids[0])
    os.makedirs(d)
    with open(os.path.join(d, "stdout.txt"), "w") as f:
        f.write("hello from the job\n")
    before = run_cli("logs", ids[0], "--store", root)
    out = run_cli("pack", "--store", root, "--logs-min-age", "0", "--json")
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout)["logs"] == 1
    assert not os.path.exists(d)  # ground truth: the log directory is gone
    after = run_cli("logs", ids[0], "--store", root)
    assert after.returncode == 0 and after.stdout == before.stdout == "hello from the job\n"
    assert "(packed)" in after.stderr
