"""Secrets given as Hydra overrides (runrec_cluster/hydra/secrets.py): which overrides are
withheld from the pickled job, how the node puts them back, the guard that refuses a job whose
pickle would still hold one, and the rerun's names for them (``--set KEY``, with a dotted Hydra
key kept whole)."""

import cloudpickle
import pytest

from runrec_cluster.capture import withhold
from runrec_cluster.capture.redact import load_rules
from runrec_cluster.errors import ConfigError, RerunError, SecretsUnavailable
from runrec_cluster.hydra import secrets
from runrec_cluster.record import ConfigEntry, Entrypoint, RunRecord
from runrec_cluster.rerun.overrides import withheld_values

TOKEN = "ghp_" + "Q7" * 18


def test_secret_overrides_are_split_out_by_key_and_by_shape():
    rules = load_rules("/")
    overrides = [
        "hydra.sweep.dir=multirun/x", "model=small", "+db.password=hunter2x", "lr=0.1",
        f"hub={TOKEN}", "url=postgresql://bob:Pw9secret@db/x", "~old", "tokenizer=bpe",
        "max_tokens=512",
    ]  # fmt: skip
    safe, withheld, values = secrets.split(overrides, {"model": "small"}, rules)
    assert values == {
        "db.password": "hunter2x", "hub": TOKEN, "url": "postgresql://bob:Pw9secret@db/x",
    }  # fmt: skip
    assert withheld == {2: ("+db.password=", "db.password"), 4: ("hub=", "hub"), 5: ("url=", "url")}
    assert safe[2] == "+db.password=" + secrets.PLACEHOLDER
    assert [safe[i] for i in (0, 1, 3, 6, 7, 8)] == [overrides[i] for i in (0, 1, 3, 6, 7, 8)]
    assert "hunter2x" not in " ".join(safe) and TOKEN not in " ".join(safe)
    # the node puts back exactly what was typed; a missing value is a clear error
    assert secrets.fill(safe, withheld, values) == overrides
    with pytest.raises(SecretsUnavailable, match=r"\$RUNREC_SECRET_DB_PASSWORD"):
        secrets.fill(safe, withheld, {"hub": TOKEN, "url": "u"})


def test_a_group_choice_is_never_withheld():
    safe, withheld, _ = secrets.split(["auth=token"], {"auth": "token"}, load_rules("/"))
    assert (safe, withheld) == (["auth=token"], {})


def test_the_guard_refuses_a_pickle_still_holding_a_value():
    values = {"db.password": "hunter2x"}
    secrets.check_kept_out("job", cloudpickle.dumps(["db.password=" + secrets.PLACEHOLDER]), values)
    with pytest.raises(ConfigError, match="db.password holds a secret .* nothing was submitted"):
        secrets.check_kept_out("job", cloudpickle.dumps({"x": "hunter2x"}), values)
    # and runrec's withholding takes every value the split gave (same rules)
    kw = withhold.withhold_call(lambda **k: None, (), {"db.password": "x", "hub": TOKEN})[1]
    assert all(isinstance(v, withhold.Withheld) for v in kw.values())


def test_a_rerun_names_a_dotted_hydra_key_whole():
    rec = RunRecord(
        run_id="r1",
        config={"db.password": ConfigEntry(value="[redacted]", source="given")},
        entrypoint=Entrypoint(kind="function", withheld=["db.password", "conn.password"]),
    )
    with pytest.raises(RerunError) as exc:
        withheld_values(rec, {}, {})
    msg = str(exc.value)
    assert "db.password: --set db.password=VALUE or $RUNREC_SECRET_DB_PASSWORD" in msg
    # a function argument's part is still given by its whole argument
    assert "conn.password: --set conn=VALUE (the whole value)" in msg
    values, notes = withheld_values(rec, {"db.password": "x"}, {"RUNREC_SECRET_CONN_PASSWORD": "y"})
    assert values == {"db.password": None, "conn.password": "y"}
    assert notes == [
        "db.password from --set db.password",
        "conn.password from $RUNREC_SECRET_CONN_PASSWORD",
    ]
