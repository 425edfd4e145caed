"""Fixtures for the real Ray cluster brought up by ray/up (head: hwclass-cpu; gpu: a fake GPU,
accelerator_type:A100, hwclass-a100; oom: oom-test, memory monitor at 25%). Unreachable
cluster: skipped here, a failure where clusters are required (see tests/conftest.py)."""

import json
import os
import sys
import urllib.request

import cloudpickle
import pytest

# every Ray process of the tests, subprocesses included (see CLUSTERS-HERE.md)
os.environ["RAY_AUTH_MODE"] = "disabled"
os.environ["RAY_USAGE_STATS_ENABLED"] = "0"

sys.path.insert(0, os.path.dirname(__file__))
import rayfns  # noqa: E402

cloudpickle.register_pickle_by_value(rayfns)

DASHBOARD = os.environ.get("RAY_DASHBOARD_URL", "http://127.0.0.1:8265")


def _cluster_down() -> str | None:
    """Why the cluster cannot be used, asked over HTTP first: a ray.init() at a dead address
    waits a minute before it gives up."""
    try:
        with urllib.request.urlopen(DASHBOARD.rstrip("/") + "/api/version", timeout=5) as f:
            json.loads(f.read())
    except Exception as exc:
        return f"the dashboard at {DASHBOARD} does not answer ({exc}); run ray/up"
    return None


@pytest.fixture(scope="session")
def ray_cluster():
    """Connects this process (as the backend does) and returns {role: node id}."""
    why = _cluster_down()
    if why:
        pytest.skip(f"no Ray cluster: {why}")
    import ray

    from runrec_cluster.backends.ray.driver import connect

    connect()
    roles = {}
    for n in ray.nodes():
        if not n["Alive"]:
            continue
        res = n["Resources"]
        for role, marker in (("head", "hwclass-cpu"), ("gpu", "hwclass-a100"), ("oom", "oom-test")):
            if marker in res:
                roles[role] = n["NodeID"]
    missing = {"head", "gpu", "oom"} - set(roles)
    if missing:
        pytest.skip(f"the Ray cluster lacks the {sorted(missing)} node(s); run ray/up")
    return roles


@pytest.fixture
def project(tmp_path):
    """A project directory (no git) with hardware classes in runrec.toml."""
    d = tmp_path / "proj"
    d.mkdir()
    (d / "runrec.toml").write_text(
        """
[hardware.a100]
ray = { accelerator_type = "A100", resources = { "hwclass-a100" = 1 } }
expect = { node_features = "hwclass-a100" }

[hardware.h100]
ray = { accelerator_type = "H100" }
expect = { gpu_name = "H100" }

[hardware.wrong]
ray = { resources = { "hwclass-cpu" = 1 } }
expect = { node_features = "hwclass-a100" }
"""
    )
    return d
