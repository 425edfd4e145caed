import os

import pytest

import runrec_cluster as rr
from runrec_cluster.errors import (
    AmbiguousRunId,
    ConfigError,
    CorruptRecord,
    RecordNotFound,
    StoreError,
)
from runrec_cluster.store import default_store_path, layout


def test_ids_are_unique_sortable_and_valid():
    ids = [layout.new_id() for _ in range(2000)]
    assert len(set(ids)) == 2000
    assert all(layout.RUN_ID_RE.match(i) for i in ids)
    assert sorted(ids, key=layout.id_time) == sorted(ids, key=lambda i: i[:10])
    import time

    assert abs(layout.id_time(ids[-1]) - time.time()) < 5


def test_versions_append_and_fold(store):
    rid = layout.new_id()
    store.write_version(rid, "launch", {"run_id": rid, "name": "a", "state": "submitted"})
    store.write_version(rid, "metrics", {"metrics": {"x": 1}})
    rec = store.load(rid)
    assert rec.name == "a" and rec.metrics == {"x": 1}
    assert [os.path.basename(p)[:7] for p in store.version_files(rid)] == ["v000001", "v000002"]


def test_prefix_resolution(store):
    a, b = "01m8c98spkjwx5becw52s14k16", "01m8c98spkzzzzzzzzzzzzzzzz"
    for r in (a, b):
        store.write_version(r, "launch", {"run_id": r})
    assert store.resolve(a[:12]) == a
    assert store.resolve(b.upper()[:12]) == b
    with pytest.raises(AmbiguousRunId):
        store.resolve(a[:8])
    with pytest.raises(AmbiguousRunId):
        store.resolve(a[:3])  # shorter than a shard: scans everything
    with pytest.raises(RecordNotFound):
        store.resolve("01m8c98sq")
    with pytest.raises(ConfigError):
        store.resolve("../../etc/passwd")


def test_blobs_are_content_addressed_and_verified(store):
    d1 = store.put_blob(b"x" * 1000)
    d2 = store.put_blob(b"x" * 1000)
    assert d1 == d2 and store.get_blob(d1) == b"x" * 1000
    path = layout.blob_path(store.root, d1)
    os.chmod(path, 0o644)
    from runrec_cluster.store import codec

    with open(path, "wb") as f:
        f.write(codec.compress(b"tampered"))
    with pytest.raises(CorruptRecord, match="does not match its hash"):
        store.get_blob(d1)
    with pytest.raises(ConfigError):
        store.get_blob("sha256:../../../etc")


def test_truncated_version_is_reported_not_fatal_when_listing(store):
    rid = layout.new_id()
    store.write_version(rid, "launch", {"run_id": rid, "name": "a"})
    store.write_version(rid, "metrics", {"metrics": {"x": 1}})
    bad = store.version_files(rid)[1]
    os.chmod(bad, 0o644)
    data = open(bad, "rb").read()
    open(bad, "wb").write(data[: len(data) // 2])
    with pytest.raises(CorruptRecord) as e:
        store.load(rid)
    assert bad in str(e.value)
    problems = []
    rec = store.load(rid, problems)
    assert rec.name == "a" and problems[0].path == bad


def test_temporary_leftovers_are_ignored(store):
    rid = layout.new_id()
    store.write_version(rid, "launch", {"run_id": rid})
    d = os.path.dirname(store.version_files(rid)[0])
    open(os.path.join(d, ".tmp-deadbeef"), "wb").write(b"half a wri")
    assert len(store.versions(rid)) == 1


def test_files_are_immutable_on_disk(store):
    rid = layout.new_id()
    store.write_version(rid, "launch", {"run_id": rid})
    mode = os.stat(store.version_files(rid)[0]).st_mode & 0o777
    assert mode & 0o222 == 0 and mode & 0o444


def test_store_path_that_is_a_file_gives_a_clear_error(tmp_path):
    f = tmp_path / "afile"
    f.write_text("x")
    with pytest.raises(StoreError, match="not a directory"):
        rr.Store(f).ensure_writable()
    with pytest.raises(StoreError, match="cannot create"):
        rr.Store(f / "sub").ensure_writable()


def test_default_store_resolution(tmp_path, monkeypatch):
    monkeypatch.delenv("RUNREC_STORE", raising=False)
    proj = tmp_path / "proj"
    (proj / "sub").mkdir(parents=True)
    assert default_store_path(str(proj / "sub")) == str(proj / "sub" / "runrec-store")
    (proj / "pyproject.toml").write_text('[tool.runrec]\nstore = "../shared-store"\n')
    assert default_store_path(str(proj / "sub")) == str(tmp_path / "shared-store")
    monkeypatch.setenv("RUNREC_STORE", str(tmp_path / "env-store"))
    assert default_store_path(str(proj)) == str(tmp_path / "env-store")
