"""Config files and environment variables as config sources (capture/config_sources.py): real
files in YAML, TOML and JSON, parsed, flattened, merged by precedence, hashed; clear errors."""

from __future__ import annotations

import sys

import blake3
import pytest

import runrec_cluster as rr
from runrec_cluster.capture import config_sources as cs
from runrec_cluster.errors import ConfigError
from runrec_cluster.record import ConfigEntry

YAML = "lr: 0.1\nmodel:\n  depth: 4\n  layers: [64, 32]\nname: base\n"
TOML = 'lr = 0.1\nname = "base"\n\n[model]\ndepth = 4\nlayers = [64, 32]\n'
JSON = '{"lr": 0.1, "model": {"depth": 4, "layers": [64, 32]}, "name": "base"}'
FLAT = {"lr": 0.1, "model.depth": 4, "model.layers": [64, 32], "name": "base"}


@pytest.mark.parametrize(
    ("ext", "text"), [(".yaml", YAML), (".yml", YAML), (".toml", TOML), (".json", JSON)]
)
def test_each_format_parses_and_flattens_the_same(tmp_path, ext, text):
    p = tmp_path / f"c{ext}"
    p.write_text(text)
    _, doc = cs.read_config_file(str(p))
    assert cs.flatten(doc, str(p)) == FLAT


def test_flatten_keeps_lists_and_empty_tables():
    assert cs.flatten({"a": {"b": {"c": 1}}, "e": {}, "l": [{"x": 1}]}, "f") == {
        "a.b.c": 1,
        "e": {},
        "l": [{"x": 1}],
    }


def test_resolve_hashes_the_file_as_an_input(store, tmp_path):
    p = tmp_path / "c.toml"
    p.write_text(TOML)
    res = cs.resolve([rr.ConfigFile(p)], store)
    (ref,) = res.inputs
    data = p.read_bytes()
    assert ref.digest == "blake3:" + blake3.blake3(data).hexdigest()
    assert ref.role == "config" and ref.kind == "dataset" and ref.size == len(data)
    assert ref.path == str(p)
    src = f"file:{p}"
    assert res.entries == {k: ConfigEntry(value=v, source=src) for k, v in FLAT.items()}


def test_later_files_win_then_env(store, tmp_path):
    a = tmp_path / "a.yaml"
    a.write_text("lr: 0.1\nepochs: 3\nmodel:\n  depth: 4\n  width: 8\nopt: {name: sgd}\n")
    b = tmp_path / "b.json"
    b.write_text('{"lr": 0.2, "model": {"depth": 6}, "opt": "adam"}')
    env = {"RR_T_EPOCHS": "9", "RR_T_WIDTH": "16"}
    res = cs.resolve(
        [
            rr.ConfigFile(a),
            rr.ConfigFile(b),
            rr.ConfigEnv("RR_T_EPOCHS", key="epochs", type=int),
            rr.ConfigEnv("RR_T_WIDTH", key="model.width"),
        ],
        store,
        environ=env,
    )
    fa, fb = f"file:{a}", f"file:{b}"
    assert res.entries == {
        "lr": ConfigEntry(value=0.2, source=fb),
        "model.depth": ConfigEntry(value=6, source=fb),
        "opt": ConfigEntry(value="adam", source=fb),  # b's scalar replaced a's table
        "epochs": ConfigEntry(value=9, source="env:RR_T_EPOCHS"),
        "model.width": ConfigEntry(value=16, source="env:RR_T_WIDTH"),
    }
    assert "opt.name" not in res.entries
    assert res.values == {"lr": 0.2, "epochs": 9, "model": {"depth": 6, "width": 16}, "opt": "adam"}
    assert [i.path for i in res.inputs] == [str(a), str(b)]
    assert fa  # a is still an input, though none of its keys survived as its own


def test_bind_precedence_default_file_env_given(store, tmp_path):
    def train(lr=0.01, epochs=1, batch=32, seed=0, *, model=None):
        return None

    f = tmp_path / "c.toml"
    f.write_text("lr = 0.1\nepochs = 5\nbatch = 64\nextra = 'x'\n[model]\ndepth = 3\n")
    res = cs.resolve(
        [rr.ConfigFile(f), rr.ConfigEnv("RR_T_EPOCHS", key="epochs", type=int)],
        store,
        environ={"RR_T_EPOCHS": "7"},
    )
    kwargs, entries = res.bind(train, (), {"batch": 128})
    src = f"file:{f}"
    assert kwargs == {"batch": 128, "lr": 0.1, "epochs": 7, "model": {"depth": 3}}
    assert entries == {
        "seed": ConfigEntry(value=0, source="default"),
        "lr": ConfigEntry(value=0.1, source=src),
        "epochs": ConfigEntry(value=7, source="env:RR_T_EPOCHS"),
        "batch": ConfigEntry(value=128, source="given"),
        "model.depth": ConfigEntry(value=3, source=src),
        "extra": ConfigEntry(value="x", source=src),  # not a parameter: recorded, not passed
    }


def test_bind_positional_given_and_varkw(store, tmp_path):
    def f(lr, **rest):
        return None

    p = tmp_path / "c.json"
    p.write_text('{"lr": 0.5, "depth": 2}')
    res = cs.resolve([str(p)], store)
    kwargs, entries = res.bind(f, (0.9,), {})
    assert kwargs == {"depth": 2}  # lr is given positionally; **rest takes the rest
    assert entries["lr"] == ConfigEntry(value=0.9, source="given")
    assert entries["depth"] == ConfigEntry(value=2, source=f"file:{p}")


