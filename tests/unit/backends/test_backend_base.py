"""What the Backend base class does once for every backend: the abstract methods, which runs are
asked about, the per-run rate limit (and forgetting it), and the cancel record."""

from __future__ import annotations

import pytest

from runrec_cluster import api
from runrec_cluster.backends import Backend, forget_checks, get_backend
from runrec_cluster.capture.proc import current_user
from runrec_cluster.record import (
    Execution,
    Failure,
    FailureCause,
    Resources,
    RunRecord,
    RunState,
    end_patch,
)
from runrec_cluster.store import layout


class Fake(Backend):
    name = "fake"
    check_interval_s = 60.0

    def __init__(self, store=None, held=()):
        super().__init__(store, Resources(), {})
        self.asked: list[list[str]] = []
        self.held_ids = set(held)

    def launch(self, jobs):
        return [{} for _ in jobs]

    def cancel(self, rec):
        self.record_cancel(rec, "by hand")

    def ask(self, recs):
        self.asked.append([r.run_id for r in recs])
        return {r.run_id: {"state": "failed"} for r in recs}

    def held(self, rec):
        return rec.run_id in self.held_ids

    def check_held(self, recs):
        return {r.run_id: {"state": "cancelled"} for r in recs}


def rec(run_id, state=RunState.RUNNING, failure=None):
    return RunRecord(
        run_id=run_id, state=state, failure=failure, execution=Execution(backend="fake")
    )


def test_launch_and_cancel_are_abstract():
    class Half(Backend):
        def launch(self, jobs):
            return []

    with pytest.raises(TypeError, match="cancel"):
        Half(None, Resources(), {})


def test_the_rate_limit_is_per_run_and_forgotten_on_request():
    forget_checks()
    b = Fake()
    assert b.check_many([rec("a"), rec("b")]) == {
        "a": {"state": "failed"},
        "b": {"state": "failed"},
    }
    assert b.check(rec("a")) is None and b.check_many([rec("a"), rec("c")]) == {
        "c": {"state": "failed"}
    }
    assert b.asked == [["a", "b"], ["c"]]
    api.forget_check_times()  # what `runrec reconcile` calls
    assert b.check(rec("a")) == {"state": "failed"}
    forget_checks()


def test_only_open_runs_are_asked_about_and_held_runs_are_not_rate_limited():
    forget_checks()
    b = Fake(held={"h"})
    ended = rec("e", RunState.FAILED, Failure(cause=FailureCause.KILLED, type="Signal", message=""))
    no_exec = RunRecord(run_id="x", state=RunState.RUNNING)
    out = b.check_many([rec("h"), ended, no_exec, rec("o")])
    assert out == {"h": {"state": "cancelled"}, "o": {"state": "failed"}}
    assert b.check(rec("h")) == {"state": "cancelled"}, "held runs: every time"
    assert b.asked == [["o"]]
    b.asks_after_kill = True
    assert b.wants_verdict(ended) and not b.wants_verdict(rec("s", RunState.SUCCEEDED))
    forget_checks()


def test_record_cancel_writes_the_same_fields_on_every_backend(store):
    rid = layout.new_id()
    store.write_version(rid, "launch", {"run_id": rid, "state": "running"}, role="submitter")
    Fake(store).cancel(rec(rid))
    got = store.load(rid)
    assert got.state == RunState.CANCELLED and got.state_source == "backend" and got.ended_at
    f = got.failure
    assert f.cause == FailureCause.CANCELLED and f.type == "Cancelled" and f.source == "backend"
    assert f.by == current_user() and f.message == "cancelled by request (by hand)"
    # the job's own end, written later, wins (job > backend)
    job_end = end_patch(
        Failure(cause=FailureCause.CODE_ERROR, type="ValueError", message="x"), source="job"
    )
    store.write_version(rid, "end", job_end, role="job")
    assert store.load(rid).failure.cause == FailureCause.CODE_ERROR


@pytest.mark.parametrize("name", ["local", "slurm", "ray"])
def test_every_backend_declares_its_differences(name):
    if name == "ray":
        pytest.importorskip("ray")
    cls = get_backend(name)
    assert cls.name == name and cls.option_prefix == f"{name}_"
    assert all(k.startswith(cls.option_prefix) for k in cls.known_options)
    assert isinstance(cls.enforces_timeout, bool) and cls.check_interval_s >= 0
    assert not getattr(cls, "__abstractmethods__", None)
