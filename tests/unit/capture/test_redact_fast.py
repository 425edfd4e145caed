"""The fast paths of config capture and redaction (issue 17) record exactly what the slow ones
do: ``config.entries`` (numbers and texts under names that are no secret, inline), the memos of
``Rules`` (a name's kind, a text's redaction) and ``record.to_patch`` (plain values as they are).

The slow path is ``config.plain`` value by value with a fresh copy of the rules (empty memos),
compared byte for byte through msgpack: a bool is no int, -0.0 is no 0.0."""

from __future__ import annotations

import dataclasses
import enum
import math
import os
import random
from datetime import UTC, date, datetime, timedelta, timezone

import msgspec
import pytest

from runrec_cluster.capture import config as cfg
from runrec_cluster.capture import redact
from runrec_cluster.capture.redact import (
    BUILTIN,
    REDACTED,
    Rules,
    active_rules,
    flags,
    load_rules,
    redact_text,
    redact_value,
)
from runrec_cluster.errors import ConfigError
from runrec_cluster.record import ConfigEntry, Failure, RunState, to_patch

GH = "gh" + "p_" + "a1b2" * 9  # credential shapes, split so no scanner takes them for real ones
AWS = "AKIA" + "ABCDEFGHIJKLMNOP"
JWT = "ey" + "J" + "hbGciOiJIUzI1NiJ9" + ".eyJzdWIiOiIxMjM0In0" + ".abcdefghijkl"

KEYS = [
    "lr",
    "seed",
    "batch_size",
    "model",
    "password",  # strong: any value
    "db_password",
    "apiKey",
    "X-Api-Key",
    "AWS_SECRET_ACCESS_KEY",
    "token",  # weak: strings only
    "auth_key",
    "session_cookie",
    "max_tokens",  # ML names that merely contain a weak word
    "eos_token",
    "sort_key",
    "password_file",  # describes a secret, holds none
    "token_url",
    "pwd",  # a directory
    "corp_channel",  # secret by the configured rules below
    "door_pin",
    "session_token_id",  # not secret by the configured rules below
    "x",
    "",
]

TEXTS = [
    "",
    "adam",
    "value-3",
    "/data/imagenet/train/shard-0001.tar",
    "resnet50_pretrained_imagenet_v2_bs256",
    "0.001",
    "1e-3",
    "-7",
    "true",
    f"token {GH} here",
    GH,
    f"key {AWS}",
    JWT,
    "https://user:hunter2@host.example/x?token=abc123&page=2",
    "https://host.example/x?private_token=abcdef123456",
    "ssh://git@github.com/lab/p.git",
    "postgresql://admin:s3cret@db.internal:5432/exp",
    "Authorization: Bearer abcdefghijklmnop",
    "bearer abcdefghijklmnopq",
    "password=hunter2 next=1",
    'api_key: "quoted value"',
    "passwords: {db: hunter2} next=1",
    "name: [1,2] password=hunter2",
    "max_tokens=512",
    "id acme-0123456789abcdef ok",  # the configured value rule below
    "zz123456zz",
    "naïve façade ünïcode",  # not ASCII: through plain()
    "--password s3cr3t",
    "x" * 300,  # longer than the text memo keeps
    "a=" + GH + " " + "y" * 260,
]

NUMBERS = [
    0,
    1,
    -1,
    7,
    2**63 - 1,
    -(2**63),
    2**64 - 1,
    0.0,
    -0.0,
    1.5,
    0.001,
    float("inf"),
    float("-inf"),
    float("nan"),
    True,
    False,
    None,
]


def _value(rng: random.Random, depth: int = 0) -> object:
    roll = rng.random()
    if depth < 3 and roll < 0.12:
        return {rng.choice(KEYS): _value(rng, depth + 1) for _ in range(rng.randint(0, 4))}
    if depth < 3 and roll < 0.2:
        items = [_value(rng, depth + 1) for _ in range(rng.randint(0, 4))]
        return tuple(items) if rng.random() < 0.3 else items
    if roll < 0.6:
        return rng.choice(NUMBERS)
    return rng.choice(TEXTS)


def _corpus(seed: int, n: int) -> list[dict[str, object]]:
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        keys = rng.sample(KEYS, rng.randint(1, len(KEYS)))
        out.append({k: _value(rng) for k in keys})
    return out


def _rule_sets(tmp_path) -> list[Rules]:
    proj = tmp_path / "proj"
    proj.mkdir()
    (proj / "pyproject.toml").write_text(
        "[tool.runrec.redact]\n"
        'secret_names = ["^corp_", "pin$"]\n'
        'secret_values = ["acme-[0-9a-f]{16}", "zz[0-9]{6}zz"]\n'
        'not_secret = ["*_token_id", "session_cookie"]\n'
    )
    return [BUILTIN, load_rules(str(proj), {}), load_rules(str(tmp_path), {})]


def _fresh(rules: Rules) -> Rules:
    """The same rules with empty memos: every answer computed, none remembered."""
    return dataclasses.replace(rules)


