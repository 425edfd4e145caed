"""submitit parameter names -> rr.Executor arguments, and the refusals (no job runs)."""

from __future__ import annotations

import pytest

import runrec_cluster as rr
import runrec_cluster.submitit as submitit
from runrec_cluster.submitit import params as P


def test_generic_parameters_map_to_runrec_resources():
    kw, extras = P.translate(
        "slurm",
        {
            "timeout_min": 30,
            "mem_gb": 4,
            "nodes": 2,
            "cpus_per_task": 8,
            "gpus_per_node": 1,
            "tasks_per_node": 1,
            "name": "train",
            "stderr_to_stdout": False,
            "slurm_array_parallelism": 2,
        },
    )
    assert kw == {
        "backend": "slurm",
        "timeout_min": 30,
        "mem_gb": 4,
        "nodes": 2,
        "cpus": 8,
        "gpus": 1,
        "name": "train",
        "slurm_array_parallelism": 2,
    }
    assert extras == {}


def test_slurm_parameters_pass_through_and_cluster_specific_wins():
    kw, _ = P.translate(
        "slurm",
        {
            "timeout_min": 10,
            "slurm_time": "1:30:00",
            "slurm_mem": "2GB",
            "slurm_partition": "gpu",
            "slurm_constraint": "a100",
            "slurm_additional_parameters": {"begin": "now"},
            "slurm_setup": ["module load cuda"],
            "slurm_srun_args": ["--cpu-bind=none"],
            "slurm_mail_type": "END",
            "slurm_job_name": "j",
        },
    )
    assert kw["timeout_min"] == 90 and kw["mem_gb"] == 2 and kw["name"] == "j"
    assert kw["slurm_partition"] == "gpu" and kw["slurm_constraint"] == "a100"
    assert kw["slurm_additional_parameters"] == {"begin": "now"}
    assert kw["slurm_setup"] == ["module load cuda"]
    assert kw["slurm_srun_args"] == ["--cpu-bind=none"]
    assert kw["slurm_extra"] == {"mail-type": "END"}


def test_defaults_are_submitits():
    assert P.translate("slurm", {})[0]["timeout_min"] == 5
    assert P.translate("local", {})[0]["timeout_min"] == 2.0
    assert "timeout_min" not in P.translate("debug", {})[0]
    # a checkpointable callable gets submitit's USR2 90 s before the limit, unless given
    assert P.translate("slurm", {}, checkpointable=True)[0]["slurm_signal_delay_s"] == 90
    kw = P.translate("slurm", {"slurm_signal_delay_s": 30}, checkpointable=True)[0]
    assert kw["slurm_signal_delay_s"] == 30
    assert "slurm_signal_delay_s" not in P.translate("slurm", {})[0]


def test_other_clusters_parameters_are_ignored_as_in_submitit():
    kw, _ = P.translate("local", {"timeout_min": 1, "slurm_partition": "dev", "slurm_mem": "1G"})
    assert kw == {"backend": "local", "timeout_min": 1}
    kw, _ = P.translate("slurm", {"local_timeout_min": 3, "timeout_min": 1})
    assert kw["timeout_min"] == 1
    assert P.translate("local", {"local_timeout_min": 3, "timeout_min": 1})[0]["timeout_min"] == 3


def test_runrec_extras():
    kw, extras = P.translate(
        "local",
        {"runrec_hardware": "a100", "runrec_tags": {"t": "1"}, "runrec_inputs": ["d"]},
    )
    assert kw["hardware"] == "a100"
    assert extras == {"tags": {"t": "1"}, "inputs": ["d"]}


@pytest.mark.parametrize(
    "cluster, params, names",
    [
        ("slurm", {"tasks_per_node": 3}, "tasks_per_node=3"),
        ("slurm", {"slurm_ntasks_per_node": 2}, "tasks_per_node=2"),
        ("local", {"stderr_to_stdout": True}, "stderr_to_stdout=True"),
        ("slurm", {"slurm_teardown": ["echo bye"]}, "slurm_teardown"),
        ("slurm", {"slurm_use_srun": False}, "slurm_use_srun=False"),
        ("local", {"local_visible_gpus": [0]}, "local_visible_gpus"),
        ("local", {"local_setup": ["x"]}, "local_setup"),
        ("local", {"nodes": 2}, "nodes=2"),
        ("slurm", {"slurm_bogus": 1}, "slurm_bogus"),
        ("slurm", {"chronos_conda_file": "x"}, "chronos_conda_file"),
        ("slurm", {"runrec_color": "red"}, "runrec_color"),
        ("slurm", {"slurm_time": "soon"}, "slurm_time='soon'"),
        ("slurm", {"slurm_mem": "lots"}, "slurm_mem='lots'"),
    ],
)
def test_unsupported_parameters_are_refused_by_name(cluster, params, names):
    with pytest.raises(P.UnsupportedParameter) as err:
        P.translate(cluster, params)
    assert names in str(err.value)
    assert isinstance(err.value, ValueError) and isinstance(err.value, rr.RunrecError)


