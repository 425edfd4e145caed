"""Executor.launch_records(): the launch records of many runs written together (issue 17)."""

from __future__ import annotations

import os

import pytest

import runrec_cluster as rr
from runrec_cluster.backends import JobSpec
from runrec_cluster.errors import ConfigError
from runrec_cluster.record import Entrypoint
from runrec_cluster.store import layout, packs

CTX = {"code": None, "env": None, "inputs": [], "user": "u", "host": "h"}


def _ex(tmp_path) -> rr.Executor:
    return rr.Executor(backend="local", store=tmp_path / "s", cwd=tmp_path)


def _write(ex: rr.Executor, n: int, bad_at: int | None = None) -> list[str]:
    ids = []
    for i in range(n):
        rid = layout.new_id()
        tags = {"k": "v" if i != bad_at else object()}  # not a tag value: refused
        ep = Entrypoint(kind="function", function="m:f", cwd=str(ex.cwd))
        ex.write_launch(rid, CTX, ep, {}, tags, "r", None, None)
        ids.append(rid)
    return ids


def test_many_launch_records_go_into_one_pack(tmp_path):
    ex = _ex(tmp_path)
    with ex.launch_records():
        ids = _write(ex, 80)
    (shard,) = {r[: layout.SHARD_LEN] for r in ids}
    assert len(packs.list_packs(ex.store.root, shard)) == 1
    assert not os.path.exists(os.path.join(layout.runs_dir(ex.store.root), shard))
    assert [rr.load(ex.store, r).name for r in ids] == ["r"] * 80


def test_a_refused_record_inside_the_block_writes_none(tmp_path):
    ex = _ex(tmp_path)
    with pytest.raises(ConfigError, match="tag"), ex.launch_records():
        _write(ex, 80, bad_at=70)
    assert list(ex.store.run_ids()) == []


def test_launching_before_the_block_ends_is_refused(tmp_path):
    ex = _ex(tmp_path)
    with pytest.raises(ConfigError, match="after the block"), ex.launch_records():
        (rid,) = _write(ex, 1)
        ex.launch([JobSpec(rid, "function", str(tmp_path), ex.store.log_dir(rid))])
    assert list(ex.store.run_ids()) == []  # nothing launched, nothing written
