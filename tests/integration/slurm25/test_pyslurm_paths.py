"""Both ways of asking Slurm (sacct/scontrol and pyslurm, ``RUNREC_SLURM_API``) against the
real Slurm 25.11 cluster of slurm/up25: the same cases, the same verdicts.

Each case runs twice, one job per way: the submitting process sets ``RUNREC_SLURM_API``, so
the job's end trap (``slurm_end``) and the reading test process ask Slurm that way. Cases:
succeeded, raised, time limit (1 min, Slurm's TIMEOUT), memory kill (cgroup), ``scancel``,
node failure (``scontrol update nodename=m2 state=down`` on a --no-requeue job), requeue
(``scontrol requeue``: attempt 2 succeeds). Ground truth is the test's own ``sacct`` (25.11)
and the jobs' own doing (the requeued job's attempt); the record's verdict must say what sacct
says, the two ways must agree, and the allocation runrec recorded must be what sacct says Slurm
allocated. Last, every finished job is judged again through both ways by the backend's reader
(``SlurmBackend.ask``, what ``runrec reconcile`` does) on an open copy of its record: the two
patches must be identical but for the words naming the source.

The 4 CPUs of the cluster (2 nodes x 2) hold the first four jobs (node failure on m2, time
limit on m1); the others queue behind them. All are submitted at once (module fixture).
"""

from __future__ import annotations

import os
import subprocess
import time

import jobfns
import msgspec
import pytest

import runrec_cluster as rr
from runrec_cluster.backends.slurm import SlurmBackend
from runrec_cluster.record import Resources, RunState

pytestmark = [pytest.mark.slurm, pytest.mark.usefixtures("slurm25")]

APIS = ("cli", "pyslurm")
# case -> (state, cause, state source): what the record must end with
EXPECT = {
    "node_fail": ("failed", "node_failure", "scheduler"),
    "ok": ("succeeded", None, "job"),
    "raise": ("failed", "code_error", "job"),
    "oom": ("failed", "out_of_memory", "scheduler"),
    "scancel": ("cancelled", "cancelled", "scheduler"),
    "requeue": ("succeeded", None, "job"),
    "timeout": ("failed", "timeout", "scheduler"),
}
# a scheduler's verdict names what it was read through: only its own way's words
VIA = {"cli": {"sacct", "scontrol", "srun"}, "pyslurm": {"pyslurm", "srun"}}
ALLOC_SOURCE = {"cli": {"sacct", "scontrol"}, "pyslurm": {"pyslurm"}}
MEM_GB = 0.4  # -> --mem=409M


def submit(store, api: str, case: str) -> rr.RunHandle:
    kw = dict(timeout_min=5, cpus=1, mem_gb=MEM_GB)
    fn, args = jobfns.add, (2, 3)
    if case == "node_fail":
        kw.update(slurm_nodelist="m2", slurm_requeue=False)
        fn, args = jobfns.sleep_then, (300,)
    elif case == "timeout":
        kw.update(slurm_nodelist="m1", timeout_min=1)
        fn, args = jobfns.sleep_then, (300,)
    elif case == "raise":
        fn, args = jobfns.fail, ("bad input",)
    elif case == "oom":
        kw["mem_gb"] = 0.25
        fn, args = jobfns.allocate_mb, (700,)
    elif case == "scancel":
        fn, args = jobfns.sleep_then, (300,)
    elif case == "requeue":
        kw["slurm_requeue"] = True
        fn, args = jobfns.sleep_unless_restarted, (300,)
    old = os.environ.get("RUNREC_SLURM_API")
    os.environ["RUNREC_SLURM_API"] = api  # the job's end trap inherits it (sbatch --export=ALL)
    try:
        return rr.Executor(backend="slurm", store=store, **kw).submit(fn, *args)
    finally:
        if old is None:
            del os.environ["RUNREC_SLURM_API"]
        else:
            os.environ["RUNREC_SLURM_API"] = old


