"""capture/withhold.py: which argument values are kept out of the store's pickled call, how
they come back in the job, and the owner-only file they wait in."""

from __future__ import annotations

import collections
import dataclasses
import os
import stat

import cloudpickle
import pytest

from runrec_cluster import settings
from runrec_cluster.capture import withhold
from runrec_cluster.capture.redact import flags, load_rules
from runrec_cluster.errors import ConfigError, SecretsUnavailable
from runrec_cluster.record import Entrypoint

DSN = "postgresql://bob:Hunter2Hunter2@db/x"
GH = "ghp_" + "a1" * 18  # a GitHub token's shape


@dataclasses.dataclass
class Opts:
    url: str
    token: str
    n: int = 3


Pair = collections.namedtuple("Pair", "user password")


def fn(dsn, conn, *rest, opts=None, **extra):
    return dsn, conn, rest, opts, extra


def test_flags_follows_the_config_views_rules():
    assert flags("dsn", DSN) and flags("notes", f"use {GH}") and flags("password", 1234)
    assert flags("api_key", "abc") and not flags("max_tokens", 5) and not flags("eos_token", "</s>")
    assert not flags("sort_key", "length") and not flags("lr", 0.1) and not flags("password", "")
    assert not flags("commit", "a" * 40)


def test_flagged_values_become_placeholders_and_come_back_in_the_job():
    conn = {"host": "db", "password": "pw-Secret1", "ports": [1, 2]}
    opts = Opts("https://u:Pass9word@h/x", "tok-Secret2")
    args = (DSN, conn, "plain", GH, Pair("bob", "https://u:Pair3Secret@h"))
    kwargs = {"opts": opts, "api_key": "k-Secret4", "max_tokens": 5, "password": 1234}
    a, k, values = withhold.withhold_call(fn, args, kwargs)
    assert values == {
        "dsn": DSN,
        "conn.password": "pw-Secret1",
        "rest[1]": GH,
        "rest[2][1]": "https://u:Pair3Secret@h",  # a namedtuple is a tuple, as in the config
        "opts.url": "https://u:Pass9word@h/x",
        "opts.token": "tok-Secret2",
        "api_key": "k-Secret4",
        "password": 1234,
    }
    # the caller's objects are never changed; untouched parts are the same objects
    assert conn["password"] == "pw-Secret1" and opts.token == "tok-Secret2"
    assert a[2] == "plain" and a[1]["ports"] is conn["ports"] and k["max_tokens"] == 5
    assert isinstance(a[4], Pair) and a[4].user == "bob"
    blob = cloudpickle.dumps((fn, a, k))
    for v in ("Hunter2Hunter2", "pw-Secret1", GH, "Pair3Secret", "Pass9word", "k-Secret4"):
        assert v.encode() not in blob
    # outside a job the placeholders stay placeholders (reading a call needs no secret)
    _, a0, k0 = cloudpickle.loads(blob)
    assert a0[0] == withhold.Withheld("dsn") and "withheld" in repr(k0["api_key"])
    # in the job they are the values again, deep inside any object
    with withhold.provided(values):
        _, a1, k1 = cloudpickle.loads(blob)
    assert a1 == args and k1 == kwargs


def test_a_value_the_job_was_not_given_is_a_clear_error():
    a, k, _ = withhold.withhold_call(fn, (DSN, {}), {})
    blob = cloudpickle.dumps((fn, a, k))
    with withhold.provided({}), pytest.raises(SecretsUnavailable, match="RUNREC_SECRET_DSN"):
        cloudpickle.loads(blob)


def test_containers_that_cannot_be_copied_go_whole_and_cycles_end():
    class Tup(tuple):
        pass

    loop: list = ["x"]
    loop.append(loop)
    a, k, values = withhold.withhold_call(
        fn, (Tup([DSN, "y"]), loop), {"tags": frozenset({GH, "z"})}
    )
    assert values["dsn"] == Tup([DSN, "y"]) and "dsn[0]" not in values
    assert values["tags"] == frozenset({GH, "z"}) and a[1] is loop


def test_without_a_signature_names_are_arg0_arg1():
    a, k, values = withhold.withhold_call(max, (DSN, "b"), {})
    assert values == {"arg0": DSN}


def test_configured_rules_apply(tmp_path):
    (tmp_path / "runrec.toml").write_text('[redact]\nsecret_names = ["^corp_"]\n')
    rules = load_rules(str(tmp_path), {})
    _, k, values = withhold.withhold_call(fn, (1, 2), {"corp_id": "c-1"}, rules)
    assert values == {"corp_id": "c-1"}


