"""Small blobs and logs of finished runs in packs (store/pack_extras.py): packed with their runs,
the loose copies deleted, read back through Store.get_blob / Store.read_log. Ground truth: the
bytes this test wrote, and the files on disk."""

from __future__ import annotations

import hashlib
import os
import time

import msgspec
import pytest

from runrec_cluster.errors import CorruptRecord
from runrec_cluster.record import CONTEXT_KEY
from runrec_cluster.store import Store, codec, layout, pack_extras, packs


def _finished(store: Store, result: bytes, *, ctx: str | None = None, end: bool = True) -> str:
    rid = layout.new_id()
    launch = {"run_id": rid, CONTEXT_KEY: ctx} if ctx else {"run_id": rid, "name": "b"}
    store.write_version(rid, "launch", launch)
    if end:
        digest = store.put_blob(result)
        store.write_version(
            rid, "end", {"state": "succeeded", "result": {"blob": digest, "format": "msgpack"}}
        )
    return rid


def _loose_blobs(root: str) -> set[str]:
    out = set()
    for _d, _, names in os.walk(os.path.join(root, "blobs")):
        out |= {n.removesuffix(".zst") for n in names if not n.startswith(".")}
    return out


def _sha(b: bytes) -> str:
    return hashlib.sha256(b).hexdigest()


def _logs(store: Store, rid: str, out: bytes, err: bytes = b"") -> str:
    d = layout.log_dir(store.root, rid)
    os.makedirs(d, exist_ok=True)
    for name, data in (("stdout.txt", out), ("stderr.txt", err)):
        with open(os.path.join(d, name), "wb") as f:
            f.write(data)
    return d


def test_small_blobs_go_into_the_pack_large_ones_stay_loose(tmp_path):
    store = Store(tmp_path / "s")
    store.ensure_writable()
    unnamed = store.put_blob(b"named by no run")
    patch = store.put_blob(b"diff --git a b\n" * 40)  # named inside the shared context only
    ctx = store.put_context({"name": "sweep", "code": {"is_repo": True, "patch_blob": patch}})
    small = [os.urandom(100) + bytes([i]) for i in range(5)]
    big = os.urandom(pack_extras.BLOB_LIMIT + 10)
    ids = [_finished(store, b, ctx=ctx) for b in small]
    ids.append(_finished(store, big, ctx=ctx))
    running = _finished(store, b"", ctx=ctx, end=False)  # shares the context, still loose
    before = _loose_blobs(store.root)
    stats = packs.pack_store(store.root)
    assert stats.runs == 6 and stats.blobs == 7  # 5 results, the shared context, its patch
    after = _loose_blobs(store.root)
    # the large result and the blob no run names stay; the packed ones went
    packed = {_sha(b) for b in small} | {d.removeprefix("sha256:") for d in (ctx, patch)}
    assert before - after == packed
    assert after == {_sha(big), unnamed.removeprefix("sha256:")}
    fresh = Store(store.root)
    for rid, want in zip(ids, [*small, big], strict=True):
        rec = fresh.load(rid)
        assert rec.name == "sweep"  # the packed context merged in
        assert fresh.get_blob(rec.code.patch_blob) == b"diff --git a b\n" * 40
        assert fresh.get_blob(rec.result.blob) == want
    # the run still running reads the packed context too (a new process: nothing cached)
    assert Store(store.root).load(running).name == "sweep"
    assert Store(store.root).has_blob(ctx)
    assert packs.pack_store(store.root).packs == []  # nothing left to do


def test_a_blob_written_again_after_packing_is_read_once_and_deleted_next_time(tmp_path):
    store = Store(tmp_path / "s")
    store.ensure_writable()
    data = b"the same result"
    first = _finished(store, data)
    packs.pack_store(store.root)
    assert _sha(data) not in _loose_blobs(store.root)
    second = _finished(Store(store.root), data)  # put_blob finds no loose file: writes it again
    assert _sha(data) in _loose_blobs(store.root)
    stats = packs.pack_store(store.root)
    assert stats.runs == 1 and stats.blobs == 0  # packed in this shard already: not copied again
    assert _sha(data) not in _loose_blobs(store.root)
    for rid in (first, second):
        fresh = Store(store.root)
        assert fresh.get_blob(fresh.load(rid).result.blob) == data


