"""Shared fixtures. Integration tests use real processes, real git repositories, real files."""

from __future__ import annotations

import os
import sys

import cloudpickle
import pytest

sys.path.insert(0, os.path.dirname(__file__))
import jobfns  # noqa: E402
from helpers import git  # noqa: E402

# job functions travel by value, so job processes need not import the tests package
cloudpickle.register_pickle_by_value(jobfns)


@pytest.fixture
def store(tmp_path):
    import runrec_cluster as rr

    s = rr.Store(tmp_path / "store")
    s.ensure_writable()
    return s


@pytest.fixture
def repo(tmp_path):
    """A real git repository with one commit."""
    d = tmp_path / "repo"
    d.mkdir()
    git(d, "init", "-q", "-b", "main")
    (d / "train.py").write_text("print('hello')\n")
    (d / "weights.bin").write_bytes(bytes(range(256)) * 4)
    git(d, "add", ".")
    git(d, "commit", "-qm", "first")
    return d


def pytest_collection_modifyitems(config, items):
    """Tests under integration/slurm and integration/ray carry the slurm / ray marker."""
    for item in items:
        path = str(item.fspath)
        for kind in ("slurm", "ray"):
            if f"{os.sep}integration{os.sep}{kind}{os.sep}" in path:
                item.add_marker(getattr(pytest.mark, kind))


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    """Where the clusters are required (the test command, CI), a skipped Slurm or Ray test is a
    failure, never a silent pass."""
    outcome = yield
    rep = outcome.get_result()
    required = os.environ.get("RUNREC_REQUIRE_CLUSTERS") == "1"
    if (
        required
        and rep.skipped
        and (item.get_closest_marker("slurm") or item.get_closest_marker("ray"))
    ):
        rep.outcome = "failed"
        reason = rep.longrepr[2] if isinstance(rep.longrepr, tuple) else str(rep.longrepr)
        rep.longrepr = f"integration test skipped while RUNREC_REQUIRE_CLUSTERS=1: {reason}"
