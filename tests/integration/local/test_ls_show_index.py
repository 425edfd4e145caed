"""``runrec ls --limit`` and ``runrec show`` read a handful of runs (the index picks them; trust
flags come from the runs' ancestry), not every run: their output must be byte-identical to
reading every run (``runs.READ_EVERY_RUN``) on the same store.

The store is written through the library's real paths: real local jobs with a dataset, an
artifact consumed by another run, a file with an artifact's content read by path, a promoted
version consumed by a run; a failed run, its rerun and the rerun's rerun; a sweep of runs
written as ``bench/scale_gen.py`` writes them (launch, job side, end or failure); verdicts;
two runs whose job process is gone while their record still says running, one that never
started; a retired dataset (everything built on it SUSPECT) and a retired run. The index is
built part way, so the first listing also reads the change journal. Each command runs on a
fresh copy of that store at the same path (a refresh writes verdicts), once each way.
"""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
import sys
import textwrap
from datetime import UTC, datetime, timedelta

import cloudpickle
import jobfns
import lineage_jobs
import pytest
from click.testing import CliRunner
from helpers import git

import runrec_cluster as rr
from runrec_cluster import api, record
from runrec_cluster.backends import local as local_backend
from runrec_cluster.cli import cli, runs
from runrec_cluster.job import execute, outcome
from runrec_cluster.job.run import Run
from runrec_cluster.lineage import promote, retire
from runrec_cluster.lineage.annotate import annotate
from runrec_cluster.query import newest
from runrec_cluster.query.index import Index
from runrec_cluster.record import RunState, to_patch
from runrec_cluster.store import layout

cloudpickle.register_pickle_by_value(lineage_jobs)
VERDICT_AT = datetime.now(UTC) + timedelta(hours=1)

START_AND_EXIT = textwrap.dedent(
    """
    import sys
    import runrec_cluster as rr
    from runrec_cluster.job import execute
    store = rr.Store(sys.argv[1])
    for rid in sys.argv[2:]:  # the job side's start version, then this process is gone
        rec = store.load(rid)
        store.write_version(rid, "start", execute.start_patch(store, rec, execute.node_facts(store, rec)), role="job")
    """
)