def test_a_damaged_loose_blob_is_not_packed(tmp_path):
    store = Store(tmp_path / "s")
    store.ensure_writable()
    rid = _finished(store, b"good content")
    path = layout.blob_path(store.root, store.load(rid).result.blob)
    os.chmod(path, 0o644)
    with open(path, "wb") as f:
        f.write(codec.compress(b"other content"))
    stats = packs.pack_store(store.root)
    assert stats.runs == 1 and stats.blobs == 0
    assert os.path.exists(path)  # left for fsck to report
    with pytest.raises(CorruptRecord, match="does not match its hash"):
        Store(store.root).get_blob(store.load(rid).result.blob)


def test_a_packer_killed_before_deleting_leaves_copies_the_next_one_deletes(tmp_path):
    store = Store(tmp_path / "s")
    store.ensure_writable()
    data = b"x" * 300
    rid = _finished(store, data)
    d = layout.run_dir(store.root, rid)
    loose = {n: codec.decompress(open(os.path.join(d, n), "rb").read()) for n in os.listdir(d)}
    # what a packer killed right after linking its pack leaves: everything in both places
    path = os.path.join(packs.shard_dir(store.root, rid[:5]), f"{layout.new_id()}.pack")
    os.makedirs(os.path.dirname(path))
    with open(path, "wb") as f:
        f.write(packs.encode_pack({rid: list(loose.items())}, {_sha(data): data}))
    assert packs.read_index(path).blobs == {_sha(data): 0}
    stats = packs.pack_store(store.root)
    assert stats.packs == [] and stats.deleted == 3  # two versions and the blob
    assert not os.path.exists(d) and _sha(data) not in _loose_blobs(store.root)
    fresh = Store(store.root)
    assert fresh.get_blob(fresh.load(rid).result.blob) == data


def test_a_pack_without_blobs_or_logs_stays_format_1(tmp_path):
    store = Store(tmp_path / "s")
    store.ensure_writable()
    rid = layout.new_id()
    store.write_version(rid, "launch", {"run_id": rid})
    store.write_version(rid, "end", {"state": "failed"})
    (path,) = packs.pack_store(store.root).packs
    raw = open(path, "rb").read()
    off = int.from_bytes(raw[-24:-16], "little")
    n = int.from_bytes(raw[-16:-8], "little")
    meta = msgspec.msgpack.decode(codec.decompress(raw[off : off + n]))
    assert meta["format"] == 1 and "blobs" not in meta


def test_logs_of_finished_runs_are_packed_and_read_back(tmp_path):
    store = Store(tmp_path / "s")
    store.ensure_writable()
    done = _finished(store, b"r")
    d_done = _logs(store, done, b"hello\n" * 10, b"warning: x\n")
    running = _finished(store, b"", end=False)
    d_running = _logs(store, running, b"still going\n")
    big = _finished(store, b"r2")
    d_big = _logs(store, big, b"y" * (pack_extras.LOG_LIMIT + 1))
    other = _finished(store, b"r3")
    d_other = _logs(store, other, b"out\n")
    open(os.path.join(d_other, "submitit-checkpoint.pkl"), "wb").close()
    # fresh logs (written just now) stay loose with the default quiet time
    stats = packs.pack_store(store.root)
    assert stats.runs == 3 and stats.logs == 0 and os.path.isdir(d_done)
    # once quiet, the logs of the already packed run go into a pack of their own
    stats = packs.pack_store(store.root, log_quiet_s=0)
    assert stats.logs == 1 and stats.runs == 0 and len(stats.packs) == 1
    assert not os.path.exists(d_done)
    assert sorted(os.listdir(d_running)) == ["stderr.txt", "stdout.txt"]  # running: untouched
    assert os.path.getsize(os.path.join(d_big, "stdout.txt")) == pack_extras.LOG_LIMIT + 1
    assert "submitit-checkpoint.pkl" in os.listdir(d_other)
    fresh = Store(store.root)
    assert fresh.read_log(done, "stdout.txt") == b"hello\n" * 10
    assert fresh.read_log(done, "stderr.txt") == b"warning: x\n"
    assert fresh.read_log(running, "stdout.txt") == b"still going\n"
    assert fresh.read_log(done, "other.txt") is None