def test_refused_on_the_other_cluster_is_ignored():
    # a slurm-only refusal does not matter on the local cluster (ignored there, as submitit)
    assert P.translate("local", {"slurm_teardown": ["x"]})[0] == {
        "backend": "local",
        "timeout_min": 2.0,
    }


def test_time_and_memory_forms():
    assert P.parse_time_min(90) == 90
    assert P.parse_time_min("45") == 45
    assert P.parse_time_min("10:30") == 10.5
    assert P.parse_time_min("2:00:00") == 120
    assert P.parse_time_min("1-02") == 1440 + 120
    assert P.parse_time_min("1-00:30:00") == 1470
    assert P.parse_mem_gb("16GB") == 16
    assert P.parse_mem_gb("512M") == 0.5
    assert P.parse_mem_gb(2048) == 2
    assert P.parse_mem_gb("1T") == 1024


def test_executors_canonical_names(tmp_path):
    ex = submitit.SlurmExecutor(folder=tmp_path, runrec_store=tmp_path / "s")
    ex.update_parameters(time=7, partition="debug", array_parallelism=3, job_name="n")
    assert ex.parameters == {
        "slurm_time": 7,
        "slurm_partition": "debug",
        "slurm_array_parallelism": 3,
        "slurm_job_name": "n",
    }
    loc = submitit.LocalExecutor(folder=tmp_path, runrec_store=tmp_path / "s")
    loc.update_parameters(timeout_min=3, gpus_per_node=0)
    assert P.translate("local", loc.parameters)[0]["timeout_min"] == 3


def test_refusal_changes_nothing(tmp_path):
    ex = submitit.AutoExecutor(folder=tmp_path, cluster="local", runrec_store=tmp_path / "s")
    ex.update_parameters(timeout_min=3)
    with pytest.raises(submitit.UnsupportedParameter, match="tasks_per_node=4"):
        ex.update_parameters(tasks_per_node=4, timeout_min=9)
    assert ex.parameters == {"timeout_min": 3}


def test_constructor_refusals(tmp_path):
    with pytest.raises(submitit.UnsupportedParameter, match="max_num_timeout=5"):
        submitit.SlurmExecutor(folder=tmp_path, max_num_timeout=5)
    with pytest.raises(submitit.UnsupportedParameter, match="max_num_timeout=1"):
        submitit.AutoExecutor(folder=tmp_path, cluster="local", slurm_max_num_timeout=1)
    with pytest.raises(submitit.UnsupportedParameter, match="conda_file"):
        submitit.AutoExecutor(folder=tmp_path, cluster="local", conda_file="env.yml")
    with pytest.raises(submitit.UnsupportedParameter, match="cluster='chronos'"):
        submitit.AutoExecutor(folder=tmp_path, cluster="chronos")
    ex = submitit.AutoExecutor(folder=tmp_path, cluster="slurm", slurm_python="/x/python")
    assert P.translate("slurm", {}, python=ex.python)[0]["slurm_python"] == "/x/python"


def test_cluster_detection(monkeypatch):
    monkeypatch.setenv("RUNREC_SUBMITIT_CLUSTER", "debug")
    assert submitit.AutoExecutor.which() == "debug"
    monkeypatch.delenv("RUNREC_SUBMITIT_CLUSTER")
    monkeypatch.setenv("PATH", "/nonexistent")
    assert submitit.AutoExecutor.which() == "local"  # no srun: local, as submitit


def test_batch_rules(tmp_path):
    ex = submitit.AutoExecutor(folder=tmp_path, cluster="debug", runrec_store=tmp_path / "s")
    with ex.batch():
        job = ex.submit(abs, -1)
        with pytest.raises(AttributeError, match="batch"):
            job.job_id  # noqa: B018
        with pytest.raises(RuntimeError, match="not allowed"):
            ex.update_parameters(timeout_min=1)
        with pytest.raises(RuntimeError, match="Nesting"):
            with ex.batch():
                pass
    with pytest.warns(RuntimeWarning, match="No submission"):
        with ex.batch():
            pass
    with pytest.warns(UserWarning, match="empty job array"):
        assert ex.map_array(abs, []) == []


def test_public_names():
    assert sorted(submitit.__all__) == sorted(
        [
            "AutoExecutor",
            "DebugExecutor",
            "DebugJob",
            "DelayedJob",
            "Executor",
            "FailedJobError",
            "Job",
            "JobEnvironment",
            "JobPaths",
            "LocalExecutor",
            "SlurmExecutor",
            "UncompletedJobError",
            "UnsupportedParameter",
            "helpers",
        ]
    )
    import submitit as real

    assert issubclass(submitit.FailedJobError, real.core.utils.FailedJobError)
    assert issubclass(submitit.FailedJobError, rr.JobFailed)
