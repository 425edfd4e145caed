"""Issue 14 on the real Slurm cluster (slurm/up): a run that Slurm ends finishes its record
from inside its allocation (the batch script's end trap, backends/slurm_end.py), with nobody
watching. Two submitting processes hand the cases to Slurm: one exits right after submit, one is
killed with kill -9 right after submit. No runrec command runs afterwards: the test reads only
the raw record files (tests/rawstore.py: zstd + msgpack, no runrec code), and Slurm's own
accounting (sacct State and End), read by the test itself.

Cases: succeeded, raised (code error), time limit (timeout_min=1: 61-90 s, submitted first),
out of memory, `scancel` by the test, and preemption by a job of the high partition: one run in
the REQUEUE partition (it saves a checkpoint from its on_stop hook, is requeued, and attempt 2
resumes from it: same run id) and one in the CANCEL partition.

Everything is submitted at once (module fixture); each case is checked in its own test.
"""

import json
import os
import signal
import statistics
import subprocess
import sys
import textwrap
import time
from datetime import UTC, datetime

import pytest
from helpers import wait_for, write_figures
from rawstore import raw_attempts, raw_verdict, raw_versions
from slurm_target import NODE_X, NODE_Y

import runrec_cluster as rr

pytestmark = pytest.mark.usefixtures("slurm")

LOW_REQUEUE = os.environ.get("RUNREC_SLURM_LOW_REQUEUE", "low-requeue")
LOW_CANCEL = os.environ.get("RUNREC_SLURM_LOW_CANCEL", "low-cancel")
HIGH = os.environ.get("RUNREC_SLURM_HIGH", "high")

# case -> (submitter, expected state, cause, state source, sacct State word)
EXPECTED = {
    "timeout": ("kill", "failed", "timeout", "scheduler", "TIMEOUT"),
    "oom": ("kill", "failed", "out_of_memory", "scheduler", "FAILED"),
    "raise": ("kill", "failed", "code_error", "job", "FAILED"),
    "ok": ("exit", "succeeded", None, "job", "COMPLETED"),
    "scancel": ("exit", "cancelled", "cancelled", "scheduler", "CANCELLED"),
    "preempt_requeue": ("exit", "succeeded", None, "job", "COMPLETED"),
    "preempt_cancel": ("exit", "failed", "preempted", "scheduler", "PREEMPTED"),
}

_SUBMITTER = textwrap.dedent(
    """
    import json, os, signal, sys, time
    import runrec_cluster as rr

    def ok():
        return 42

    def boom():
        raise ValueError("bad input")

    def sleeper():
        time.sleep(600)

    def hog():
        chunks = []
        while True:
            chunks.append(bytearray(64 << 20))

    def resumable(ckpt, done):
        # a checkpointed loop: attempt 1 runs until preempted and saves its step on stop;
        # a requeued attempt finds the checkpoint, resumes from it and finishes
        run = rr.current_run()
        state = {"step": 0, "signal": None}
        if os.path.exists(ckpt):
            with open(ckpt) as f:
                state = json.load(f)
        start = state["step"]

        def save(signum):
            state["signal"] = signum
            with open(ckpt + ".tmp", "w") as f:
                json.dump(state, f)
            os.replace(ckpt + ".tmp", ckpt)

        run.on_stop(save)
        limit = 3 if run.attempt > 1 else 10**6
        for _ in range(limit):
            state["step"] += 1
            time.sleep(0.2)
        with open(done, "w") as f:
            json.dump({"attempt": run.attempt, "resumed_from": start, "step": state["step"],
                       "stopped_by": state["signal"]}, f)
        return state["step"]

    store, tmp, how, cases = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4].split(",")
    opts = dict(timeout_min=5, cpus=1, mem_gb=0.4, slurm_nodelist=%(node_x)r)
    ids = {}
    for case in cases:
        kw, fn, args = dict(opts), ok, ()
        if case == "timeout":
            kw["timeout_min"], fn = 1, sleeper
        elif case == "oom":
            kw["mem_gb"], fn = 0.25, hog
        elif case == "raise":
            fn = boom
        elif case == "scancel":
            fn = sleeper
        elif case.startswith("preempt"):
            requeue = case == "preempt_requeue"
            kw.update(slurm_nodelist=%(node_y)r,
                      slurm_partition=%(low_requeue)r if requeue else %(low_cancel)r)
            fn = resumable if requeue else sleeper
            if requeue:
                args = (os.path.join(tmp, "ckpt.json"), os.path.join(tmp, "done.json"))
        ids[case] = rr.Executor(backend="slurm", store=store, **kw).submit(fn, *args).run_id
    print(json.dumps(ids), flush=True)
    if how == "kill":
        time.sleep(600)  # the test kills it with kill -9 now
    """
) % {"low_requeue": LOW_REQUEUE, "low_cancel": LOW_CANCEL, "node_x": NODE_X, "node_y": NODE_Y}