def test_a_log_that_changed_after_packing_wins_over_the_packed_copy(tmp_path):
    store = Store(tmp_path / "s")
    store.ensure_writable()
    rid = _finished(store, b"r")
    d = _logs(store, rid, b"first\n")
    packs.pack_store(store.root, log_quiet_s=0)
    assert not os.path.exists(d)
    _logs(store, rid, b"first\nlate line\n")  # a straggler wrote after the pack
    assert Store(store.root).read_log(rid, "stdout.txt") == b"first\nlate line\n"
    stats = packs.pack_store(store.root, log_quiet_s=0)
    assert stats.logs == 1 and not os.path.exists(d)
    assert Store(store.root).read_log(rid, "stdout.txt") == b"first\nlate line\n"


def test_submitit_job_reads_packed_logs(tmp_path):
    from runrec_cluster.api import RunHandle  # layers above the store
    from runrec_cluster.submitit.jobs import Job

    store = Store(tmp_path / "s")
    store.ensure_writable()
    rid = _finished(store, b"r")
    _logs(store, rid, b"printed by the job\n", b"")
    job = Job(RunHandle(store, rid), "local")
    assert job.stdout() == "printed by the job\n"
    packs.pack_store(store.root, log_quiet_s=0)
    assert not os.path.exists(layout.log_dir(store.root, rid))
    assert Job(RunHandle(Store(store.root), rid), "local").stdout() == "printed by the job\n"
    assert Job(RunHandle(Store(store.root), rid), "local").stderr() == ""


def test_pack_takes_the_blobs_a_launch_pack_names(tmp_path):
    """A sweep's launch versions are packed at launch: the call blobs they name are packed
    with the run's other versions when it is packed (not left loose for ever)."""
    store = Store(tmp_path / "s")
    store.ensure_writable()
    calls = {}
    items = []
    for i in range(70):  # a launch pack (64 runs or more)
        rid = layout.new_id()
        calls[rid] = store.put_blob(f"call {i}".encode())
        patch = {"entrypoint": {"call_blob": calls[rid]}, "state": "submitted"}
        items.append((rid, "launch", patch))
    store.write_versions(items, new_runs=True)
    for rid in calls:
        store.write_version(rid, "end", {"state": "succeeded"}, role="job")
    loose = {rid: layout.blob_path(store.root, d) for rid, d in calls.items()}
    assert all(os.path.exists(p) for p in loose.values())
    st = packs.pack_store(store.root)
    assert st.runs == 70 and st.blobs >= 70
    assert not any(os.path.exists(p) for p in loose.values())  # ground truth: the files
    fresh = Store(store.root)
    for i, d in enumerate(calls.values()):
        assert fresh.get_blob(d) == f"call {i}".encode()


def test_pack_deletes_change_journals_of_past_days_only(tmp_path):
    store = Store(tmp_path / "s")
    store.ensure_writable()
    base = layout.changes_dir(store.root)
    now = time.time()
    old = os.path.join(base, layout.change_bucket(now - packs.CHANGES_KEEP_S - 3600))
    recent = os.path.join(base, layout.change_bucket(now - 3 * 3600))
    for d in (old, recent):
        os.makedirs(d, exist_ok=True)
        for w in ("vm-1-a.log", "vm-2-b.log"):
            with open(os.path.join(d, w), "w") as f:
                f.write("01m959w76cbs1s4jm9dbs3mz72 1\n")
    st = packs.pack_store(store.root)
    assert st.journals == 2
    assert not os.path.exists(old) and sorted(os.listdir(recent)) == ["vm-1-a.log", "vm-2-b.log"]
