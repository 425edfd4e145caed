"""The Hydra launcher's pure parts, with real hydra-core in this process: the parameter
translation (hydra-submitit-launcher's names -> rr.Executor), the configs in Hydra's ConfigStore
and the plugin discovered by Hydra's own scan, the provenance of every key of a composed config,
and the rerun overrides in Hydra's grammar."""

import os

import pytest
from hydra import initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.core.plugins import Plugins
from hydra.plugins.launcher import Launcher
from hydra.types import RunMode
from omegaconf import OmegaConf

from runrec_cluster.errors import ConfigError
from runrec_cluster.hydra import config as hconf
from runrec_cluster.hydra import job as hjob
from runrec_cluster.hydra import provenance

CONF = os.path.join(os.path.dirname(__file__), "..", "..", "fixtures", "hydra_app", "conf")


def plain(conf_cls, **set_):
    c = OmegaConf.to_container(OmegaConf.structured(conf_cls))
    c.update(set_)
    return c


def test_slurm_parameters_map_to_executor_options():
    kw = hconf.executor_kwargs(
        "slurm",
        plain(
            hconf.RunrecSlurmConf,
            timeout_min=30, cpus_per_task=4, gpus_per_node=2, mem_gb=16, nodes=2,
            partition="gpu", constraint="a100", qos="high", account="lab", exclude="n3",
            gres="gpu:2", array_parallelism=8, setup=["module load cuda"],
            srun_args=["--cpu-bind=none"], signal_delay_s=90, mem_per_cpu="4G",
            additional_parameters={"mail-type": "END"}, hardware="a100", store="/s",
            name="x", tags={"a": "b"}, inputs=["/data"],
        ),
    )  # fmt: skip
    assert kw == {
        "backend": "slurm", "timeout_min": 30, "cpus": 4, "gpus": 2, "mem_gb": 16, "nodes": 2,
        "slurm_partition": "gpu", "slurm_constraint": "a100", "slurm_qos": "high",
        "slurm_account": "lab", "slurm_exclude": "n3", "slurm_gres": "gpu:2",
        "slurm_array_parallelism": 8, "slurm_setup": ["module load cuda"],
        "slurm_srun_args": ["--cpu-bind=none"], "slurm_signal_delay_s": 90,
        "slurm_additional_parameters": {"mem_per_cpu": "4G", "mail-type": "END"},
        "hardware": "a100", "store": "/s",
    }  # fmt: skip


def test_local_and_ray_parameters():
    assert hconf.executor_kwargs("local", plain(hconf.RunrecLocalConf, max_parallel=3)) == {
        "backend": "local", "timeout_min": 60, "nodes": 1, "local_max_parallel": 3,
    }  # fmt: skip
    kw = hconf.executor_kwargs(
        "ray", plain(hconf.RunrecRayConf, address="auto", resources={"x": 1}, max_retries=2)
    )
    assert kw == {
        "backend": "ray", "timeout_min": 60, "nodes": 1, "ray_address": "auto",
        "ray_resources": {"x": 1}, "ray_max_retries": 2,
    }  # fmt: skip


@pytest.mark.parametrize(
    "backend,cls,key,val,words",
    [
        ("local", hconf.RunrecLocalConf, "stderr_to_stdout", True, "stdout and stderr apart"),
        ("slurm", hconf.RunrecSlurmConf, "max_num_timeout", 3, "does not resubmit"),
        ("ray", hconf.RunrecRayConf, "tasks_per_node", 2, "one task per job"),
        ("local", hconf.RunrecLocalConf, "partition", "gpu", "unknown parameter(s) partition"),
    ],
)
def test_unsupported_parameters_are_refused_by_name(backend, cls, key, val, words):
    with pytest.raises(ConfigError) as e:
        hconf.executor_kwargs(backend, plain(cls, **{key: val}))
    assert key in str(e.value) and words in str(e.value)


def test_hydra_finds_the_plugin_and_its_configs():
    names = {f"{c.__module__}.{c.__name__}" for c in Plugins.instance().discover(Launcher)}
    for b in ("Local", "Slurm", "Ray"):
        assert f"hydra_plugins.runrec_launcher.runrec_launcher.Runrec{b}Launcher" in names
    with initialize_config_dir(config_dir=os.path.abspath(CONF), version_base="1.3"):
        loader = GlobalHydra.instance().config_loader()
        cfg = loader.load_configuration(
            "config", ["hydra/launcher=runrec_slurm", "hydra.launcher.partition=p"], RunMode.RUN
        )
    assert cfg.hydra.launcher._target_.endswith("runrec_launcher.RunrecSlurmLauncher")
    assert cfg.hydra.launcher.partition == "p" and cfg.hydra.launcher.timeout_min == 60


def compose(overrides):
    with initialize_config_dir(config_dir=os.path.abspath(CONF), version_base="1.3"):
        loader = GlobalHydra.instance().config_loader()
        cfg = loader.load_configuration("config", overrides, RunMode.RUN)
        return provenance.job_config(loader, cfg, overrides)


def test_every_key_has_hydras_provenance():
    conf = os.path.realpath(os.path.join(CONF, "config.yaml"))
    large = os.path.realpath(os.path.join(CONF, "model", "large.yaml"))
    entries, files = compose(["model=large", "model.width=100", "+extra.seed=7", "~data.path"])
    got = {k: (e.value, e.source) for k, e in entries.items()}
    assert got == {
        "model.name": ("large", "group:model=large"),
        "model.width": (100, "given"),  # a value override of a group's key
        "model.depth": (8, "group:model=large"),
        "lr": (0.01, f"file:{conf}"),
        "epochs": (3, f"file:{conf}"),
        "data.batch_size": (32, f"file:{conf}"),
        "extra.seed": (7, "given"),  # added on the command line
    }
    assert files == [large, conf]  # merge order; small.yaml was not used


def test_the_default_group_choice_and_interpolations():
    entries, files = compose(["+derived=${model.width}", "+secret_token=abc123"])
    assert entries["model.name"].source == "group:model=small"  # chosen by the defaults list
    assert entries["derived"].value == 64  # resolved
    assert entries["secret_token"].value != "abc123"  # redacted like every config value
    assert len(files) == 2


def test_rerun_overrides_in_hydras_grammar():
    assert hjob.hydra_value("a b") == '"a b"' and hjob.hydra_value(None) == "null"
    assert hjob.hydra_value({"k": [1, True]}) == "{k: [1, true]}"
    assert hjob.with_overrides(["model=small", "lr=0.1"], {"lr": 0.5}) == [
        "model=small",
        "++lr=0.5",
    ]