def _slow_entries(values: dict, source: str, rules: Rules) -> dict[str, ConfigEntry]:
    return {
        k: ConfigEntry(value=cfg.plain(k, v, _fresh(rules)), source=source)
        for k, v in values.items()
    }


def _bytes(obj: object) -> bytes:
    return msgspec.msgpack.encode(obj)


def test_fresh_rules_start_with_empty_memos():
    r = _fresh(BUILTIN)
    assert r == BUILTIN and hash(r) == hash(BUILTIN)  # the memos are no fields
    assert r.kinds == {} and r._texts == {}
    r.kind("password")
    r.text("adam")
    assert r.kinds == {"password": "strong"} and r._texts == {"adam": "adam"}


def test_entries_record_what_plain_records_over_a_varied_corpus(tmp_path):
    corpus = _corpus(17, 400)
    for rules in _rule_sets(tmp_path):
        warm = _fresh(rules)  # one Rules for the whole corpus: its memos fill up and are used
        for values in corpus:
            slow = _slow_entries(values, "given", rules)
            for _ in range(2):  # cold memo, then warm
                fast = cfg.entries(values, "given", warm)
                assert list(fast) == list(slow)
                assert _bytes(fast) == _bytes(slow), values
                assert _bytes(to_patch(config=fast)) == _bytes(to_patch(config=slow))
        assert warm._texts  # the memo was used


def test_numbers_under_secret_names_follow_the_name_rule():
    r = _fresh(BUILTIN)
    got = cfg.entries(
        {"password": 1234, "db_password": 0.5, "token": 99, "apiKey": True, "auth_key": None},
        "given",
        r,
    )
    # a strong name hides any value but the empty ones; a weak name hides strings only
    assert {k: e.value for k, e in got.items()} == {
        "password": REDACTED,
        "db_password": REDACTED,
        "token": 99,
        "apiKey": True,
        "auth_key": None,
    }
    assert cfg.entries({"token": "abc", "token2": "abc"}, "given", r)["token"].value == REDACTED
    assert cfg.entries({"token": "0.001"}, "given", r)["token"].value == "0.001"  # a number


def test_types_survive_the_fast_path_exactly():
    r = _fresh(BUILTIN)
    got = cfg.entries({"a": True, "b": 1, "c": 1.0, "d": -0.0, "e": float("nan")}, "given", r)
    assert [type(e.value) for e in got.values()] == [bool, int, float, float, float]
    assert math.copysign(1.0, got["d"].value) == -1.0 and math.isnan(got["e"].value)


class _Str(str):
    pass


class _Int(int):
    pass


@pytest.mark.parametrize(
    "value",
    [
        2**64,  # too large for msgpack
        -(2**63) - 1,
        "lone \udcff surrogate",  # a path made of bytes that are not UTF-8
        object(),
        {"nested": [1, object()]},
    ],
)
def test_unstorable_values_are_refused_as_plain_refuses_them(value):
    with pytest.raises(ConfigError) as slow:
        cfg.plain("k", value, _fresh(BUILTIN))
    with pytest.raises(ConfigError) as fast:
        cfg.entries({"k": value}, "given", _fresh(BUILTIN))
    assert str(fast.value) == str(slow.value) and "'k'" in str(fast.value)


def test_a_key_that_is_no_string_is_refused():
    with pytest.raises(ConfigError, match="not a string"):
        cfg.entries({1: "x"}, "given")


def test_subclasses_of_str_and_int_take_the_slow_path_and_match_it():
    r = _fresh(BUILTIN)
    for v in (_Str("adam"), _Int(5)):  # plain() refuses them: so does entries(), in its words
        with pytest.raises(ConfigError) as slow:
            cfg.plain("k", v, _fresh(BUILTIN))
        with pytest.raises(ConfigError) as fast:
            cfg.entries({"k": v}, "given", r)
        assert str(fast.value) == str(slow.value)
    for v in (_Str("adam"), _Str(f"t {GH}")):  # redacted as text, never remembered
        assert redact_value("k", v, r) == redact_value("k", v, _fresh(BUILTIN))
        assert redact_text(v, r) == redact_text(v, _fresh(BUILTIN))
    assert redact_value("k", _Str(f"t {GH}"), r) == f"t {REDACTED}"
    assert r._texts == {}  # a subclass is never a memo key


@pytest.mark.parametrize("text", TEXTS)
def test_a_remembered_text_is_the_redaction_computed_afresh(tmp_path, text):
    for rules in _rule_sets(tmp_path):
        warm = _fresh(rules)
        first = warm.text(text)
        assert warm.text(text) == first == _fresh(rules).text(text)
        assert redact_text(text, warm) == first
        assert redact_value("note", text, warm) == redact_value("note", text, _fresh(rules))
        assert flags("note", text, warm) == (first != text)
        assert (text in warm._texts) == (len(text) <= redact._TEXT_MEMO_LEN)


