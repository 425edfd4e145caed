"""rerun.envs without uv: --with parsing, the cache key, the backend interpreter options."""

import pytest

from runrec_cluster.errors import RerunError
from runrec_cluster.rerun import envs


def test_parse_with_takes_exact_pins_only():
    assert envs.parse_with(["Six==1.17.0", "typing_extensions==4.12.2"]) == {
        "six": "1.17.0",
        "typing-extensions": "4.12.2",
    }
    for bad in ("six>=1", "six", "six[x]==1", "six==1==2"):
        with pytest.raises(RerunError, match="NAME==VERSION"):
            envs.parse_with([bad])


def _spec(install, python="3.11.2"):
    return envs.EnvSpec(python, "node rank 0", dict(install), {}, {}, {}, ["-e", "/x"], None, "")


def test_the_key_is_the_python_version_and_the_exact_set():
    a = _spec({"six": "1.16.0", "idna": "3.6"})
    assert a.key() == _spec({"idna": "3.6", "six": "1.16.0"}).key()  # order does not matter
    assert a.key() != _spec({"six": "1.17.0", "idna": "3.6"}).key()
    assert a.key() != _spec({"six": "1.16.0", "idna": "3.6"}, python="3.11.3").key()
    assert a.key() != _spec({"six": "1.16.0"}).key()


def test_interpreter_options_per_backend():
    opts, d = envs.interpreter_options("local", {"local_max_parallel": 2}, "/e/bin/python")
    assert opts == {"local_max_parallel": 2, "local_python": "/e/bin/python"}
    assert d[0].what == "options.local_python"
    opts, _ = envs.interpreter_options("slurm", {}, "/e/bin/python")
    assert opts["slurm_python"] == "/e/bin/python"
    renv = {"env_vars": {"A": "1"}}
    opts, _ = envs.interpreter_options("ray", {"ray_runtime_env": renv}, "/e/bin/python")
    assert opts["ray_runtime_env"] == {"env_vars": {"A": "1"}, "py_executable": "/e/bin/python"}
    with pytest.raises(RerunError, match="pip"):
        envs.interpreter_options("ray", {"ray_runtime_env": {"pip": ["x"]}}, "/e/bin/python")


def test_job_environ_puts_the_env_first_on_path():
    from runrec_cluster.record import RerunEnv

    e = envs.job_environ(RerunEnv(mode="recorded", dir="/e"), {"PATH": "/usr/bin"})
    assert e["PATH"] == "/e/bin:/usr/bin" and e["VIRTUAL_ENV"] == "/e"
    assert envs.job_environ(None, {"PATH": "/usr/bin"}) == {"PATH": "/usr/bin"}


def test_the_index_and_the_cache_directory_settings(tmp_path, monkeypatch):
    from runrec_cluster import settings
    from runrec_cluster.errors import ConfigError

    for v in ("RUNREC_PACKAGE_INDEX", "UV_INDEX_URL", "PIP_INDEX_URL", "RUNREC_ENVS_DIR"):
        monkeypatch.delenv(v, raising=False)
    d = tmp_path / "p"
    d.mkdir()
    assert settings.package_index(str(d)) == (None, "uv's default (PyPI)")
    monkeypatch.setenv("PIP_INDEX_URL", "https://pip.example/simple")
    assert settings.package_index(str(d))[0] == "https://pip.example/simple"
    monkeypatch.setenv("UV_INDEX_URL", "https://uv.example/simple")
    assert settings.package_index(str(d))[0] == "https://uv.example/simple"
    (d / "runrec.toml").write_text('package_index = "https://lab.example/simple"\nenvs_dir = "e"\n')
    assert settings.package_index(str(d)) == ("https://lab.example/simple", str(d / "runrec.toml"))
    assert settings.envs_dir("/store", str(d)) == str(d / "e")
    monkeypatch.setenv("RUNREC_PACKAGE_INDEX", "https://env.example/simple")
    assert settings.package_index(str(d))[0] == "https://env.example/simple"
    (d / "runrec.toml").write_text("package_index = 3\n")
    monkeypatch.delenv("RUNREC_PACKAGE_INDEX")
    with pytest.raises(ConfigError, match="package_index"):
        settings.package_index(str(d))
    assert settings.envs_dir("/store", str(tmp_path)) == "/store/envs"
