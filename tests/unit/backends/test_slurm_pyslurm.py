"""The pyslurm adapter without a cluster: pyslurm's objects (fakes shaped like pyslurm 25.11's
``db.Job``, ``db.JobStep``, ``db.TrackableResources``: the attribute names of its source) turn
into the rows sacct gives, so the one verdict table judges both ways alike; the choice of the
way (``RUNREC_SLURM_API``) and its errors; attempts after a requeue; allocated TRES."""

from __future__ import annotations

import os
import sys
import types
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import msgspec
import pytest

from runrec_cluster.backends import slurm_pyslurm as sp
from runrec_cluster.backends.slurm import SlurmBackend
from runrec_cluster.backends.slurm_states import (
    SACCT_DELIMITER,
    SACCT_FIELDS,
    attempt_rows,
    end_verdict,
    mem_mb,
    parse_sacct,
    parse_tres,
    verdict,
)
from runrec_cluster.errors import BackendError, ConfigError
from runrec_cluster.record import (
    Execution,
    Failure,
    FailureCause,
    Resources,
    RunRecord,
    RunState,
)
from runrec_cluster.store import Store

T0 = int(datetime(2026, 1, 1, 12, 0, 0).timestamp())  # local, as sacct prints


@dataclass
class Res:  # pyslurm.db.TrackableResource
    count: int


@dataclass
class GPU:  # pyslurm.db.tres.GPU
    count: int


@dataclass
class Tres:  # pyslurm.db.TrackableResources
    cpu: Res | None = None
    mem: Res | None = None
    node: Res | None = None
    gres: dict[str, Any] = field(default_factory=dict)


@dataclass
class Step:  # pyslurm.db.JobStep
    state: str
    exit_code: int = 0
    exit_code_signal: int = 0
    nodelist: str = "m1"
    start_time: int | None = T0
    end_time: int | None = T0 + 5


@dataclass
class DbJob:  # pyslurm.db.Job
    id: int
    state: str
    exit_code: int = 0
    exit_code_signal: int = 0
    derived_exit_code: int = 0
    derived_exit_code_signal: int = 0
    state_reason: str | None = "None"
    nodelist: str | None = "m1"
    start_time: int | None = T0
    end_time: int | None = T0 + 5
    submit_time: int | None = T0
    partition: str = "debug"
    cancelled_by: str | None = None
    requeue_count: int = 0
    array_id: int | None = None
    array_task_id: int | None = None
    allocated_tres: Tres | None = field(
        default_factory=lambda: Tres(cpu=Res(1), mem=Res(400), node=Res(1))
    )
    steps: dict[Any, Step] = field(default_factory=dict)


def rec(attempt=1, state=RunState.RUNNING, job_id="100"):
    return RunRecord(
        run_id="r1",
        state=state,
        attempt=attempt,
        execution=Execution(backend="slurm", scheduler={"job_id": job_id}),
    )


def sacct_text(lines: list[dict[str, str]]) -> str:
    """What ``sacct -n -P --delimiter=US --format=SACCT_FIELDS`` prints for these rows."""
    return "\n".join(SACCT_DELIMITER.join(r.get(f, "") for f in SACCT_FIELDS) for r in lines)


def local(ts: int) -> str:
    return datetime.fromtimestamp(ts).isoformat(timespec="seconds")


def sacct_row(job_id, state, exit_code="0:0", tres="", nodes="m1", end=T0 + 5):
    return {
        "JobID": job_id,
        "JobIDRaw": job_id,
        "State": state,
        "ExitCode": exit_code,
        "NodeList": nodes,
        "End": local(end),
        "AllocTRES": tres,
    }


def same_verdict(a: dict[str, Any], b: dict[str, Any]) -> None:
    """Two paths' patches agree on every fact; only the source words differ."""
    for p in (a, b):
        p["failure"].pop("via")
        p["failure"].pop("by", None)
        p["execution"]["allocated"].pop("source")
        p["execution"]["allocated"].pop("tres")  # sacct adds billing=1: the numbers agree
    assert a == b


# -- conversion: the same facts, the same verdict ----------------------------------------------