def _sweep(store, ex, n):
    """``n`` runs of one sweep as scale_gen writes them: launch, start, metrics, end (every
    fifth a real failure with its traceback)."""
    calls = [(dict, (), {"lr": 0.01 * (k + 1), "k": k}) for k in range(n)]
    specs = ex.prepare_calls(calls, tags={"team": "vision"}, sweep=True)
    node = None
    for k, spec in enumerate(specs):
        rec = store.load(spec.run_id)
        node = node or execute.node_facts(store, rec)
        store.write_version(spec.run_id, "start", execute.start_patch(store, rec, node), role="job")
        if k % 5 == 4:
            try:
                raise ValueError(f"loss is nan at step {k}")
            except ValueError as exc:
                outcome.record_failure(store, spec.run_id, 0, exc, spec.log_dir)
            continue
        Run(store, spec.run_id, attempt=1).log_metrics({"acc": k / n, "loss": 1 - k / n})
        outcome.write_end(
            store,
            spec.run_id,
            spec.log_dir,
            lambda s, k=k: to_patch(
                state=RunState.SUCCEEDED,
                state_source="job",
                ended_at=outcome.now(),
                result=outcome.encode_result(s, {"k": k}),
            ),
        )
    return [s.run_id for s in specs]


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    work = tmp_path_factory.mktemp("lsworld")
    git(work, "init", "-q", "-b", "main")
    (work / "train.py").write_text("print('train')\n")
    git(work, "add", ".")
    git(work, "commit", "-qm", "first")
    (work / "data").mkdir()
    (work / "out").mkdir()
    data = work / "data" / "train.csv"
    data.write_text("x,y\n1,0\n2,1\n3,1\n")
    store = rr.Store(work / "store")
    old = os.getcwd()
    os.chdir(work)
    try:
        ex = rr.Executor(backend="local", store=store, name="train")
        early = _sweep(store, ex, 12)
        a = ex.submit(
            lineage_jobs.train,
            str(data),
            str(work / "out" / "a.json"),
            0.91,
            0.3,
            inputs=[rr.Dataset(data, version="v1")],
            name="lineage-a",
        )
        f = ex.submit(jobfns.fail, "nope", name="broken")
        a.result(timeout=120)
        b = ex.submit(
            lineage_jobs.finetune,
            None,
            str(work / "out" / "b" / "model.json"),
            0.93,
            0.2,
            inputs=[rr.Artifact(f"{a.run_id}:model")],
            name="lineage-b",
        )
        shutil.copy(work / "out" / "a.json", work / "data" / "copy.json")  # A's model, by path
        c = ex.submit(
            jobfns.train, 0.5, inputs=[rr.Dataset(work / "data" / "copy.json")], name="same-content"
        )
        b.result(timeout=120)
        promote.promote(store, b.run_id, "model", to="best-model", criteria="val_acc >= 0.9")
        g = ex.submit(
            lineage_jobs.finetune,
            None,
            str(work / "out" / "g" / "model.json"),
            0.5,
            0.5,
            inputs=[rr.Artifact("best-model@v1")],
            name="from-promoted",
        )
        for h in (c, g):
            h.result(timeout=120)
        with pytest.raises(rr.JobFailed):
            f.result(timeout=120)
        late = _sweep(store, ex, 15)
        Index(store).update()  # the index as of here: what follows comes through the journal
        r1 = rr.rerun(store, f.run_id, reason="retry")
        with pytest.raises(rr.JobFailed):
            r1.result(timeout=120)
        r2 = rr.rerun(store, r1.run_id, reason="retry again")
        with pytest.raises(rr.JobFailed):
            r2.result(timeout=120)
        old_rerun = rr.rerun(store, early[0], reason="check an old one")
        old_rerun.result(timeout=120)
        annotate(store, late[3], verdict="negative", note="looked wrong")
        annotate(store, late[4], verdict="positive", note="fine after all")
        orphans = [
            s.run_id
            for s in ex.prepare_calls(
                [(dict, (), {"k": k}) for k in range(3)], tags={"team": "orphans"}, sweep=False
            )
        ]
        subprocess.run([sys.executable, "-c", START_AND_EXIT, store.root, *orphans[:2]], check=True)
        retire.retire(store, str(data), state="invalidated", reason="labels were shuffled")
        retire.retire(store, late[7], state="withdrawn", reason="wrong seed")
    finally:
        os.chdir(old)
    snapshot = work / "snapshot"
    shutil.copytree(store.root, snapshot, symlinks=True)
    ids = {
        "A": a.run_id,
        "B": b.run_id,
        "C": c.run_id,
        "F": f.run_id,
        "G": g.run_id,
        "R1": r1.run_id,
        "R2": r2.run_id,
        "OLD": early[0],
        "OLD_RERUN": old_rerun.run_id,
        "RETIRED": late[7],
        "NEGATIVE": late[3],
        "GONE": orphans[0],
        "NEVER": orphans[2],
        "SWEEP": store.load(late[0]).sweep_id,
    }
    return store, snapshot, ids


def _rmtree(path):
    def writable(fn, p, _exc):
        os.chmod(os.path.dirname(p), stat.S_IRWXU)
        os.chmod(p, stat.S_IRWXU)
        fn(p)

    shutil.rmtree(path, onexc=writable) if sys.version_info >= (3, 12) else shutil.rmtree(
        path, onerror=writable
    )


def _run(world, monkeypatch, every, *args):
    """``runrec ARGS --store STORE`` in this process on a fresh copy of the store (same path),
    reading every run or not (then ``Store.load_all`` must not be called): (exit code, stdout,
    stderr, the error raised)."""
    store, snapshot, _ = world
    _rmtree(store.root)
    shutil.copytree(snapshot, store.root, symlinks=True)
    api.forget_check_times()
    with monkeypatch.context() as m:
        # the verdict on a gone job is dated when it is made: the same date both ways
        m.setattr(
            local_backend,
            "end_patch",
            lambda failure, *, source: record.end_patch(
                failure, source=source, ended_at=VERDICT_AT
            ),
        )
        m.setattr(runs, "READ_EVERY_RUN", every)
        if not every:

            def refused(*_a, **_k):
                raise AssertionError("Store.load_all called: every run read")

            m.setattr(rr.Store, "load_all", refused)
        m.setenv("COLUMNS", "250")
        res = CliRunner().invoke(cli, [*args, "--store", store.root])
    exc = res.exception
    if exc is not None and not isinstance(exc, SystemExit | rr.RunrecError):
        raise exc
    return res.exit_code, res.stdout, res.stderr, repr(exc) if exc is not None else None


