"""runrec_cluster.settings: the one reader of [tool.runrec] / runrec.toml / RUNREC_*."""

from __future__ import annotations

import pytest

from runrec_cluster import settings
from runrec_cluster.capture.hardware import hardware_classes
from runrec_cluster.capture.redact import load_rules
from runrec_cluster.errors import ConfigError
from runrec_cluster.store import default_store_path


@pytest.fixture(autouse=True)
def _no_store_env(monkeypatch):
    monkeypatch.delenv("RUNREC_STORE", raising=False)


def test_nearest_directory_with_either_file_decides(tmp_path):
    (tmp_path / "pyproject.toml").write_text('[tool.runrec]\nstore = "outer"\n')
    inner = tmp_path / "a" / "b"
    inner.mkdir(parents=True)
    (tmp_path / "a" / "runrec.toml").write_text("# nothing set here\n")
    assert settings.find_config_files(str(inner)) == [str(tmp_path / "a" / "runrec.toml")]
    # the nearest directory decides, even when it sets nothing: no store from the outer file
    assert settings.store_location(str(inner)) is None
    assert default_store_path(str(inner)) == str(inner / "runrec-store")


def test_runrec_toml_wins_over_pyproject_for_the_store(tmp_path):
    (tmp_path / "pyproject.toml").write_text('[tool.runrec]\nstore = "from-pyproject"\n')
    assert default_store_path(str(tmp_path)) == str(tmp_path / "from-pyproject")
    (tmp_path / "runrec.toml").write_text('store = "from-runrec-toml"\n')
    assert settings.find_config_files(str(tmp_path)) == [
        str(tmp_path / "runrec.toml"),
        str(tmp_path / "pyproject.toml"),
    ]
    assert default_store_path(str(tmp_path)) == str(tmp_path / "from-runrec-toml")
    (tmp_path / "runrec.toml").write_text('[tool.runrec]\nstore = "prefixed"\n')
    assert default_store_path(str(tmp_path)) == str(tmp_path / "prefixed")


def test_broken_or_wrong_store_setting_is_a_config_error_naming_the_file(tmp_path):
    pp = tmp_path / "pyproject.toml"
    pp.write_text("[tool.runrec\n")
    with pytest.raises(ConfigError, match="Fix the TOML") as e:
        default_store_path(str(tmp_path))
    assert str(pp) in str(e.value)
    pp.write_text("[tool.runrec]\nstore = 3\n")
    with pytest.raises(ConfigError, match="not a directory path") as e:
        default_store_path(str(tmp_path))
    assert str(pp) in str(e.value)


def test_environment_wins_over_the_files(tmp_path, monkeypatch):
    (tmp_path / "pyproject.toml").write_text("[tool.runrec\n")  # not even read
    monkeypatch.setenv("RUNREC_STORE", str(tmp_path / "env"))
    assert default_store_path(str(tmp_path)) == str(tmp_path / "env")


def test_hardware_and_redact_read_through_the_same_rules(tmp_path):
    (tmp_path / "pyproject.toml").write_text(
        '[tool.runrec.hardware.a]\nexpect = { cpu_model = "x" }\n'
        '[tool.runrec.redact]\nsecret_names = ["^corp_"]\n'
    )
    (tmp_path / "runrec.toml").write_text(
        '[hardware.a]\nexpect = { cpu_model = "y" }\n[redact]\nnot_secret = ["*_token"]\n'
    )
    hw = hardware_classes(str(tmp_path))
    assert hw["a"].expect == {"cpu_model": "y"} and hw["a"].source == str(tmp_path / "runrec.toml")
    rules = load_rules(str(tmp_path), {})
    assert rules.sources == (str(tmp_path / "runrec.toml"), str(tmp_path / "pyproject.toml"))
    (tmp_path / "runrec.toml").write_text("hardware = 3\n")
    with pytest.raises(ConfigError, match="must be a table"):
        hardware_classes(str(tmp_path))


def test_redact_variables():
    env = {"RUNREC_REDACT_NOT_SECRET": "a, b", "RUNREC_REDACT_VALUES": '["x", "y"]'}
    assert settings.redact_sources("/", env)[-2:] == [
        ("$RUNREC_REDACT_VALUES", {"secret_values": ["x", "y"]}),
        ("$RUNREC_REDACT_NOT_SECRET", {"not_secret": ["a", "b"]}),
    ]
    with pytest.raises(ConfigError, match="RUNREC_REDACT_NAMES"):
        settings.redact_sources("/", {"RUNREC_REDACT_NAMES": "[1]"})
