"""Shared setup of the fidelity matrix (docs/fidelity.md): the fake CUDA libraries, the user
code pickled by value, and the check that a cluster answers (a cell whose cluster is down is
skipped here, and a failure where clusters are required: see tests/conftest.py)."""

import os
import shutil
import sys

import cloudpickle
import pytest

# every Ray process of the tests, subprocesses included (see CLUSTERS-HERE.md)
os.environ.setdefault("RAY_AUTH_MODE", "disabled")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")

sys.path.insert(0, os.path.dirname(__file__))
import fidelity_checks  # noqa: E402
import fidelity_user  # noqa: E402

# the function cells' code travels by value: job processes need not import the tests
cloudpickle.register_pickle_by_value(fidelity_user)


@pytest.fixture(scope="session")
def fake_libs(tmp_path_factory):
    """The fake libcudart.so.12.4.127, libcudnn.so.9 and libnccl.so.2, built with cc."""
    if not shutil.which("cc"):
        pytest.fail("the fidelity matrix needs a C compiler (cc) to build its fake CUDA libraries")
    return fidelity_checks.build_fake_libs(tmp_path_factory.mktemp("fake-cuda-libs"))
