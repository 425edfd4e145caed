"""Submit and walk away, local backend: the runs finish their records with nobody watching.

A submitting Python process submits a few runs and then exits at once, or is killed with
``kill -9`` (its whole process group, as when a terminal closes) right after submit. No runrec
command runs afterwards: the test reads the raw version files (tests/rawstore.py: zstandard +
msgspec only) and finds each run's final state and cause. Ground truth is the job process
itself: each job writes its PID, and the test watches that process end (or kills it).
"""

import os
import signal
import statistics
import subprocess
import sys
import textwrap
import time

import pytest
from helpers import wait_for, write_figures
from rawstore import raw_verdict, raw_versions

TESTS = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

# name -> (job function and arguments as source, the expected state and cause)
CASES = {
    "succeeded": ("jobfns.write_pid_and_sleep, {pid!r}, 1", "succeeded", None),
    "code_error": ("unattended_fail, {pid!r}", "failed", "code_error"),
    "killed": ("jobfns.write_pid_and_sleep, {pid!r}, 60", "failed", "killed"),
    "timeout": ("jobfns.write_pid_and_sleep, {pid!r}, 60", "failed", "timeout"),
}

SUBMITTER = textwrap.dedent(
    """
    import os, sys, time
    sys.path.insert(0, {tests!r})
    import cloudpickle, jobfns
    import runrec_cluster as rr
    cloudpickle.register_pickle_by_value(jobfns)

    def unattended_fail(pid_path):
        with open(pid_path, "w") as f:
            f.write(str(os.getpid()))
        time.sleep(1)
        raise RuntimeError("raised with nobody watching")

    ex = rr.Executor(backend="local", store={store!r}, name="walk-away")
    slow = rr.Executor(backend="local", store={store!r}, name="walk-away", timeout_min=0.05)
    ids = {{}}
    {submits}
    with open({ids_path!r}, "w") as f:
        f.write(repr(ids))
    if {how!r} == "exit":
        sys.exit(0)
    time.sleep(600)  # killed by the test
    """
)


def _start_submitter(tmp_path, repo, how):
    """Start a submitter that exits (``how="exit"``) or will be SIGKILLed with its process
    group right after submit (``_walk_away``)."""
    store = str(tmp_path / f"store-{how}")
    pids = {c: str(tmp_path / f"{how}-{c}.pid") for c in CASES}
    submits = "\n".join(
        f"ids[{c!r}] = ({'slow' if c == 'timeout' else 'ex'}).submit("
        f"{CASES[c][0].format(pid=pids[c])}).run_id"
        for c in CASES
    )
    ids_path = str(tmp_path / f"{how}-ids")
    script = tmp_path / f"submit-{how}.py"
    script.write_text(
        SUBMITTER.format(tests=TESTS, store=store, submits=submits, ids_path=ids_path, how=how)
    )
    p = subprocess.Popen([sys.executable, str(script)], cwd=repo, start_new_session=True)
    return p, store, pids, ids_path


def _walk_away(how, p, store, pids, ids_path):
    """Wait for the submitter to submit, kill -9 it (``kill9``); {case: (run_id, pid file)}."""
    if how == "exit":
        assert p.wait(timeout=120) == 0
    else:
        wait_for("the submitter to write its run ids", lambda: os.path.exists(ids_path), 120)
        time.sleep(0.05)
        os.killpg(p.pid, signal.SIGKILL)  # the submitter and anything in its process group
        assert p.wait(timeout=30) == -signal.SIGKILL
    with open(ids_path) as f:
        ids = eval(f.read())  # our own repr of a dict of strings
    return {c: (ids[c], pids[c]) for c in CASES}


def _pid(path):
    return wait_for(
        f"the job to write its PID to {path}",
        lambda: os.path.exists(path) and open(path).read().strip(),
        60,
    )


def _gone(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(") ")[-1].split()[0] == "Z"  # a zombie has ended
    except OSError:
        return True


@pytest.fixture(scope="module")
def walked_away(tmp_path_factory):
    """Both submitters' runs, after every job process has ended; with the delay from each
    job process's end (seen by the test) to its verdict version."""
    from helpers import git

    tmp = tmp_path_factory.mktemp("unattended")
    repo = tmp / "repo"
    repo.mkdir()
    git(repo, "init", "-q", "-b", "main")
    (repo / "train.py").write_text("print('hello')\n")
    git(repo, "add", ".")
    git(repo, "commit", "-qm", "first")
    started = {how: _start_submitter(tmp, repo, how) for how in ("exit", "kill9")}
    worlds = {how: (s[1], _walk_away(how, *s)) for how, s in started.items()}
    # one loop watches every job process of both submitters, so each end is seen within ~20 ms
    pids = {
        (how, c): int(_pid(path))
        for how, (_, runs) in worlds.items()
        for c, (_, path) in runs.items()
    }
    for how in worlds:
        os.kill(pids[how, "killed"], signal.SIGKILL)  # the test kills one job from outside
    ended: dict = {}
    deadline = time.monotonic() + 90
    while len(ended) < len(pids) and time.monotonic() < deadline:
        for k, pid in pids.items():
            if k not in ended and _gone(pid):
                ended[k] = time.time()
        time.sleep(0.02)
    assert len(ended) == len(pids), f"job processes still alive: {set(pids) - set(ended)}"
    out = {}
    for how, (store, runs) in worlds.items():
        for c, (run_id, _) in runs.items():
            v = wait_for(
                f"a verdict in the files of run {run_id} ({how}, {c})",
                lambda store=store, run_id=run_id: raw_verdict(store, run_id),
                60,
            )
            out[how, c] = (store, run_id, v, v["written_at"].timestamp() - ended[how, c])
    return out


@pytest.mark.parametrize("how", ["exit", "kill9"])
@pytest.mark.parametrize("case", list(CASES))
def test_the_record_holds_the_verdict_without_anyone_reading(walked_away, how, case):
    store, run_id, v, delay = walked_away[how, case]
    _, state, cause = CASES[case]
    assert (v["state"], v["cause"]) == (state, cause), v
    assert delay < 60, f"verdict written {delay:.1f} s after the job process ended"
    events = [(x["event"], x["writer"]["role"]) for x in raw_versions(store, run_id)]
    assert events[0] == ("launch", "submitter") and ("start", "job") in events
    if case == "killed":
        # the job died by a signal it could not handle: its supervisor, not the job, says so
        assert v["source"] == "backend" and v["failure"]["signal"] == signal.SIGKILL
    else:
        assert v["source"] == "job"


def test_delays_are_reported(walked_away):
    delays: dict[str, list[float]] = {}
    for (_, case), (*_, delay) in sorted(walked_away.items()):
        delays.setdefault(case, []).append(round(delay, 3))
    write_figures(
        "unattended_local",
        "local backend, submitter exited or kill -9ed: seconds from the job process's end "
        "(seen by the test) to the verdict version's written_at",
        delays=delays,
        median={c: statistics.median(d) for c, d in delays.items()},
        worst={c: max(d) for c, d in delays.items()},
    )
    assert all(len(d) == 2 for d in delays.values()) and set(delays) == set(CASES)