def _submit(store, tmp, how, cases):
    """A submitting process; returns {case: run id} once it printed them (it then exits, or is
    killed with kill -9 by the caller)."""
    p = subprocess.Popen(
        [sys.executable, "-c", _SUBMITTER, store, str(tmp), how, ",".join(cases)],
        stdout=subprocess.PIPE,
        text=True,
    )
    line = p.stdout.readline()
    assert line, f"the submitter ({how}) printed no run ids; exit code {p.wait()}"
    ids = json.loads(line)
    if how == "kill":
        os.kill(p.pid, signal.SIGKILL)
        assert p.wait(timeout=30) == -signal.SIGKILL
    else:
        assert p.wait(timeout=60) == 0
    return ids


def _job_id(store, run_id):
    """The Slurm job id, from the raw dispatch version."""
    for v in raw_versions(store, run_id):
        jid = ((v["patch"].get("execution") or {}).get("scheduler") or {}).get("job_id")
        if jid:
            return str(jid)
    return None


def _running(store, run_id, attempt=1):
    return any(
        v["patch"].get("state") == "running" and int(v["patch"].get("attempt", 1)) == attempt
        for v in raw_versions(store, run_id)
    )


def sacct_rows(job_id):
    """sacct's job lines for the job, every attempt (-D): [(State, End as UTC datetime)]."""
    out = subprocess.run(
        ["sacct", "-n", "-P", "-X", "-D", "-j", job_id, "--format=State,End"],
        capture_output=True,
        text=True,
        timeout=30,
    ).stdout
    rows = []
    for line in out.splitlines():
        state, _, end = line.partition("|")
        try:
            when = datetime.fromisoformat(end).astimezone(UTC)
        except ValueError:
            when = None
        rows.append((state, when))
    return rows


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Submit every case at once (the time limit first), scancel and preempt the ones that
    need it, wait until every run has a final verdict in its files; returns the facts."""
    tmp = tmp_path_factory.mktemp("unattended")
    store = str(tmp / "store")
    rr.Store(store).ensure_writable()
    kill_cases = [c for c, e in EXPECTED.items() if e[0] == "kill"]
    exit_cases = [c for c, e in EXPECTED.items() if e[0] == "exit"]
    ids = _submit(store, tmp, "kill", kill_cases)
    ids.update(_submit(store, tmp, "exit", exit_cases))
    jobs = {c: wait_for(f"{c}'s job id", lambda r=r: _job_id(store, r)) for c, r in ids.items()}
    facts = {"store": store, "tmp": tmp, "ids": ids, "jobs": jobs}

    wait_for("the scancel run to run", lambda: _running(store, ids["scancel"]), timeout=180)
    subprocess.run(["scancel", jobs["scancel"]], check=True, timeout=30)

    for c in ("preempt_requeue", "preempt_cancel"):
        wait_for(f"the {c} run to run", lambda c=c: _running(store, ids[c]), timeout=180)
    time.sleep(2)  # the checkpointed loop has taken a few steps
    high = subprocess.run(
        ["sbatch", "--parsable", "-p", HIGH, "-w", NODE_Y, "-c", "2", "--mem=100M", "-J", "high"]
        + ["-o", "/dev/null", "--wrap", "sleep 2"],
        check=True,
        capture_output=True,
        text=True,
        timeout=30,
    )
    facts["high_job"] = high.stdout.strip()
    rq = ids["preempt_requeue"]
    first = wait_for("the requeued run's preempted verdict", lambda: raw_verdict(store, rq), 120)
    facts["requeue_first"] = first
    # Slurm holds a requeued job (BeginTime) for cred_expire + 1 s (slurm/up: 30; default 120)
    # (a figure only: seen while the job waits in the queue, before attempt 2 starts)
    seen = {}

    def attempt_2():
        info = _requeued(_scontrol(jobs["preempt_requeue"]))
        if info and "hold" not in seen:
            seen["hold"] = (
                datetime.fromisoformat(info["EligibleTime"])
                - datetime.fromisoformat(info["SubmitTime"])
            ).total_seconds()
        return _running(store, rq, attempt=2)

    wait_for("attempt 2 to start", attempt_2, timeout=240)
    facts["requeue_hold_s"] = seen.get("hold")

    def final(case):
        v = raw_verdict(store, ids[case])
        return v if v and (case != "preempt_requeue" or v["attempt"] == 2) else None

    facts["verdicts"] = {c: wait_for(f"{c}'s verdict", lambda c=c: final(c), 240) for c in ids}
    facts["sacct"] = {c: _sacct_final(jobs[c]) for c in ids}
    _figures(facts)
    return facts


def _requeued(info):
    return info if info.get("JobState") == "PENDING" and info.get("Restarts", "0") != "0" else None


def _scontrol(job_id):
    out = subprocess.run(
        ["scontrol", "-o", "show", "job", job_id], capture_output=True, text=True, timeout=30
    ).stdout
    return dict(t.split("=", 1) for t in out.split() if "=" in t)


def _sacct_final(job_id):
    """sacct's rows once every attempt's job line is terminal and has an end time."""

    def done():
        rows = sacct_rows(job_id)
        ok = rows and all(
            s.split()[0] not in ("RUNNING", "PENDING", "REQUEUED") and e for s, e in rows
        )
        return rows if ok else None

    return wait_for(f"sacct to settle for job {job_id}", done, timeout=120, every=1)


def _delay(facts, case, verdict):
    """Seconds from Slurm's end of the job (sacct End; the preempted attempt's end for the
    requeued run's first verdict) to the verdict version's written_at."""
    rows = facts["sacct"][case]
    word = "PREEMPTED" if verdict["cause"] == "preempted" else None
    end = next((e for s, e in rows if word is None or s.startswith(word)), None)
    if word is None:
        end = rows[-1][1]
    return (verdict["written_at"] - end).total_seconds()


def _figures(facts):
    delays = {}
    for case, v in facts["verdicts"].items():
        delays.setdefault(EXPECTED[case][2] or "succeeded", []).append(_delay(facts, case, v))
    first = facts["requeue_first"]
    delays.setdefault("preempted", []).append(_delay(facts, "preempt_requeue", first))
    costs = [
        (v["version"]["patch"].get("execution") or {}).get("scheduler", {}).get("end_script")
        for v in [*facts["verdicts"].values(), first]
    ]
    costs = [c for c in costs if c]
    facts["delays"] = delays
    write_figures(
        "unattended_slurm",
        "Slurm, nobody watching: seconds from sacct End to the verdict version's written_at, "
        "per cause (the end script in the batch script writes the scheduler's causes; the job "
        "writes succeeded / code_error itself); the end script's own time and scheduler calls",
        delays=delays,
        median={k: statistics.median(v) for k, v in delays.items()},
        worst={k: max(v) for k, v in delays.items()},
        end_script_s=[c["took_s"] for c in costs],
        end_script_process_s=[c.get("process_s") for c in costs],
        end_script_calls=[c["scheduler_calls"] for c in costs],
        requeue_hold_s=facts["requeue_hold_s"],
    )


@pytest.mark.parametrize("case", [c for c in EXPECTED if c != "preempt_requeue"])
def test_verdict_in_the_files(runs, case):
    _, state, cause, source, sacct_word = EXPECTED[case]
    v = runs["verdicts"][case]
    assert (v["state"], v["cause"], v["source"]) == (state, cause, source), v["failure"]
    rows = runs["sacct"][case]
    assert len(rows) == 1 and rows[0][0].startswith(sacct_word), rows
    # within 60 s of Slurm's end, nobody having run any runrec command
    assert _delay(runs, case, v) < 60, (case, _delay(runs, case, v))
    if case == "scancel":
        assert v["failure"].get("by"), v["failure"]
    if source == "scheduler":
        assert v["version"]["event"] == "verdict"
        assert v["version"]["patch"]["execution"]["scheduler"]["end_script"]["took_s"] >= 0
        assert v["version"]["patch"]["attempt"] == 1


def test_preempted_and_requeued_run_resumes_from_its_checkpoint(runs):
    store, run_id = runs["store"], runs["ids"]["preempt_requeue"]
    first = runs["requeue_first"]
    assert (first["state"], first["cause"], first["source"], first["attempt"]) == (
        "failed",
        "preempted",
        "scheduler",
        1,
    ), first["failure"]
    assert _delay(runs, "preempt_requeue", first) < 60
    v = runs["verdicts"]["preempt_requeue"]
    assert (v["state"], v["attempt"], v["source"]) == ("succeeded", 2, "job")
    assert raw_attempts(store, run_id) == [1, 2]
    states = [s.split()[0] for s, _ in runs["sacct"]["preempt_requeue"]]
    assert states == ["PREEMPTED", "COMPLETED"], states
    with open(runs["tmp"] / "ckpt.json") as f:
        ckpt = json.load(f)
    with open(runs["tmp"] / "done.json") as f:
        done = json.load(f)
    assert ckpt["signal"] == signal.SIGTERM and ckpt["step"] > 0, ckpt
    assert done["attempt"] == 2 and done["resumed_from"] == ckpt["step"], (done, ckpt)
    assert done["step"] == ckpt["step"] + 3
