"""rerun.overrides: an override the function does not take is a RerunError (the errors tree),
and the rerun's config pins generated values instead of changing the call."""

from __future__ import annotations

import pytest

import runrec_cluster as rr
from runrec_cluster.record import ConfigEntry, Entrypoint, RunRecord
from runrec_cluster.rerun.overrides import (
    apply_overrides,
    argv_keys,
    check_overrides,
    rerun_config,
    rewrite_argv,
    withheld_values,
)


def test_an_override_the_function_does_not_take_is_a_rerun_error():
    def f(a, b=2):
        return a + b

    with pytest.raises(rr.RerunError, match="rerun override 'c' is not a parameter of"):
        apply_overrides(f, (1,), {}, {"c": 3})
    assert apply_overrides(f, (1,), {}, {"b": 5}) == ((1, 5), {})


def test_rerun_config_pins_generated_values_and_lists_the_differences():
    rec = RunRecord(
        run_id="01m8c98spkjwx5becw52s14k16",
        config={
            "lr": ConfigEntry(value=0.1, source="default"),
            "n": ConfigEntry(value=2, source="given"),
            "seed": ConfigEntry(value=7, source="generated"),
        },
    )
    typed = check_overrides(rec, {"lr": "0.2", "seed": "9"})
    assert typed == {"lr": 0.2, "seed": 9}
    config, pinned, call_ov, diffs = rerun_config(rec, typed)
    assert config["lr"] == ConfigEntry(value=0.2, source="given")  # an overridden default
    assert config["n"] == rec.config["n"] and config["seed"].source == "generated"
    assert pinned == {"seed": 9}  # log_config gives it back; the call does not change
    assert call_ov == {"lr": 0.2}
    assert [(d.what, d.before, d.after) for d in diffs] == [
        ("config.lr", 0.1, 0.2),
        ("config.seed", 7, 9),
    ]
    with pytest.raises(rr.RerunError, match="not a config key of the run"):
        check_overrides(rec, {"nope": "1"})


def _command(argv, withheld):
    return RunRecord(
        run_id="01m8c98spkjwx5becw52s14k16",
        entrypoint=Entrypoint(kind="command", argv=argv, withheld=withheld, secrets_dir="/x"),
    )


def test_argv_keys_name_the_items_a_set_rewrites():
    argv = ["p", "--a", "1", "--b=2", "--flag", "--a", "3", "pos", "--c"]
    assert argv_keys(argv) == {2: "a", 3: "b"}  # the first --a only, as rewrite_argv
    assert rewrite_argv(argv, {"a": "9", "b": "8"})[2:4] == ["9", "--b=8"]


def test_a_command_rerun_asks_for_each_withheld_item_and_says_where_each_came_from():
    argv = ["p", "--password", "[redacted]", "--db=postgresql://[redacted]@h/x", "K=[redacted]"]
    rec = _command(argv, ["argv[2]", "argv[3]", "argv[4]"])
    with pytest.raises(rr.RerunError) as e:
        withheld_values(rec, {}, {})
    msg = str(e.value)
    assert "its command line held values that were kept out of the store" in msg
    assert "argv[2] ([redacted]): --set password=VALUE or $RUNREC_SECRET_ARGV_2" in msg
    assert (
        "argv[3] (--db=postgresql://[redacted]@h/x): --set db=VALUE or $RUNREC_SECRET_ARGV_3" in msg
    )
    assert "argv[4] (K=[redacted]): $RUNREC_SECRET_ARGV_4 (the whole argument)" in msg
    values, notes = withheld_values(
        rec, {"password": "x"}, {"RUNREC_SECRET_ARGV_3": "--db=u", "RUNREC_SECRET_ARGV_4": "K=v"}
    )
    assert values == {"argv[2]": None, "argv[3]": "--db=u", "argv[4]": "K=v"}
    assert notes == [
        "argv[2] from --set password",
        "argv[3] from $RUNREC_SECRET_ARGV_3",
        "argv[4] from $RUNREC_SECRET_ARGV_4",
    ]
