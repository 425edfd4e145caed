"""A run as an MLflow run (mlflow/translate.py): names MLflow accepts, values within its limits,
the status table, history steps, sweeps. Pure: no server, no mlflow import."""

from __future__ import annotations

import posixpath
import re
from datetime import UTC, datetime, timedelta

import pytest

from runrec_cluster.mlflow import translate as t
from runrec_cluster.record import ConfigEntry, Failure, FailureCause, RunRecord, RunState

T0 = datetime(2025, 3, 1, 12, 0, tzinfo=UTC)
VALID = re.compile(r"^[/\w.\- :]*$")  # MLflow's rule for param, metric and tag names


def accepted(name: str) -> bool:
    norm = posixpath.normpath(name)
    return (
        bool(VALID.match(name))
        and norm == name
        and norm != "."
        and not norm.startswith("..")
        and not norm.startswith("/")
        and len(name) <= 250
    )


@pytest.mark.parametrize(
    "name",
    [
        "lr",
        "opt.lr",
        "a b",
        "lr@5",
        "val/acc",
        "../x",
        "/abs",
        ".",
        "..",
        "a//b",
        "ü-ok",
        "x" * 300,
    ],
)
def test_mlflow_key_is_accepted_and_stable(name):
    k = t.mlflow_key(name)
    assert accepted(k), k
    assert t.mlflow_key(name) == k
    if accepted(name):
        assert k == name  # a good name is left alone


def test_every_state_has_a_status():
    assert set(t.STATUS) == set(RunState)
    assert t.STATUS[RunState.SUCCEEDED] == "FINISHED"
    assert t.STATUS[RunState.FAILED] == "FAILED"
    assert t.STATUS[RunState.CANCELLED] == "KILLED"
    assert t.STATUS[RunState.SUBMITTED] == "SCHEDULED"
    assert t.STATUS[RunState.RUNNING] == "RUNNING"


def rec(**kw):
    base = dict(
        run_id="r1",
        name="train",
        created_at=T0,
        started_at=T0 + timedelta(seconds=1),
        ended_at=T0 + timedelta(seconds=5),
        state=RunState.SUCCEEDED,
        config={
            "lr": ConfigEntry(value=0.01, source="given"),
            "opt": ConfigEntry(value={"name": "adam", "betas": [0.9, 0.99]}, source="file:c.yaml"),
            "bad key!": ConfigEntry(value=None, source="default"),
            "long": ConfigEntry(value="x" * 7000, source="given"),
        },
    )
    base.update(kw)
    return RunRecord(**base)


def test_run_spec_params_tags_and_limits():
    s = t.run_spec(rec(), [], None, "/store")
    assert s.params["lr"] == "0.01"
    assert s.params["opt.name"] == "adam"
    assert s.params["opt.betas"] == "[0.9, 0.99]"
    assert s.tags["runrec.config_source.opt.name"] == "file:c.yaml"
    assert s.params["bad key_"] == "None"  # str(value), as mlflow.log_params writes it
    assert s.tags["runrec.key.bad key_"] == "bad key!"
    assert len(s.params["long"]) == t.MAX_PARAM_VALUE
    assert "7000" in s.tags["runrec.truncated.long"]
    assert any("cut to 6000 of 7000" in n for n in s.notes)
    assert s.status == "FINISHED"
    assert s.start_ms == int((T0 + timedelta(seconds=1)).timestamp() * 1000)
    assert s.end_ms == int((T0 + timedelta(seconds=5)).timestamp() * 1000)
    assert s.tags["runrec.run_id"] == "r1" and s.tags["runrec.kind"] == "run"
    assert s.tags["runrec.retired"] == "false"
    assert all(accepted(k) for k in [*s.params, *s.tags])
    assert all(len(v) <= t.MAX_TAG_VALUE for v in s.tags.values())


def test_metric_history_steps_and_non_numbers():
    hist = [
        (3, T0, {"loss": 1.0, "ok": True}),
        (5, T0 + timedelta(seconds=1), {"loss": 0.5, "phase": "warm"}),
        (8, T0 + timedelta(seconds=2), {"loss": 0.25}),
    ]
    s = t.run_spec(rec(), hist)
    loss = [(p.value, p.step, p.seq) for p in s.metrics if p.key == "loss"]
    assert loss == [(1.0, 0, 3), (0.5, 1, 5), (0.25, 2, 8)]
    assert [p.value for p in s.metrics if p.key == "ok"] == [1.0]
    assert s.tags["runrec.metric.phase"] == "warm"
    assert s.metric_seq == 8


def test_running_run_has_no_end_and_a_failed_one_its_cause():
    running = t.run_spec(rec(state=RunState.RUNNING, ended_at=None), [])
    assert running.status == "RUNNING" and running.end_ms is None
    failed = t.run_spec(
        rec(state=RunState.FAILED, failure=Failure(cause=FailureCause.OUT_OF_MEMORY)), []
    )
    assert failed.status == "FAILED" and failed.tags["runrec.cause"] == "out_of_memory"


def test_digest_follows_content():
    a = t.run_spec(rec(), [(1, T0, {"loss": 1.0})])
    b = t.run_spec(rec(), [(1, T0, {"loss": 1.0})])
    c = t.run_spec(rec(), [(1, T0, {"loss": 1.0}), (2, T0, {"loss": 0.5})])
    assert a.digest() == b.digest() != c.digest()


def test_sweep_parent():
    runs = [
        rec(
            run_id=f"r{i}",
            sweep_id="s1",
            sweep_index=i,
            config={
                "lr": ConfigEntry(value=0.1 * (i + 1), source="given"),
                "width": ConfigEntry(value=64, source="default"),
            },
            state=st,
        )
        for i, st in enumerate([RunState.SUCCEEDED, RunState.FAILED, RunState.SUCCEEDED])
    ]
    s = t.sweep_spec("s1", runs)
    assert s.params == {"width": "64"}
    assert s.status == "FAILED"
    assert s.tags["runrec.kind"] == "sweep" and s.tags["runrec.sweep_id"] == "s1"
    assert s.tags["runrec.states"] == "failed:1 succeeded:2"
    child = t.run_spec(runs[1], [])
    assert child.parent == "s1" and child.name == "train[1]"
    assert t.sweep_status([RunState.SUCCEEDED, RunState.RUNNING]) == "RUNNING"
    assert t.sweep_status([RunState.SUCCEEDED, RunState.CANCELLED]) == "KILLED"
    assert t.sweep_status([RunState.SUCCEEDED]) == "FINISHED"
