"""rerun.overrides: an override the function does not take is a RerunError (the errors tree),
and the rerun's config pins generated values instead of changing the call."""

from __future__ import annotations

import pytest

import runrec_cluster as rr
from runrec_cluster.record import ConfigEntry, RunRecord
from runrec_cluster.rerun.overrides import apply_overrides, check_overrides, rerun_config


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