@pytest.fixture(scope="module")
def runs(slurm25, tmp_path_factory):
    """Every case on both ways, submitted at once: {(case, api): handle}."""
    store = rr.Store(tmp_path_factory.mktemp("slurm25") / "store")
    store.ensure_writable()
    out = {}
    for case in EXPECT:  # node_fail and timeout first: they take the four CPUs at once
        for api in APIS:
            out[case, api] = submit(store, api, case)
    yield out
    ids = [h.record().execution.scheduler.get("job_id") for h in out.values()]
    subprocess.run(["scancel", *[str(i) for i in ids if i]], capture_output=True)


def job_id(h) -> str:
    return str(h.record().execution.scheduler["job_id"])


def sacct(jid: str, fields: list[str] | None = None) -> list[dict[str, str]]:
    """The test's own reading of Slurm's accounting (every attempt, -D)."""
    fields = fields or ["JobID", "State", "ExitCode", "AllocTRES", "NodeList"]
    out = subprocess.run(
        ["sacct", "-n", "-P", "-D", "-j", jid, f"--format={','.join(fields)}"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    return [dict(zip(fields, line.split("|"), strict=True)) for line in out.splitlines()]


def job_lines(jid: str) -> list[dict[str, str]]:
    return [r for r in sacct(jid) if "." not in r["JobID"]]


def ended(jid: str) -> bool:
    """sacct says the job's last attempt ended (a final state and an end time)."""
    lines = sacct(jid, ["JobID", "State", "End"])
    last = [r for r in lines if "." not in r["JobID"]][-1:]
    return (
        bool(last)
        and last[0]["End"] not in ("", "Unknown")
        and not last[0]["State"].startswith(("RUNNING", "PENDING", "COMPLETING", "REQUEUED"))
    )


def wait_until(what: str, pred, timeout: float = 120):
    t = time.monotonic() + timeout
    while time.monotonic() < t:
        got = pred()
        if got:
            return got
        time.sleep(0.5)
    raise AssertionError(f"not met within {timeout:g} s: {what}")


def running(h) -> bool:
    return h.record().state == RunState.RUNNING


def tres_numbers(tres: str) -> dict[str, int]:
    """sacct's AllocTRES "cpu=1,mem=409M,node=1,billing=1" -> cpus, mem_mb, nodes (the test's
    own parse; memory in M as this cluster prints it)."""
    kv = dict(item.split("=", 1) for item in tres.split(",") if "=" in item)
    mem = kv["mem"]
    mb = float(mem[:-1]) * {"M": 1, "G": 1024}[mem[-1]]
    return {"cpus": int(kv["cpu"]), "mem_mb": round(mb), "nodes": int(kv["node"])}


def check(h, api: str, case: str, use_api) -> rr.RunRecord:
    """The record's verdict read through ``api``: what EXPECT says, the source words of its
    way, and the allocation sacct reports for the job's last attempt."""
    use_api(api)
    h.wait(timeout=180)
    jid = job_id(h)
    # the job's own end comes before Slurm's (its batch script still runs the end trap, which
    # adds the allocation): the truth is read once sacct has the job's end
    wait_until(f"sacct has job {jid}'s end", lambda: ended(jid), timeout=60)
    rec = h.record()
    state, cause, source = EXPECT[case]
    got = (rec.state.value, rec.failure.cause.value if rec.failure else None, rec.state_source)
    assert got == (state, cause, source), (case, api, rec.failure)
    if source == "scheduler":
        assert rec.failure.via in VIA[api], (case, api, rec.failure)
    truth = job_lines(jid)[-1]
    a = rec.execution.allocated
    assert a is not None, f"{case}/{api}: no allocation recorded"
    assert a.source in ALLOC_SOURCE[api], a
    assert {"cpus": a.cpus, "mem_mb": a.mem_mb, "nodes": a.nodes} == tres_numbers(
        truth["AllocTRES"]
    )
    assert a.nodelist == truth["NodeList"]
    return rec


# -- the cases, each on both ways ---------------------------------------------------------------


@pytest.fixture(scope="module")
def node_failed(runs):
    """m2 down under both node-failure jobs (once for both), back up once Slurm ended them."""
    hs = [runs["node_fail", api] for api in APIS]
    wait_until("both node-failure jobs running", lambda: all(running(h) for h in hs))
    assert {h.record().node.scheduler_node for h in hs} == {"m2"}
    try:
        subprocess.run(
            ["scontrol", "update", "nodename=m2", "state=down", "reason=runrec-test"], check=True
        )
        wait_until(
            "sacct says NODE_FAIL for both",
            lambda: all(job_lines(job_id(h))[-1]["State"] == "NODE_FAIL" for h in hs),
        )
    finally:
        subprocess.run(["scontrol", "update", "nodename=m2", "state=resume"], capture_output=True)
    return True


@pytest.mark.parametrize("api", APIS)
def test_node_failure(runs, node_failed, api, use_api):
    check(runs["node_fail", api], api, "node_fail", use_api)


@pytest.mark.parametrize("api", APIS)
def test_succeeded(runs, api, use_api):
    h = runs["ok", api]
    check(h, api, "ok", use_api)
    assert h.result() == 5 and job_lines(job_id(h))[-1]["State"] == "COMPLETED"


@pytest.mark.parametrize("api", APIS)
def test_raised(runs, api, use_api):
    h = runs["raise", api]
    rec = check(h, api, "raise", use_api)
    assert rec.failure.type == "ValueError" and job_lines(job_id(h))[-1]["State"] == "FAILED"


@pytest.mark.parametrize("api", APIS)
def test_memory_kill(runs, api, use_api):
    h = runs["oom", api]
    check(h, api, "oom", use_api)
    assert any(r["State"] == "OUT_OF_MEMORY" for r in sacct(job_id(h))), sacct(job_id(h))


@pytest.mark.parametrize("api", APIS)
def test_scancel(runs, api, use_api):
    h = runs["scancel", api]
    wait_until("running", lambda: running(h))
    subprocess.run(["scancel", job_id(h)], check=True)
    rec = check(h, api, "scancel", use_api)
    assert rec.failure.by == "root" and job_lines(job_id(h))[-1]["State"].startswith("CANCELLED")


@pytest.mark.parametrize("api", APIS)
def test_requeue(runs, api, use_api):
    h = runs["requeue", api]
    wait_until("running", lambda: running(h))
    subprocess.run(["scontrol", "requeue", job_id(h)], check=True)
    rec = check(h, api, "requeue", use_api)
    assert rec.attempt == 2 and h.result() == "restarted 1"  # the job's own word
    assert rec.execution.scheduler["requeues"] == 1  # what its way asked slurmctld
    states = [r["State"] for r in job_lines(job_id(h))]
    assert states[0] == "REQUEUED" and states[-1] == "COMPLETED", states


@pytest.mark.parametrize("api", APIS)
def test_time_limit(runs, api, use_api):
    h = runs["timeout", api]
    check(h, api, "timeout", use_api)
    assert job_lines(job_id(h))[-1]["State"] == "TIMEOUT"


# -- the reader: the same job judged through both ways ------------------------------------------


def test_reconcile_through_both_ways_gives_identical_verdicts(runs, monkeypatch):
    """Every job above, now finished, judged by ``SlurmBackend.ask`` as for a run that never
    wrote its end (an open copy of its record), once per way: identical patches (the source
    words aside). A record at attempt 1 of the requeued job gets attempt 2's verdict."""
    for (case, api), h in sorted(runs.items()):
        rec = h.record()
        assert rec.state.is_terminal(), (case, api, rec.state)
        for attempt in sorted({1, rec.attempt}):
            open_copy = msgspec.structs.replace(
                rec, state=RunState.RUNNING, state_source="job", failure=None, attempt=attempt
            )
            patches = {}
            for way in APIS:
                monkeypatch.setenv("RUNREC_SLURM_API", way)
                b = SlurmBackend(h.store, Resources(), {})
                patches[way] = b.ask([open_copy])[rec.run_id]
            vias = {w: p["failure"].pop("via") for w, p in patches.items()}
            assert vias == {"cli": "sacct", "pyslurm": "pyslurm"}
            for p in patches.values():
                alloc = p["execution"]["allocated"]
                alloc.pop("tres")  # Slurm's words (sacct adds billing=1); the numbers compared
                alloc.pop("source")
            assert patches["cli"] == patches["pyslurm"], (case, api, attempt)
            assert patches["cli"]["attempt"] == rec.attempt
            requeues = patches["cli"]["execution"]["scheduler"]["requeues"]
            assert requeues == (1 if case == "requeue" else 0)
