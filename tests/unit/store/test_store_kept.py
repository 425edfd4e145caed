"""Kept copies of artifacts (store/kept.py, job/artifacts.py): real files, ground truth from
hashlib and os.stat."""

import hashlib
import os
import stat

import pytest
from blake3 import blake3

from runrec_cluster import settings
from runrec_cluster.capture.data import hash_file, hash_path
from runrec_cluster.errors import ConfigError, StoreError
from runrec_cluster.job import artifacts as keep
from runrec_cluster.store import kept, layout


def b3(data: bytes) -> str:
    return "blake3:" + blake3(data).hexdigest()


def check(path: str) -> str:
    return hash_file(path)


def test_a_file_is_kept_by_content_read_only_and_survives_in_place_rewrites(store, tmp_path):
    src = tmp_path / "model.bin"
    src.write_bytes(b"weights v1" * 1000)
    digest = b3(src.read_bytes())
    how = kept.put_file(store.root, str(src), digest, check)
    assert how in ("copy", "reflink")
    dest = os.path.join(store.root, layout.kept_rel(digest))
    assert dest == os.path.join(
        store.root, "artifacts", "objects", "blake3", digest[7:9], digest[7:]
    )
    assert os.stat(dest).st_ino != os.stat(src).st_ino  # never a hard link to the user's file
    assert stat.S_IMODE(os.stat(dest).st_mode) & 0o222 == 0  # read-only
    ino = os.stat(src).st_ino
    with open(src, "r+b") as f:  # an in-place rewrite: the same inode
        f.write(b"CHANGED!!!")
    assert os.stat(src).st_ino == ino
    with open(dest, "rb") as f:
        assert b3(f.read()) == digest
    # the same content again: nothing is written, the object is not touched
    mtime = os.stat(dest).st_mtime_ns
    other = tmp_path / "same.bin"
    other.write_bytes(b"weights v1" * 1000)
    assert kept.put_file(store.root, str(other), digest, check) == "existing"
    assert os.stat(dest).st_mtime_ns == mtime
    assert kept.kept_file(store.root, digest) == dest


def test_a_copy_that_does_not_hash_to_the_digest_is_refused_and_leaves_nothing(store, tmp_path):
    src = tmp_path / "m.bin"
    src.write_bytes(b"now")
    wrong = b3(b"before")
    with pytest.raises(StoreError, match="changed while it was kept"):
        kept.put_file(store.root, str(src), wrong, check)
    assert kept.kept_file(store.root, wrong) is None
    d = os.path.dirname(layout.kept_path(store.root, wrong))
    assert os.listdir(d) == []  # no temporary file left


def test_a_directory_is_kept_as_objects_and_a_tree_of_links(store, tmp_path):
    src = tmp_path / "ckpt"
    (src / "sub").mkdir(parents=True)
    (src / "a.txt").write_bytes(b"alpha")
    (src / "sub" / "b.txt").write_bytes(b"beta")
    res, _ = hash_path(str(src))
    how = kept.put_tree(store.root, str(src), res.digest, res.manifest, check)
    assert how in ("copy", "reflink")
    tree = layout.kept_path(store.root, res.digest)
    assert "/artifacts/trees/blake3-tree/" in tree
    again, _ = hash_path(tree)
    assert again.digest == res.digest
    obj = layout.kept_path(store.root, b3(b"beta"))
    assert os.stat(os.path.join(tree, "sub", "b.txt")).st_ino == os.stat(obj).st_ino
    assert stat.S_IMODE(os.stat(tree).st_mode) & 0o222 == 0
    assert kept.put_tree(store.root, str(src), res.digest, res.manifest, check) == "existing"
    assert not [n for n in os.listdir(os.path.dirname(tree)) if n.startswith(".tmp-")]


