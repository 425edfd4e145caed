"""The Hydra launcher on the real Slurm cluster (slurm/up), with real hydra-core: a 2x2
``--multirun`` with ``hydra/launcher=runrec_slurm`` and hydra-submitit-launcher's parameter
names is one Slurm array (one runrec sweep), the failing job recorded with its traceback, the
parameters reaching Slurm (the constraint puts every job on NODE_Y, as sacct says), and a rerun of
one job by run id with the same composed config."""

import subprocess

import pytest
from helpers import wait_for
from hydra_checks import check_grid, check_rerun, make_app, run_multirun
from slurm_target import NODE_Y

pytestmark = pytest.mark.usefixtures("slurm")


def sacct(job_id, fields):
    out = subprocess.run(
        ["sacct", "-n", "-P", "-X", "-j", str(job_id), "-o", fields],
        capture_output=True, text=True, timeout=60, check=True,
    )  # fmt: skip
    return [line.split("|") for line in out.stdout.splitlines() if line.strip()]


def test_multirun_on_slurm_is_one_array_and_reruns(tmp_path, store):
    app = make_app(tmp_path)
    out = run_multirun(
        app, store, "runrec_slurm", "model=small,large", "lr=0.2,0.3",
        "hydra.launcher.timeout_min=5", "hydra.launcher.cpus_per_task=1",
        "hydra.launcher.mem_gb=0.5", "hydra.launcher.partition=debug",
        "hydra.launcher.constraint=hwclass-y", "hydra.launcher.array_parallelism=4",
        "+hydra.launcher.additional_parameters.comment=hydra-test",
    )  # fmt: skip
    recs = check_grid(app, store, out, ["small", "large"], [0.2, 0.3], "slurm")
    arrays = {r.execution.scheduler["array_job_id"] for r in recs}
    assert len(arrays) == 1, arrays  # one sweep, one Slurm array
    array = arrays.pop()
    # slurmdbd records the array's tasks a moment after they end: ask until all four are final
    final = {"COMPLETED", "FAILED"}
    rows = wait_for(
        "sacct to list the 4 finished array tasks",
        lambda: (
            (r := sacct(array, "JobID,Partition,NodeList,State"))
            and len(r) == 4
            and all(x[-1] in final for x in r)
            and r
        ),
        timeout=180,
        every=2,
    )
    assert {(p, n) for _, p, n, _ in rows} == {("debug", NODE_Y)}, rows  # constraint=hwclass-y
    assert sorted(s for *_, s in rows) == ["COMPLETED", "COMPLETED", "COMPLETED", "FAILED"], rows
    for r in recs:
        assert r.execution.options["slurm_partition"] == "debug"
        assert r.execution.options["slurm_constraint"] == "hwclass-y"
        assert r.execution.options["slurm_additional_parameters"] == {"comment": "hydra-test"}
        assert r.execution.resources.cpus == 1 and r.execution.resources.mem_gb == 0.5
        assert r.node.scheduler_node == NODE_Y
    new = check_rerun(app, store, recs[0], "small", 0.2)
    assert new.execution.backend == "slurm" and new.node.scheduler_node == NODE_Y