def _same(world, monkeypatch, *args):
    fast = _run(world, monkeypatch, False, *args)
    full = _run(world, monkeypatch, True, *args)
    assert fast == full, f"runrec {' '.join(args)}: the index path differs from reading every run"
    return fast


LS_CASES = [
    ["--limit", "5"],
    ["--limit", "1"],
    ["--limit", "12"],
    ["--limit", "40"],
    ["--limit", "500"],
    ["--limit", "4", "--json"],
    ["--limit", "3", "--state", "failed"],
    ["--limit", "3", "--state", "running"],
    ["--limit", "6", "--state", "running", "--state", "submitted"],
    ["--limit", "8", "--state", "succeeded", "--state", "cancelled"],
    ["--limit", "4", "--name", "train"],
    ["--limit", "4", "--name", "broken"],
    ["--limit", "4", "--name", "nothing-is-called-this"],
    ["--limit", "3", "--where", "suspect or retired"],
    ["--limit", "3", "--where", "metrics.acc > 0.5"],
    ["--limit", "2", "--where", 'state == "failed"', "--json"],
    ["--limit", "3", "--where", "is_rerun", "--columns", "run_id,name,rerun_of,state"],
    ["--limit", "5", "--columns", "run_id,state,cause,suspect,retired,metrics.acc,tags.team"],
    ["--limit", "5", "--columns", "run_id,metrics.no_such"],
    ["--limit", "5", "--where", "metrics.acc > 2"],
    ["--limit", "3", "--negative"],
    ["--limit", "3", "--negative", "--json"],
    ["--limit", "2", "--negative", "--where", "metrics.acc < 0.9"],
    ["--limit", "2", "--state", "failed", "--where", "cause != null", "--columns", "run_id,cause"],
]


@pytest.mark.parametrize("args", LS_CASES, ids=lambda a: " ".join(a))
def test_ls_limit_is_what_reading_every_run_prints(world, monkeypatch, args):
    code, out, _, error = _same(world, monkeypatch, "ls", *args)
    if "no_such" in " ".join(args):
        assert "unknown column 'metrics.no_such'" in error
    else:
        assert code == 0 and out  # a table, JSON, or "no runs match."


@pytest.mark.parametrize("args", [["--limit", "7"], ["--limit", "4", "--state", "failed"]])
def test_ls_limit_in_small_steps_is_the_same(world, monkeypatch, args):
    """Rows sorted a few at a time (``newest.FIRST_K``): every step of the walk is taken."""
    monkeypatch.setattr(newest, "FIRST_K", 2)
    _same(world, monkeypatch, "ls", *args)


def test_ls_limit_shows_families_flags_and_verdicts(world, monkeypatch):
    """What the compared output holds, against the store's ground truth."""
    store, _, ids = world
    code, out, err, _ = _run(world, monkeypatch, False, "ls", "--limit", "60", "--json")
    assert code == 0, err
    import json

    rows = json.loads(out)
    by = {r["run_id"]: r for r in rows}
    order = [r["run_id"] for r in rows]
    # a rerun right after its original, the rerun's rerun after it (not at its created_at)
    i = order.index(ids["F"])
    assert order[i : i + 3] == [ids["F"], ids["R1"], ids["R2"]]
    assert order.index(ids["OLD_RERUN"]) == order.index(ids["OLD"]) + 1
    for k in ("A", "B", "C", "G"):  # built on the retired dataset: directly, by artifact,
        assert by[ids[k]]["trust"] == "SUSPECT", k  # by content, through a promoted version
    assert by[ids["RETIRED"]]["trust"] == "RETIRED"
    assert by[ids["GONE"]]["state"] == "failed" and by[ids["GONE"]]["cause"] == "killed"
    assert by[ids["NEVER"]]["state"] == "submitted"
    assert by[ids["OLD"]]["trust"] is None