CASES = {
    # case: (pyslurm db.Job, the sacct lines of the same job, expected state, cause)
    "failed": (
        DbJob(100, "FAILED", exit_code=3, steps={"batch": Step("FAILED", 3), 0: Step("FAILED", 3)}),
        [sacct_row("100", "FAILED", "3:0", "cpu=1,mem=400M,node=1,billing=1")]
        + [sacct_row("100.batch", "FAILED", "3:0"), sacct_row("100.0", "FAILED", "3:0")],
        "failed",
        "exit_code",
    ),
    # under submitit an out-of-memory kill shows only on step 0; the job line says FAILED
    "oom_step_0": (
        DbJob(
            100,
            "FAILED",
            exit_code=0,
            exit_code_signal=9,
            steps={"batch": Step("FAILED", 1), 0: Step("OUT_OF_MEMORY", 0, 125)},
        ),
        [sacct_row("100", "FAILED", "0:9", "cpu=1,mem=400M,node=1,billing=1")]
        + [sacct_row("100.batch", "FAILED", "1:0"), sacct_row("100.0", "OUT_OF_MEMORY", "0:125")],
        "failed",
        "out_of_memory",
    ),
    "timeout": (
        DbJob(100, "TIMEOUT", steps={0: Step("CANCELLED", 0, 15)}),
        [sacct_row("100", "TIMEOUT", "0:0", "cpu=1,mem=400M,node=1,billing=1")]
        + [sacct_row("100.0", "CANCELLED", "0:15")],
        "failed",
        "timeout",
    ),
    "cancelled": (
        DbJob(100, "CANCELLED", cancelled_by="root", exit_code_signal=15),
        [sacct_row("100", "CANCELLED by 0", "0:15", "cpu=1,mem=400M,node=1,billing=1")],
        "cancelled",
        "cancelled",
    ),
    "node_fail": (
        DbJob(100, "NODE_FAIL", nodelist="m2", exit_code=1),
        [sacct_row("100", "NODE_FAIL", "1:0", "cpu=1,mem=400M,node=1,billing=1", nodes="m2")],
        "failed",
        "node_failure",
    ),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_both_paths_give_the_same_verdict(case):
    job, lines, state, cause = CASES[case]
    via_pyslurm = verdict(rec(), sp.db_job_rows(job, "100"), via="pyslurm")
    via_sacct = verdict(rec(), parse_sacct(sacct_text(lines))["100"], via="sacct")
    assert via_pyslurm["state"] == state and via_pyslurm["failure"]["cause"] == cause
    assert via_pyslurm["failure"]["via"] == "pyslurm" and via_sacct["failure"]["via"] == "sacct"
    alloc = via_pyslurm["execution"]["allocated"]
    assert (alloc["cpus"], alloc["mem_mb"], alloc["nodes"], alloc["source"]) == (
        1,
        400,
        1,
        "pyslurm",
    )
    same_verdict(via_pyslurm, via_sacct)


def test_cancelled_by_names_the_user_on_both_paths():
    p = verdict(rec(), sp.db_job_rows(CASES["cancelled"][0], "100"), via="pyslurm")
    s = verdict(rec(), parse_sacct(sacct_text(CASES["cancelled"][1]))["100"])
    assert p["failure"]["by"] == s["failure"]["by"] == "root"
    assert p["execution"]["scheduler"]["sacct_state"] == "CANCELLED by 0"  # as sacct says


def test_rows_have_every_sacct_field_and_times_as_sacct_writes_them():
    job = DbJob(7, "RUNNING", end_time=None, nodelist=None, allocated_tres=None)
    (row,) = sp.db_job_rows(job, "7")
    assert set(SACCT_FIELDS) <= set(row)
    assert row["End"] == "Unknown" and row["Start"] == local(T0)
    assert row["NodeList"] == "None assigned" and row["AllocTRES"] == ""
    assert verdict(rec(), [row], via="pyslurm") is None  # not over: left alone


def test_array_task_ids_including_pyslurms_task_0():
    """pyslurm reads array task 0 as "not set" (None): the record's id is still 123_0."""
    assert sp.job_id_of(DbJob(124, "COMPLETED", array_id=123, array_task_id=None)) == "123_0"
    assert sp.job_id_of(DbJob(125, "COMPLETED", array_id=123, array_task_id=1)) == "123_1"
    assert sp.job_id_of(DbJob(99, "COMPLETED")) == "99"


def test_allocated_tres_gpus_counted_once():
    tres = Tres(cpu=Res(2), mem=Res(2048), node=Res(1), gres={"gpu": GPU(1), "gpu:fake": GPU(1)})
    assert sp.tres_text(tres) == "cpu=2,mem=2048M,node=1,gres/gpu=1"
    assert sp.tres_text(Tres(cpu=Res(4), node=Res(2), gres={"gpu:a100": GPU(2)})) == (
        "cpu=4,node=2,gres/gpu=2"
    )
    assert sp.tres_text(None) == ""
    assert parse_tres("cpu=2,mem=2G,node=1,billing=2,gres/gpu=1,gres/gpu:fake=1") == {
        "cpus": 2,
        "mem_mb": 2048,
        "nodes": 1,
        "gpus": 1,
    }
    assert [mem_mb(v) for v in ("512M", "1.5G", "2048K", "300")] == [512, 1536, 2, 300]
    assert parse_tres("") == {} and parse_tres("cpu=x,mem=") == {}


# -- attempts: the record's attempt is judged ---------------------------------------------------


def test_requeued_job_is_judged_by_the_records_attempt():
    """sacct -D: attempt 1 requeued, attempt 2 failed. A record still at attempt 1 (attempt 2
    never wrote its start) gets attempt 2's verdict, saying so; a record at attempt 2 too."""
    lines = [
        sacct_row("100", "REQUEUED", "0:15", "cpu=1,mem=400M,node=1"),
        sacct_row("100.0", "CANCELLED", "0:15"),
        sacct_row("100", "FAILED", "1:0", "cpu=1,mem=400M,node=1"),
        sacct_row("100.0", "FAILED", "1:0"),
    ]
    rows = parse_sacct(sacct_text(lines))["100"]
    for attempt in (1, 2):
        p = verdict(rec(attempt=attempt), rows)
        assert p["attempt"] == 2 and p["failure"]["cause"] == "exit_code"
        assert p["execution"]["scheduler"]["requeues"] == 1
    assert attempt_rows(rows, 3) is None, "accounting behind the record: wait"


def test_an_earlier_attempt_is_not_judged_by_the_last_line():
    """Attempt 1 ended NODE_FAIL and was requeued; attempt 2 runs. A record at attempt 1 gets
    attempt 1's end (the next attempt's start moves it on), never attempt 2's state."""
    lines = [
        sacct_row("100", "NODE_FAIL", "1:0", "cpu=1,mem=400M,node=1"),
        sacct_row("100", "RUNNING", "0:0", "cpu=1,mem=400M,node=1", end=0),
    ]
    rows = parse_sacct(sacct_text(lines).replace(local(0), "Unknown"))["100"]
    p = verdict(rec(attempt=1), rows)
    assert p["attempt"] == 1 and p["failure"]["cause"] == "node_failure"
    assert verdict(rec(attempt=2), rows) is None  # attempt 2 still runs


def test_pyslurm_gives_the_latest_attempt_with_its_requeue_count():
    job = DbJob(100, "TIMEOUT", requeue_count=1)
    rows = sp.db_job_rows(job, "100")
    p = verdict(rec(attempt=1), rows, via="pyslurm")
    assert p["attempt"] == 2 and p["failure"]["cause"] == "timeout"
    assert p["execution"]["scheduler"]["requeues"] == 1
    assert verdict(rec(attempt=2), rows, via="pyslurm")["attempt"] == 2
    assert verdict(rec(attempt=3), rows, via="pyslurm") is None


# -- choosing the way -------------------------------------------------------------------------


@pytest.fixture
def fake_sinfo(tmp_path, monkeypatch):
    """A real `sinfo -V` on PATH saying the given version."""

    def install(version: str) -> None:
        d = tmp_path / f"bin-{version}"
        d.mkdir()
        (d / "sinfo").write_text(f"#!/bin/sh\necho 'slurm {version}'\n")
        (d / "sinfo").chmod(0o755)
        monkeypatch.setenv("PATH", f"{d}:{os.environ['PATH']}")

    return install


def test_cli_never_looks_at_pyslurm(monkeypatch):
    monkeypatch.setenv("RUNREC_SLURM_API", "cli")
    monkeypatch.setattr(sp, "pyslurm_version", lambda: pytest.fail("looked"))
    assert sp.use_pyslurm() is False


def test_auto_uses_pyslurm_only_for_the_slurm_it_was_built_for(monkeypatch, fake_sinfo):
    monkeypatch.delenv("RUNREC_SLURM_API", raising=False)
    monkeypatch.setattr(sp, "pyslurm_version", lambda: "25.11.2")
    fake_sinfo("22.05.8")
    assert sp.slurm_version() == "22.05.8" and sp.use_pyslurm() is False
    fake_sinfo("25.11.7")  # another PATH: asked again
    assert sp.slurm_version() == "25.11.7" and sp.use_pyslurm() is True
    monkeypatch.setattr(sp, "pyslurm_version", lambda: None)
    assert sp.use_pyslurm() is False


def test_required_pyslurm_that_does_not_match_says_what_and_what_to_do(monkeypatch, fake_sinfo):
    monkeypatch.setenv("RUNREC_SLURM_API", "pyslurm")
    monkeypatch.setattr(sp, "pyslurm_version", lambda: "25.11.2")
    fake_sinfo("22.05.8")
    with pytest.raises(ConfigError) as e:
        sp.use_pyslurm()
    msg = str(e.value)
    assert "pyslurm 25.11.2 is built for Slurm 25.11" in msg and "22.05.8" in msg
    assert "pip install 'runrec-cluster[pyslurm]'" in msg and "RUNREC_SLURM_API=cli" in msg
    monkeypatch.setattr(sp, "pyslurm_version", lambda: None)
    with pytest.raises(ConfigError, match="pyslurm is not installed"):
        sp.use_pyslurm()


def test_a_wrong_mode_is_a_config_error(monkeypatch):
    monkeypatch.setenv("RUNREC_SLURM_API", "rest")
    with pytest.raises(ConfigError, match="RUNREC_SLURM_API = 'rest' is not one of"):
        sp.use_pyslurm()


# -- the backend through a fake pyslurm module -------------------------------------------------


def fake_pyslurm(jobs: list[DbJob], calls: list[Any]) -> types.ModuleType:
    """A module shaped like pyslurm's: db.JobFilter(ids=...), db.Jobs.load(filter)."""

    class JobFilter:
        def __init__(self, **kw: Any) -> None:
            self.ids = kw.pop("ids")
            assert not kw, f"pyslurm 25.11's JobFilter has no {kw}"

    class Jobs:
        @staticmethod
        def load(filt: JobFilter) -> dict[int, DbJob]:
            calls.append(filt.ids)
            if filt.ids == [666]:
                raise RuntimeError("Failed to get Jobs from slurmdbd")
            return {j.id: j for j in jobs if j.id in filt.ids or j.array_id in filt.ids}

    mod = types.ModuleType("pyslurm")
    mod.db = types.SimpleNamespace(JobFilter=JobFilter, Jobs=Jobs)  # type: ignore[attr-defined]
    return mod


def test_backend_asks_once_through_pyslurm(tmp_path, monkeypatch):
    calls: list[Any] = []
    jobs = [
        DbJob(100, "OUT_OF_MEMORY"),
        DbJob(201, "TIMEOUT", array_id=200, array_task_id=None),
        DbJob(202, "COMPLETED", array_id=200, array_task_id=1),
    ]
    monkeypatch.setitem(sys.modules, "pyslurm", fake_pyslurm(jobs, calls))
    monkeypatch.setattr(sp, "use_pyslurm", lambda: True)
    b = SlurmBackend(Store(tmp_path / "s"), Resources(), {})
    recs = [
        rec(job_id="100"),
        msgspec.structs.replace(rec(job_id="200_0"), run_id="r2"),
        RunRecord(
            run_id="r3",
            state=RunState.RUNNING,
            execution=Execution(
                backend="slurm", scheduler={"job_id": "200_1", "raw_job_id": "202"}
            ),
        ),
    ]
    out = b.ask(recs)
    # one call for all; an array task by its own id once recorded, else by its array's
    assert calls == [[100, 200, 202]]
    assert out["r1"]["failure"]["cause"] == "out_of_memory"
    assert out["r2"]["failure"]["cause"] == "timeout" and out["r2"]["failure"]["via"] == "pyslurm"
    assert out["r3"]["failure"]["cause"] == "infrastructure"  # COMPLETED without its own end
    monkeypatch.setitem(sys.modules, "pyslurm", fake_pyslurm([], calls))
    with pytest.raises(BackendError, match="pyslurm db.Jobs.load.*slurmdbd"):
        b.ask([rec(job_id="666")])


def test_end_trap_verdict_names_what_decided_it():
    """Inside the job (slurm_end): a time limit from the reason (scontrol or pyslurm), a job
    line from srun's status, an out-of-memory cause from the step's row."""
    running = [sacct_row("100", "RUNNING", tres="cpu=1,mem=400M,node=1", end=0)]
    running[0]["End"] = "Unknown"
    p = end_verdict(rec(), running, job_id="100", reason="TimeLimit", reason_via="pyslurm")
    assert p["failure"]["cause"] == "timeout" and p["failure"]["via"] == "pyslurm"
    assert p["execution"]["allocated"]["source"] == "sacct"  # the rows' way
    oom = running + [sacct_row("100.0", "OUT_OF_MEMORY", "0:125")]
    p = end_verdict(rec(), oom, job_id="100", srun_status=1, via="pyslurm")
    assert p["failure"]["cause"] == "out_of_memory" and p["failure"]["via"] == "pyslurm"
    failed = running + [sacct_row("100.0", "FAILED", "1:0")]
    p = end_verdict(rec(attempt=2), failed, job_id="100", srun_status=1, attempt=2)
    assert p["failure"]["cause"] == "exit_code" and p["failure"]["via"] == "srun"
    assert p["attempt"] == 2


def test_pending_and_live_allocation_through_pyslurm(tmp_path, monkeypatch):
    """``pyslurm.Job.load`` (slurmctld's view): why a job waits, what it was allocated."""

    @dataclass
    class LiveJob:  # pyslurm.Job
        state: str
        state_reason: str | None
        allocated_nodes: str | None = None
        allocated_tres: Tres | None = None
        requeue_count: int = 0

    live = {
        7: LiveJob("PENDING", "Resources"),
        8: LiveJob("RUNNING", "None", "m1", Tres(cpu=Res(2), mem=Res(1024), node=Res(1)), 1),
    }

    def load(job_id: int) -> LiveJob:
        if job_id not in live:
            raise RuntimeError(f"Invalid job id specified: {job_id}")
        return live[job_id]

    mod = types.ModuleType("pyslurm")
    mod.Job = types.SimpleNamespace(load=load)  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "pyslurm", mod)
    monkeypatch.setattr(sp, "use_pyslurm", lambda: True)
    b = SlurmBackend(Store(tmp_path / "s"), Resources(), {})
    assert b.describe_pending(rec(job_id="7")) == "Slurm job 7 is PENDING Resources"
    assert b.describe_pending(rec(job_id="9")) == "Slurm job 9 is no longer in the queue"
    assert sp.live_allocation("8") == ("cpu=2,mem=1024M,node=1", "m1", 1)
    assert sp.live_reason("9") == ""


def test_a_later_attempt_is_judged_even_after_the_records_own_end():
    """Attempt 1 ended KILLED (the requeue's signal, seen by the job); attempt 2 died before
    it wrote its start: its verdict is written, for attempt 2, whatever its cause."""
    killed = msgspec.structs.replace(
        rec(),
        state=RunState.FAILED,
        failure=Failure(cause=FailureCause.KILLED, source="job"),
    )
    rows = sp.db_job_rows(DbJob(100, "FAILED", exit_code=1, requeue_count=1), "100")
    p = verdict(killed, rows, via="pyslurm")
    assert p["attempt"] == 2 and p["failure"]["cause"] == "exit_code"
    assert verdict(killed, sp.db_job_rows(DbJob(100, "FAILED", exit_code=1), "100")) is None
