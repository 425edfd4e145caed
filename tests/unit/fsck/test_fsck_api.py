"""runrec_cluster.fsck's public names, and what a bad argument to repair raises."""

from __future__ import annotations

import pytest

from runrec_cluster import fsck
from runrec_cluster.errors import ConfigError
from runrec_cluster.store import Store, layout


def test_public_names():
    for name in fsck.__all__:
        assert getattr(fsck, name) is not None, name
    assert callable(fsck.check) and callable(fsck.repair)
    assert fsck.QUARANTINE_DIR == layout.QUARANTINE_DIR
    assert set(fsck.HINTS) >= {"bad_blob", "temp_file", "acknowledged_loss"}


def test_negative_min_age_is_a_config_error(tmp_path):
    store = Store(tmp_path / "s")
    store.ensure_writable()
    with pytest.raises(ConfigError, match="--min-age"):
        fsck.repair(store, min_age_s=-1)


def test_version_seq_is_a_layout_rule():
    assert layout.version_seq(layout.version_name(12, "abc")) == 12
    assert layout.version_seq(".tmp-v000001-x.msgpack.zst") is None