@pytest.mark.parametrize(
    "who", ["A", "B", "C", "G", "F", "R2", "RETIRED", "NEGATIVE", "GONE", "NEVER", "OLD"]
)
def test_show_is_what_reading_every_run_prints(world, monkeypatch, who):
    _, _, ids = world
    code, out, _, _ = _same(world, monkeypatch, "show", ids[who])
    assert code == 0
    if who in ("A", "B", "C", "G"):
        assert "SUSPECT" in out and "train.csv" in out
    if who == "RETIRED":
        assert "this run was retired" in out
    if who == "GONE":
        assert "failed (killed)" in out


@pytest.mark.parametrize("who", ["C", "G", "OLD"])
def test_openlineage_export_flags_are_the_same(world, monkeypatch, who):
    _, _, ids = world
    code, out, _, _ = _same(world, monkeypatch, "export", ids[who], "--format", "openlineage")
    assert code == 0 and ('"trust"' in out) == (who != "OLD")


@pytest.mark.parametrize("who", ["A", "B", "C", "G", "RETIRED", "OLD"])
def test_json_export_trust_is_the_same(world, monkeypatch, who):
    """``export --format json``'s trust section (flags on the run, its inputs, its artifacts,
    its promoted versions) from the run's ancestry equals the one from every run."""
    import json

    store, _, ids = world
    code, out, _, _ = _same(world, monkeypatch, "export", ids[who])
    assert code == 0
    trust = json.loads(out)["trust"]
    if who in ("A", "B", "C", "G"):  # built on the retired dataset
        assert [f["kind"] for f in trust["run"]] == ["suspect"], trust
    if who == "A":  # it read the retired dataset itself: the input is retired
        assert any(f["kind"] == "retired" for v in trust["inputs"].values() for f in v["flags"])
    if who == "B":  # its promoted version is suspect too
        assert [p["name"] for p in trust["promotions"]] == ["best-model"], trust
        assert [f["kind"] for f in trust["promotions"][0]["flags"]] == ["suspect"], trust
    if who == "RETIRED":
        assert [f["kind"] for f in trust["run"]] == ["retired"], trust
    if who == "OLD":
        assert trust["run"] == [] and trust["inputs"] == {} and trust["artifacts"] == {}


@pytest.fixture(scope="module")
def ghost_world(world, tmp_path_factory):
    """The world with run A's model retired and then run A deleted by hand: the retired
    artifact lives on only through B, which consumed it, and reaches C (which read a file with
    its content) by content."""
    store, snapshot, ids = world
    _rmtree(store.root)
    shutil.copytree(snapshot, store.root, symlinks=True)
    retire.retire(store, f"{ids['A']}:model", state="withdrawn", reason="leaked test data")
    shutil.rmtree(layout.run_dir(store.root, ids["A"]))
    ghost = tmp_path_factory.mktemp("ghost") / "snapshot"
    shutil.copytree(store.root, ghost, symlinks=True)
    return store, ghost, ids


@pytest.mark.parametrize("who", ["B", "C"])
def test_a_retired_artifact_whose_run_is_gone_still_flags_by_content(ghost_world, monkeypatch, who):
    _, _, ids = ghost_world
    code, out, _, _ = _same(ghost_world, monkeypatch, "show", ids[who])
    assert code == 0 and f"upstream {ids['A'][:12]}:model" in out
    _same(ghost_world, monkeypatch, "ls", "--limit", "50")


def test_an_unreadable_version_of_a_listed_run_is_warned_about_the_same(
    world, monkeypatch, tmp_path
):
    """A garbage version file in the newest run: the same warning (path and message), the
    rest of the run listed from what reads, both ways."""
    store, snapshot, ids = world
    _rmtree(store.root)
    shutil.copytree(snapshot, store.root, symlinks=True)
    d = layout.run_dir(store.root, ids["NEVER"])
    bad = os.path.join(d, "v009001-000000000000.msgpack.zst")
    with open(bad, "wb") as f:
        f.write(b"not zstd")
    damaged = tmp_path / "snapshot"
    shutil.copytree(store.root, damaged, symlinks=True)
    code, out, err, _ = _same((store, damaged, ids), monkeypatch, "ls", "--limit", "3")
    assert code == 0 and ids["NEVER"][:10] in out
    assert f"skipped unreadable record file {bad}" in " ".join(err.split())
