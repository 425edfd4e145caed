import os

import pytest

import runrec_cluster as rr
from runrec_cluster.capture import config as cfg
from runrec_cluster.capture.data import Dataset, hash_path
from runrec_cluster.capture.env import package_drift, packages, selected_env
from runrec_cluster.capture.inputs import hash_input
from runrec_cluster.capture.node import capture_node, gpu_info, runtime_libs
from runrec_cluster.capture.redact import (
    REDACTED,
    redact_argv,
    redact_text,
    redact_value,
    strip_url_credentials,
)
from runrec_cluster.errors import ConfigError, DatasetError


def test_file_hash_is_blake3_and_sha256_on_request(tmp_path, monkeypatch):
    import hashlib

    import blake3

    from runrec_cluster.capture import data

    monkeypatch.setattr(data, "BIG_CHUNK", 1 << 20)  # the mapped, chunked, threaded path
    p = tmp_path / "a.bin"
    p.write_bytes(os.urandom(3 * 1024 * 1024 + 7))
    seen = []
    res, _ = hash_path(str(p), progress=lambda done, total: seen.append((done, total)))
    assert res.digest == "blake3:" + blake3.blake3(p.read_bytes()).hexdigest()
    assert res.size == p.stat().st_size and res.file_count == 1 and not res.is_dir
    assert len(seen) == 4 and seen[-1] == (res.size, res.size)
    res, _ = hash_path(str(p), algo="sha256")
    assert res.digest == "sha256:" + hashlib.sha256(p.read_bytes()).hexdigest()
    small = tmp_path / "s.txt"
    small.write_bytes(b"hello\n")
    assert hash_path(str(small))[0].digest == "blake3:" + blake3.blake3(b"hello\n").hexdigest()
    # a recorded digest names its algorithm; re-checks use it
    assert data.algo_of(res.digest) == "sha256" and data.algo_of("blake3-tree:ab") == "blake3"
    with pytest.raises(rr.errors.DatasetError, match="not a content digest"):
        data.algo_of("md5:abc")


def test_directory_hashes_as_a_tree_and_cache_skips_unchanged(tmp_path):
    d = tmp_path / "ds"
    (d / "x").mkdir(parents=True)
    for i in range(5):
        (d / "x" / f"{i}.txt").write_text(f"row {i}\n" * 100)
    r1, cache = hash_path(str(d))
    assert r1.is_dir and r1.file_count == 5 and r1.digest.startswith("blake3-tree:")
    r2, cache2 = hash_path(str(d), cache=cache)
    assert r2.digest == r1.digest and r2.hashed_bytes == 0
    # the cache holds digests of one algorithm: another one hashes again
    r_sha, _ = hash_path(str(d), cache=cache, algo="sha256")
    assert r_sha.digest.startswith("sha256-tree:") and r_sha.hashed_bytes == r1.size
    (d / "x" / "3.txt").write_text("changed\n")
    r3, _ = hash_path(str(d), cache=cache2)
    assert r3.digest != r1.digest and r3.hashed_bytes == len("changed\n")
    # a rename changes the identity, even with identical bytes
    os.rename(d / "x" / "0.txt", d / "x" / "9.txt")
    r4, _ = hash_path(str(d))
    assert r4.digest != r3.digest


def test_missing_dataset_is_a_clear_error(tmp_path):
    with pytest.raises(DatasetError, match="does not exist"):
        hash_path(str(tmp_path / "nope.csv"))


def test_hash_input_uses_the_store_cache_and_progress(tmp_path, store):
    p = tmp_path / "d.csv"
    p.write_bytes(b"a,b\n" * 100000)
    seen = []
    ref = hash_input(store, Dataset(p, version="v1"), progress=lambda d, t: seen.append((d, t)))
    assert ref.version == "v1" and seen and seen[-1][0] == seen[-1][1] == p.stat().st_size
    seen.clear()
    assert hash_input(store, Dataset(p), progress=lambda d, t: seen.append(d)).digest == ref.digest
    assert seen == []  # cache hit: nothing read