def test_clone_or_copy_makes_an_equal_new_file(tmp_path):
    src = tmp_path / "s"
    src.write_bytes(os.urandom(300_000))
    how = kept.clone_or_copy(str(src), str(tmp_path / "d"))
    assert how in ("copy", "reflink")
    assert (tmp_path / "d").read_bytes() == src.read_bytes()
    with pytest.raises(FileExistsError):  # never over an existing file
        kept.clone_or_copy(str(src), str(tmp_path / "d"))


@pytest.mark.parametrize(
    "digest", ["md5:abc", "blake3:" + "g" * 64, "blake3:../" + "a" * 61, "sha256:" + "A" * 64]
)
def test_only_hex_digests_become_paths(digest):
    with pytest.raises(ConfigError, match="not an artifact digest"):
        layout.kept_rel(digest)


def test_sha256_digests_have_their_own_place():
    h = hashlib.sha256(b"x").hexdigest()
    assert layout.kept_rel("sha256:" + h) == os.path.join(
        "artifacts", "objects", "sha256", h[:2], h
    )


# -- the limit and what the record says ------------------------------------------------------


def test_the_limit_comes_from_the_variable_then_the_config_file(tmp_path, monkeypatch):
    monkeypatch.delenv(settings.KEEP_MAX_VAR, raising=False)
    assert settings.keep_artifacts_max_mb(str(tmp_path)) == settings.KEEP_MAX_DEFAULT_MB
    (tmp_path / "pyproject.toml").write_text("[tool.runrec]\nkeep_artifacts_max_mb = 2.5\n")
    assert settings.keep_artifacts_max_mb(str(tmp_path)) == 2.5
    (tmp_path / "runrec.toml").write_text("keep_artifacts_max_mb = 0\n")
    assert settings.keep_artifacts_max_mb(str(tmp_path)) == 0
    monkeypatch.setenv(settings.KEEP_MAX_VAR, "7")
    assert settings.keep_artifacts_max_mb(str(tmp_path)) == 7


@pytest.mark.parametrize("bad", ['"lots"', "-1", "true", "inf"])
def test_a_bad_limit_is_named_with_its_file(tmp_path, monkeypatch, bad):
    monkeypatch.delenv(settings.KEEP_MAX_VAR, raising=False)
    (tmp_path / "runrec.toml").write_text(f"keep_artifacts_max_mb = {bad}\n")
    with pytest.raises(ConfigError, match="runrec.toml is not a size in MiB"):
        settings.keep_artifacts_max_mb(str(tmp_path))
    monkeypatch.setenv(settings.KEEP_MAX_VAR, "ten")
    with pytest.raises(ConfigError, match=r"\$RUNREC_KEEP_ARTIFACTS_MAX_MB"):
        settings.keep_artifacts_max_mb(str(tmp_path))


def test_the_record_says_why_an_artifact_was_not_kept(store, tmp_path, monkeypatch):
    f = tmp_path / "big.bin"
    f.write_bytes(b"x" * 3 * 1024 * 1024)
    res, _ = hash_path(str(f))
    over = keep.keep(store, res, 1)
    assert over == {"not_kept": over["not_kept"]}
    assert "3.0 MiB is over keep_artifacts_max_mb = 1" in over["not_kept"]
    off = keep.keep(store, res, 0)
    assert "keeping copies is off (keep_artifacts_max_mb = 0)" in off["not_kept"]
    assert not os.path.exists(os.path.join(store.root, "artifacts"))
    monkeypatch.setenv(settings.KEEP_MAX_VAR, "-3")
    ref = keep.artifact_ref(store, "big", res, str(tmp_path))
    assert ref.kept is None and "RUNREC_KEEP_ARTIFACTS_MAX_MB" in (ref.not_kept or "")
    monkeypatch.setenv(settings.KEEP_MAX_VAR, "4")
    ref = keep.artifact_ref(store, "big", res, str(tmp_path))
    assert ref.not_kept is None and ref.kept == layout.kept_rel(res.digest)
    assert ref.digest == b3(f.read_bytes())  # the digest is the artifact's, as before
