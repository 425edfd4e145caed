"""Determinism facts (capture/determinism.py) and how diff compares them (views/diff.py)."""

import types

from runrec_cluster.capture import determinism
from runrec_cluster.record import NodeInfo
from runrec_cluster.views import diff


def fake_torch(deterministic=True, benchmark=False, threads=3):
    cudnn = types.SimpleNamespace(deterministic=deterministic, benchmark=benchmark, allow_tf32=True)
    return types.SimpleNamespace(
        backends=types.SimpleNamespace(
            cudnn=cudnn, cuda=types.SimpleNamespace(matmul=types.SimpleNamespace(allow_tf32=False))
        ),
        are_deterministic_algorithms_enabled=lambda: True,
        is_deterministic_algorithms_warn_only_enabled=lambda: False,
        get_num_threads=lambda: threads,
        # an old torch without get_num_interop_threads: unknown, with the reason
    )


def test_every_watched_variable_is_recorded_set_or_unset():
    d = determinism.capture({"PYTHONHASHSEED": "0", "HOME": "/root"}, command=False, modules={})
    assert set(d.env) == set(determinism.ENV_VARS)
    assert d.env["PYTHONHASHSEED"] == "0" and d.env["OMP_NUM_THREADS"] is None
    assert "HOME" not in d.env


def test_library_settings_are_read_only_when_loaded_and_never_guessed():
    flags = types.SimpleNamespace(hash_randomization=0)
    d = determinism.capture({}, command=False, modules={"torch": fake_torch()}, flags=flags)
    assert d.settings["torch.backends.cudnn.deterministic"] is True
    assert d.settings["torch.backends.cudnn.benchmark"] is False
    assert d.settings["torch.deterministic_algorithms"] is True
    assert d.settings["torch.num_threads"] == 3
    assert d.settings["python.hash_randomization"] is False
    assert "AttributeError" in d.unknown["torch.num_interop_threads"]
    assert "torch.num_interop_threads" not in d.settings
    assert "threadpoolctl not loaded" in d.unknown["threadpoolctl"]
    none = determinism.capture({}, command=False, modules={})
    assert not any(k.startswith("torch.") for k in none.settings)
    assert "torch not loaded" in none.unknown["torch"]


def test_threadpools_as_threadpoolctl_sees_them():
    tpc = types.SimpleNamespace(
        threadpool_info=lambda: [
            {"internal_api": "openblas", "filepath": "/x/libopenblas.so.0", "num_threads": 2}
        ]
    )
    d = determinism.capture({}, command=False, modules={"threadpoolctl": tpc})
    assert d.settings["threads.openblas.libopenblas.so.0"] == 2


def test_a_command_run_says_what_cannot_be_known():
    d = determinism.capture({"OMP_NUM_THREADS": "4"}, command=True, modules={"torch": 1})
    assert d.env["OMP_NUM_THREADS"] == "4"
    assert d.settings == {}
    assert set(d.unknown) == {"torch", "threadpoolctl", "python"}
    assert all("command's own process" in v for v in d.unknown.values())
    assert d.env_source == determinism.COMMAND_ENV


def test_diff_compares_them_and_fills_in_unknown_settings():
    a = NodeInfo(
        hostname="h",
        determinism=determinism.capture(
            {"OMP_NUM_THREADS": "1"}, command=False, modules={"torch": fake_torch()}
        ),
    )
    b = NodeInfo(
        hostname="h",
        determinism=determinism.capture({"OMP_NUM_THREADS": "8"}, command=False, modules={}),
    )
    fa, fb = diff.determinism_facts(a), diff.determinism_facts(b)
    diff.fill_unknown(fa, fb)
    assert fa["determinism.env.OMP_NUM_THREADS"] == "1"
    assert fb["determinism.env.OMP_NUM_THREADS"] == "8"
    assert fb["determinism.torch.backends.cudnn.deterministic"].startswith(
        "unknown: torch not loaded"
    )
    assert diff.determinism_facts(NodeInfo(hostname="h")) == {"determinism": "not recorded"}
