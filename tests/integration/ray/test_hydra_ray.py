"""The Hydra launcher on the real Ray cluster (ray/up), with real hydra-core: a 2x2
``--multirun`` with ``hydra/launcher=runrec_ray`` is one runrec sweep run by one Ray driver,
the failing job recorded with its traceback, each job's output directory written by the task on
its Ray worker, and a rerun of one job by run id with the same composed config."""

import pytest
from hydra_checks import REPO_ROOT, check_grid, check_rerun, make_app, run_multirun

pytestmark = pytest.mark.usefixtures("ray_cluster")


def test_multirun_on_ray_is_one_sweep_and_reruns(tmp_path, store):
    app = make_app(tmp_path)
    out = run_multirun(
        app, store, "runrec_ray", "model=small,large", "lr=0.2,0.3",
        "hydra.launcher.timeout_min=5",
        # keeps the tasks off the out-of-memory test node (tests/integration/ray/conftest.py)
        "hydra.launcher.resources={runrec-general:1}",
        # the workers import this checkout's runrec-cluster, as the app does (hydra_checks)
        f"hydra.launcher.runtime_env={{env_vars:{{PYTHONPATH:'{REPO_ROOT}'}}}}",
    )  # fmt: skip
    recs = check_grid(app, store, out, ["small", "large"], [0.2, 0.3], "ray")
    assert len({r.execution.scheduler["ray_job_id"] for r in recs}) == 1  # one driver
    for r in recs:
        assert r.execution.options["ray_resources"] == {"runrec-general": 1}
        assert r.node.hostname  # the worker recorded its node
    new = check_rerun(app, store, recs[2], "large", 0.2)
    assert new.execution.backend == "ray"