def test_the_memos_are_bounded(monkeypatch):
    monkeypatch.setattr(redact, "_MEMO_MAX", 8)
    r = _fresh(BUILTIN)
    for i in range(50):
        assert r.text(f"v{i}") == f"v{i}"
        assert r.kind(f"k{i}") is None
    assert len(r._texts) <= 8 and len(r.kinds) <= 8
    assert r.text(f"see {GH}") == f"see {REDACTED}" and r.kind("password") == "strong"


def test_changed_rules_are_seen_at_once_not_through_an_old_memo(tmp_path, monkeypatch):
    """The memos live in a Rules object; active_rules gives a new one when the variables, the
    directory or (after RECHECK_S) the config files change."""
    for var in redact._REDACT_VARS:
        monkeypatch.delenv(var, raising=False)
    monkeypatch.chdir(tmp_path)
    values = {"corp_channel": "general", "note": "id acme-0123456789abcdef", "door_pin": 1234}
    plain_values = {k: e.value for k, e in cfg.entries(values, "given").items()}
    assert plain_values == values
    monkeypatch.setenv("RUNREC_REDACT_NAMES", '["^corp_", "pin$"]')
    got = {k: e.value for k, e in cfg.entries(values, "given").items()}
    assert got == {"corp_channel": REDACTED, "note": values["note"], "door_pin": REDACTED}
    monkeypatch.delenv("RUNREC_REDACT_NAMES")
    assert {k: e.value for k, e in cfg.entries(values, "given").items()} == values
    # a config file, found from the current directory, and its edits
    monkeypatch.setattr(redact, "RECHECK_S", 0.0)
    proj = tmp_path / "proj"
    proj.mkdir()
    monkeypatch.chdir(proj)
    (proj / "runrec.toml").write_text('[redact]\nsecret_values = ["acme-[0-9a-f]{16}"]\n')
    got = {k: e.value for k, e in cfg.entries(values, "given").items()}
    assert got == {"corp_channel": "general", "note": f"id {REDACTED}", "door_pin": 1234}
    (proj / "runrec.toml").write_text('[redact]\nsecret_names = ["^corp_"]\n# edited\n')
    got = {k: e.value for k, e in cfg.entries(values, "given").items()}
    assert got == {"corp_channel": REDACTED, "note": values["note"], "door_pin": 1234}
    os.remove(proj / "runrec.toml")
    assert {k: e.value for k, e in cfg.entries(values, "given").items()} == values


def test_function_config_looks_the_rules_up_once_and_records_the_same(monkeypatch):
    calls = []
    real = cfg.active_rules

    def counting() -> Rules:
        calls.append(1)
        return real()

    monkeypatch.setattr(cfg, "active_rules", counting)

    def train(lr, password, *args, model="adam", token=None, **extra):
        return lr

    got = cfg.function_config(train, (0.1, 1234, "a", f"x {GH}"), {"token": "t0k", "depth": 3})
    assert len(calls) == 1
    assert {k: (e.value, e.source) for k, e in got.items()} == {
        "lr": (0.1, "given"),
        "password": (REDACTED, "given"),
        "args": (["a", f"x {REDACTED}"], "given"),
        "model": ("adam", "default"),
        "token": (REDACTED, "given"),
        "depth": (3, "given"),
    }


def test_active_rules_is_the_same_object_while_nothing_changes(monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    assert active_rules() is active_rules()


# -- to_patch -------------------------------------------------------------------------------


class _Color(str, enum.Enum):
    RED = "red"


def _slow_patch(**fields: object) -> dict:
    return {
        k: msgspec.to_builtins(v, builtin_types=(datetime,))
        for k, v in fields.items()
        if v is not None
    }


def test_to_patch_gives_what_to_builtins_gives_for_every_kind_of_field():
    fields = {
        "s": "x",
        "i": 2**64 - 1,
        "neg": -5,
        "f": -0.0,
        "nan": float("nan"),
        "b": False,
        "none": None,
        "aware": datetime.now(UTC),
        "offset": datetime(2024, 1, 2, 3, 4, 5, tzinfo=timezone(timedelta(hours=3))),
        "naive": datetime(2024, 1, 2, 3, 4, 5),
        "day": date(2024, 1, 2),  # not a datetime: to_builtins makes it a string
        "state": RunState.SUCCEEDED,
        "enum": _Color.RED,
        "failure": Failure(cause="timeout", message="late"),
        "config": {"a": ConfigEntry(value=1, source="given")},
        "tags": {"t": "v"},
        "list": [1, "a", None],
        "tuple": (1, 2),
    }
    fast, slow = to_patch(**fields), _slow_patch(**fields)
    assert list(fast) == list(slow) and "none" not in fast
    assert _bytes(fast) == _bytes(slow)
    for k in fast:
        assert type(fast[k]) is type(slow[k]), k
    assert fast["state"] == "succeeded" and type(fast["state"]) is str
    assert fast["day"] == "2024-01-02"
    tags = {"t": "v"}
    assert to_patch(tags=tags)["tags"] is not tags  # a copy, as before
    for odd in ("a\udcffb", 2**70, -(2**70)):  # not storable: refused later by the encoder
        assert to_patch(x=odd)["x"] == _slow_patch(x=odd)["x"] == odd