def test_command_config_given_wins(store, tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text("lr: 0.1\nepochs: 3\n")
    res = cs.resolve([rr.ConfigFile(p)], store)
    out = res.command_config({"lr": ConfigEntry(value=0.5, source="given")})
    assert out == {
        "lr": ConfigEntry(value=0.5, source="given"),
        "epochs": ConfigEntry(value=3, source=f"file:{p}"),
    }


def test_env_values_are_redacted(store):
    env = {"DB_PASSWORD": "Hunter2Hunter2", "RR_T_URL": "postgresql://bob:Hunter2Hunter2@db/x"}
    res = cs.resolve(
        [rr.ConfigEnv("DB_PASSWORD", key="db"), rr.ConfigEnv("RR_T_URL", key="url")],
        store,
        environ=env,
    )
    assert "Hunter2Hunter2" not in repr(res.entries)
    assert res.entries["db"].source == "env:DB_PASSWORD"
    assert res.values["db"] == "Hunter2Hunter2"  # the call still gets the real value


def test_env_unset_default_and_bad_type(store):
    with pytest.raises(ConfigError, match=r"RR_T_MISSING .*config key 'lr'.* is not set"):
        cs.resolve([rr.ConfigEnv("RR_T_MISSING", key="lr")], store, environ={})
    res = cs.resolve([rr.ConfigEnv("RR_T_MISSING", key="lr", default=0.3)], store, environ={})
    assert res.entries["lr"] == ConfigEntry(value=0.3, source="default")
    with pytest.raises(ConfigError, match=r"RR_T_LR='fast'.*not a valid float"):
        cs.resolve(
            [rr.ConfigEnv("RR_T_LR", key="lr", type=float)], store, environ={"RR_T_LR": "fast"}
        )
    res = cs.resolve([rr.ConfigEnv("RR_T_N")], store, environ={"RR_T_N": "12"})
    assert res.entries["rr_t_n"] == ConfigEntry(value=12, source="env:RR_T_N")
    with pytest.raises(ConfigError, match="not an environment variable name"):
        rr.ConfigEnv("NOT-A-NAME")


def test_missing_file(store, tmp_path):
    with pytest.raises(ConfigError) as e:
        cs.resolve([rr.ConfigFile(tmp_path / "nope.yaml")], store)
    assert str(tmp_path / "nope.yaml") in str(e.value) and "does not exist" in str(e.value)


@pytest.mark.parametrize(
    ("name", "text", "fmt", "line"),
    [
        ("bad.toml", "lr = 0.1\nepochs = = 3\n", "TOML", 2),
        ("bad.json", '{\n"lr": 0.1,\n"epochs": }\n', "JSON", 3),
        ("bad.yaml", "lr: 0.1\nmodel:\n  depth: [1, 2\n", "YAML", None),
    ],
)
def test_unparseable_file_names_file_and_line(store, tmp_path, name, text, fmt, line):
    p = tmp_path / name
    p.write_text(text)
    with pytest.raises(ConfigError) as e:
        cs.resolve([rr.ConfigFile(p)], store)
    msg = str(e.value)
    assert str(p) in msg and f"not valid {fmt}" in msg and "Fix the file" in msg
    if line:
        assert f"at line {line}" in msg
    else:
        assert "at line " in msg


@pytest.mark.parametrize(
    ("name", "text", "got"),
    [
        ("list.json", "[1, 2]", "a list"),
        ("scalar.yaml", "42\n", "a int"),
        ("empty.yaml", "", "empty"),
    ],
)
def test_top_level_must_be_a_mapping(store, tmp_path, name, text, got):
    p = tmp_path / name
    p.write_text(text)
    with pytest.raises(ConfigError, match=rf"{p}: the top level is {got}, not a mapping"):
        cs.resolve([rr.ConfigFile(p)], store)


def test_unknown_extension_and_bad_keys(store, tmp_path):
    p = tmp_path / "c.ini"
    p.write_text("[a]\nb=1\n")
    with pytest.raises(ConfigError, match=r"unknown extension '\.ini'"):
        cs.resolve([rr.ConfigFile(p)], store)
    y = tmp_path / "k.yaml"
    y.write_text("1: one\n")
    with pytest.raises(ConfigError, match=r"key 1 is not a string"):
        cs.resolve([rr.ConfigFile(y)], store)
    j = tmp_path / "dup.json"
    j.write_text('{"a.b": 1, "a": {"b": 2}}')
    with pytest.raises(ConfigError, match=r"key 'a\.b' is set twice"):
        cs.resolve([rr.ConfigFile(j)], store)


def test_yaml_without_pyyaml_is_a_clear_error(store, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "yaml", None)  # import yaml -> ImportError
    p = tmp_path / "c.yaml"
    p.write_text("lr: 1\n")
    with pytest.raises(ConfigError, match=r"needs PyYAML.*pip install 'runrec-cluster\[yaml\]'"):
        cs.resolve([rr.ConfigFile(p)], store)


def test_not_a_source(store):
    with pytest.raises(ConfigError, match="rr.ConfigFile"):
        cs.resolve([42], store)  # type: ignore[list-item]