def test_overrides_are_withheld_under_their_own_paths():
    out, values = withhold.withhold_mapping(withhold.SET_PREFIX, {"dsn": DSN, "lr": 0.1})
    assert out == {"dsn": withhold.Withheld("--set dsn"), "lr": 0.1}
    assert values == {"--set dsn": DSN}
    assert withhold.env_var("--set dsn") == "RUNREC_SECRET_DSN"
    assert withhold.env_var("conn.password") == "RUNREC_SECRET_CONN_PASSWORD"
    assert withhold.env_var("rest[1]") == "RUNREC_SECRET_REST_1"
    assert withhold.top_key("conn.password") == "conn" and withhold.top_key("rest[1]") == "rest"


def test_the_file_is_owner_only_outside_the_store_and_read_back(tmp_path, monkeypatch):
    monkeypatch.setattr(os, "umask", os.umask)  # keep the test's umask whatever it is
    old = os.umask(0o002)
    try:
        d = str(tmp_path / "cache" / "secrets")
        p = withhold.write_secrets(d, "run1", {"dsn": DSN, "obj": Opts("a", "b"), "n": 7})
    finally:
        os.umask(old)
    assert stat.S_IMODE(os.stat(p).st_mode) == 0o600
    assert stat.S_IMODE(os.stat(d).st_mode) == 0o700
    ep = Entrypoint(kind="function", withheld=["dsn", "n", "obj"], secrets_dir=d)
    assert withhold.job_values("run1", ep) == {"dsn": DSN, "obj": Opts("a", "b"), "n": 7}
    assert withhold.discard("run1", d) and not os.path.exists(p)
    with pytest.raises(SecretsUnavailable) as e:
        withhold.job_values("run1", ep)
    msg = str(e.value)
    assert p in msg and "dsn, n, obj" in msg and "RUNREC_SECRETS_DIR" in msg
    assert withhold.job_values("run2", Entrypoint(kind="function")) == {}
    store = tmp_path / "store"
    with pytest.raises(ConfigError, match="inside the store"):
        withhold.check_dir(str(store / "secrets"), str(store))


def test_the_secrets_directory_setting(tmp_path, monkeypatch):
    monkeypatch.delenv("RUNREC_SECRETS_DIR", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert settings.secrets_dir(str(tmp_path)) == str(tmp_path / "xdg" / "runrec" / "secrets")
    (tmp_path / "runrec.toml").write_text('secrets_dir = "private"\n')
    assert settings.secrets_dir(str(tmp_path)) == str(tmp_path / "private")
    monkeypatch.setenv("RUNREC_SECRETS_DIR", str(tmp_path / "env"))
    assert settings.secrets_dir(str(tmp_path)) == str(tmp_path / "env")
    (tmp_path / "runrec.toml").write_text("secrets_dir = 3\n")
    monkeypatch.delenv("RUNREC_SECRETS_DIR")
    with pytest.raises(ConfigError, match="secrets_dir"):
        settings.secrets_dir(str(tmp_path))


def test_a_command_lines_flagged_items_are_withheld_whole_and_put_back():
    argv = [
        "python",
        "t.py",
        "--password",
        "pw-Secret1",
        f"--db={DSN}",
        "PASSWORD=x9",
        "--lr",
        "0.1",
    ]
    shown, values = withhold.withhold_argv(argv)
    assert shown == [
        "python",
        "t.py",
        "--password",
        "[redacted]",
        "--db=postgresql://[redacted]@db/x",
        "PASSWORD=[redacted]",
        "--lr",
        "0.1",
    ]
    assert values == {"argv[3]": "pw-Secret1", "argv[4]": f"--db={DSN}", "argv[5]": "PASSWORD=x9"}
    assert withhold.provide_argv(shown, values) == argv
    # a value given by a rerun's --set is None here: the item stays for rewrite_argv
    assert withhold.provide_argv(shown, {"argv[3]": None}) == shown
    assert withhold.withhold_argv(["python", "t.py", "--lr", "0.1"]) == (
        ["python", "t.py", "--lr", "0.1"],
        {},
    )
    assert withhold.argv_index("argv[12]") == 12 and withhold.argv_index("conn.password") is None
    assert withhold.env_var("argv[3]") == "RUNREC_SECRET_ARGV_3"