def test_env_capture_lists_packages_and_redacts():
    pk = packages()
    assert "msgspec" in pk and "runrec-cluster" in pk
    env = selected_env(
        {
            "CUDA_VISIBLE_DEVICES": "0",
            "HF_TOKEN": "hf_abcdefghijklmnopqrstuvwxyzABCDEFGH",
            "HOME": "/root",
            "RAY_ADDRESS": "http://u:p@host:1",
        }
    )
    assert env["CUDA_VISIBLE_DEVICES"] == "0" and env["HF_TOKEN"] == REDACTED and "HOME" not in env
    assert "u:p" not in env["RAY_ADDRESS"]
    assert package_drift({"a": "1", "b": "2"}, {"a": "1", "b": "3", "c": "1"}) == {
        "b": ["2", "3"],
        "c": [None, "1"],
    }


def test_redaction_rules():
    assert redact_value("password", "hunter2") == REDACTED
    assert redact_value("lr", 0.1) == 0.1
    assert redact_value("author", "alice") == "alice"
    assert redact_value("db", {"user": "a", "password": "p"}) == {"user": "a", "password": REDACTED}
    assert REDACTED in redact_text("key AKIAABCDEFGHIJKLMNOP here")
    assert "ghp_" not in redact_text("token ghp_0123456789abcdefghijklmnopqrstuvwxyz")
    assert redact_argv(["train", "--api-key", "s3cr3t", "--token=abc", "--lr", "0.1"]) == [
        "train",
        "--api-key",
        REDACTED,
        f"--token={REDACTED}",
        "--lr",
        "0.1",
    ]
    assert strip_url_credentials("https://u:p@host/x") == "https://host/x"
    assert strip_url_credentials("git@github.com:o/r.git") == "git@github.com:o/r.git"


def test_config_provenance_and_refusal():
    def f(lr, epochs=3, *rest, opt="adam", **extra):
        pass

    conf = cfg.function_config(f, (0.1,), {"opt": "sgd", "momentum": 0.9})
    assert {k: e.source for k, e in conf.items()} == {
        "lr": "given",
        "epochs": "default",
        "opt": "given",
        "momentum": "given",
    }
    with pytest.raises(ConfigError, match="'bad'"):
        cfg.function_config(f, (0.1,), {"bad": object()})
    with pytest.raises(ConfigError, match="do not match"):
        cfg.function_config(f, (), {})
    c = cfg.command_config(
        ["python", "t.py", "--lr", "0.1", "--name=x", "--flag", "--password", "p"]
    )
    assert (
        c["lr"].value == 0.1
        and c["name"].value == "x"
        and c["flag"].value is True
        and c["password"].value == REDACTED
    )


def test_node_capture_without_a_driver_is_recorded():
    n = capture_node()
    assert n.hostname and n.cpu_count >= 1 and n.memory_total_mb > 0
    if not os.path.exists("/proc/driver/nvidia"):
        assert n.gpu_status.startswith(("no NVIDIA driver", "nvidia-ml-py")) and n.gpus == []


class FakeNVML:
    """A stand-in for pynvml (unit tests only): one A100-like device."""

    class NVMLError(Exception):
        pass

    def nvmlInit(self):
        pass

    def nvmlShutdown(self):
        pass

    def nvmlSystemGetDriverVersion(self):
        return b"550.54.15"

    def nvmlSystemGetCudaDriverVersion_v2(self):
        return 12040

    def nvmlDeviceGetCount(self):
        return 1

    def nvmlDeviceGetHandleByIndex(self, i):
        return i

    def nvmlDeviceGetName(self, h):
        return "NVIDIA A100-SXM4-80GB"

    def nvmlDeviceGetUUID(self, h):
        return "GPU-1234"

    def nvmlDeviceGetCudaComputeCapability(self, h):
        return (8, 0)

    def nvmlDeviceGetMigMode(self, h):
        raise self.NVMLError("Not Supported")

    def nvmlDeviceGetMemoryInfo(self, h):
        class M:
            total = 80 * 1024**3

        return M()

    def nvmlDeviceGetPciInfo(self, h):
        class P:
            busId = b"00000000:07:00.0"

        return P()


def test_nvml_parsing_with_a_fake():
    g = gpu_info(FakeNVML())
    assert (
        g["nvidia_driver"] == "550.54.15" and g["cuda_driver"] == "12.4" and g["gpu_status"] == "ok"
    )
    gpu = g["gpus"][0]
    assert (gpu.name, gpu.uuid, gpu.compute_capability, gpu.mig_mode, gpu.memory_total_mb) == (
        "NVIDIA A100-SXM4-80GB",
        "GPU-1234",
        "8.0",
        "not supported",
        81920,
    )


def test_nvml_init_failure_is_a_status():
    class NoDriver(FakeNVML):
        def nvmlInit(self):
            raise self.NVMLError("Driver Not Loaded")

    assert gpu_info(NoDriver())["gpu_status"].startswith("no NVIDIA driver")


def test_runtime_libs_from_mapped_libraries(tmp_path):
    maps = tmp_path / "maps"
    maps.write_text(
        "7f00-7f01 r-xp 0 08:01 1 /usr/local/cuda/lib64/libcudart.so.12.4.127\n"
        "7f02-7f03 r-xp 0 08:01 2 /opt/lib/libcudnn.so.9.1.0\n"
        "7f04-7f05 r-xp 0 08:01 3 /opt/lib/libnccl.so.2.21.5\n"
        "7f06-7f07 r-xp 0 08:01 4 /usr/lib/libc.so.6\n"
    )
    r = runtime_libs(str(maps))
    assert (r.cuda_runtime, r.cudnn, r.nccl) == ("12.4.127", "9.1.0", "2.21.5")
    assert len(r.loaded_libraries) == 3


def test_vendored_paths_are_not_installed_packages(tmp_path, monkeypatch):
    import site
    import sys

    sp = site.getsitepackages()[0]
    vendored = os.path.join(sp, "somepkg", "thirdparty_files")
    before = packages()
    monkeypatch.setattr(sys, "path", [*sys.path, vendored])
    assert packages() == before


def test_package_list_is_remembered_until_a_distribution_is_installed(tmp_path, monkeypatch):
    import time

    from runrec_cluster.capture import env

    site = tmp_path / "site"
    site.mkdir()
    monkeypatch.syspath_prepend(str(site))
    first = packages()
    assert "fake-dist" not in first
    calls = []
    real = env._list_packages
    monkeypatch.setattr(env, "_list_packages", lambda p: calls.append(1) or real(p))
    assert packages() == first and calls == []  # nothing changed: not listed again
    time.sleep(0.01)  # a later modification time, also on coarse file systems
    info = site / "fake_dist-1.2.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: fake-dist\nVersion: 1.2\n")
    os.utime(site, None)
    got = packages()
    assert calls == [1] and got["fake-dist"] == "1.2"


@pytest.mark.parametrize(
    "text, expected",
    [
        # an empty list or map has nothing to hide, and the text keeps its shape
        ("exclude_keys: []", "exclude_keys: []"),
        ("secret_keys: {}", "secret_keys: {}"),
        # a secret-named key with a bracketed value on one line: the whole value is hidden
        ("api_key: [abc, def]", "api_key: [redacted]"),
        ("passwords: {db: hunter2} next=1", "passwords: [redacted] next=1"),
        # a bracketed value of a harmless key is skipped, the pair after it still found
        ("name: [1,2] password=hunter2", "name: [1,2] password=[redacted]"),
    ],
)
def test_redact_text_handles_bracketed_values(text, expected):
    assert redact_text(text) == expected
