"""The flat run view, rr.query, the derived index and the query commands, on real runs of the
local backend in a real git repository (and, for the index's own rules, real stores written
with Store.write_version)."""

import csv
import io
import json
import os
import subprocess
import sys
import threading

import jobfns
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from helpers import git, run_cli

import runrec_cluster as rr
from runrec_cluster.query.columns import BASE_COLUMNS
from runrec_cluster.query.index import INDEX_FILE, Index
from runrec_cluster.record import ConfigEntry, to_patch
from runrec_cluster.store import layout


@pytest.fixture(scope="module")
def swept(tmp_path_factory):
    """A sweep of 4 real runs (lr 0.1, 0.01, 0.01, 0.5) and one failed run, in a dirty repo."""
    base = tmp_path_factory.mktemp("q")
    repo = base / "repo"
    repo.mkdir()
    git(repo, "init", "-q", "-b", "main")
    (repo / "train.py").write_text("x = 1\n")
    git(repo, "add", ".")
    git(repo, "commit", "-qm", "first")
    (repo / "train.py").write_text("x = 2\n")
    store = rr.Store(base / "store")
    ex = rr.Executor(backend="local", store=store, name="sweep", cwd=repo)
    hs = ex.map_array(
        jobfns.train, [{"lr": 0.1}, {"lr": 0.01}, {"lr": 0.01, "epochs": 5}, {"lr": 0.5}]
    )
    bad = rr.Executor(backend="local", store=store, name="broken", cwd=repo).submit(
        jobfns.fail, "nope"
    )
    for h in [*hs, bad]:
        h.wait(timeout=120)
    return store, hs, bad


def test_query_dataframe_has_the_flat_columns(swept):
    store, hs, bad = swept
    df = rr.query(store)
    assert len(df) == 5
    for c in BASE_COLUMNS:
        assert c in df.columns, c
    assert list(df.columns[: len(BASE_COLUMNS)]) == list(BASE_COLUMNS)
    by = df.set_index("run_id")
    r0 = by.loc[hs[0].run_id]
    assert r0["state"] == "succeeded" and r0["backend"] == "local" and r0["sweep_index"] == 0
    assert r0["config.lr"] == 0.1 and r0["config.epochs"] == 3 and r0["metrics.acc"] == 0.9
    assert r0["config.seed"] == 1234  # generated inside the job by log_config
    assert bool(r0["code_dirty"]) is True and len(r0["code_commit"]) == 40
    assert r0["node"] and r0["python_version"] and r0["duration_s"] > 0
    assert r0["packages.runrec-cluster"] == rr.__version__
    assert r0["created_at"].endswith("+00:00")
    rb = by.loc[bad.run_id]
    assert rb["state"] == "failed" and rb["cause"] == "code_error"
    assert rb["failure_type"] == "ValueError" and bool(rb["negative"]) is True
    assert bool(rb["retired"]) is False and bool(rb["suspect"]) is False
    assert pd.isna(rb["sweep_id"]) and pd.isna(rb["metrics.acc"])
    assert r0["sweep_id"] == hs[0].record().sweep_id


def test_where_and_columns(swept):
    store, hs, bad = swept
    df = rr.query(
        store, where="config.lr == 0.01 and metrics.acc > 0.5", columns="run_id,config.epochs"
    )
    assert sorted(df["run_id"]) == sorted([hs[1].run_id, hs[2].run_id])
    assert list(df.columns) == ["run_id", "config.epochs"]
    df = rr.query(store, 'state == "failed" or config.lr >= 0.5', columns=["name", "config.epochs"])
    assert sorted(df["name"]) == ["broken", "sweep"]
    assert df.set_index("name")["config.epochs"].isna().to_dict() == {
        "broken": True,
        "sweep": False,
    }
    with pytest.raises(rr.ExpressionError, match="unknown column 'nothing.here'"):
        rr.query(store, columns=["name", "nothing.here"])
    t = rr.query(store, "config.lr < 0.05", columns=["run_id", "metrics.acc"], as_arrow=True)
    assert isinstance(t, pa.Table) and t.num_rows == 2
    assert t.schema.field("metrics.acc").type == pa.float64()
    with pytest.raises(rr.ConfigError, match=r"(?s)found 'and'.*\n  \s*\^"):
        rr.query(store, "config.lr > and")


def test_cli_ls_where_columns_sort(swept):
    store, hs, bad = swept
    out = run_cli(
        "ls",
        "--store",
        store.root,
        "--where",
        "config.lr < 0.2 and state == 'succeeded'",
        "--columns",
        "run_id,config.lr,metrics.acc",
        "--sort",
        "metrics.acc:desc",
        "--json",
    )
    assert out.returncode == 0, out.stderr
    rows = json.loads(out.stdout)
    assert [r["run_id"] for r in rows][0] in (hs[1].run_id, hs[2].run_id)
    assert [r["metrics.acc"] for r in rows] == [0.99, 0.99, 0.9]
    assert set(rows[0]) == {"run_id", "config.lr", "metrics.acc"}
    out = run_cli(
        "ls", "--store", store.root, "--columns", "name,state,config.lr", "--sort", "-config.lr"
    )
    assert out.returncode == 0, out.stderr
    lines = [ln.split() for ln in out.stdout.strip().splitlines()]
    assert lines[0] == ["name", "state", "config.lr"]
    assert [ln[2] for ln in lines[1:]] == ["0.5", "0.1", "0.01", "0.01", "-"]  # missing last
    out = run_cli("ls", "--store", store.root, "--where", "state == 'failed'")
    assert out.returncode == 0 and "broken" in out.stdout and "sweep" not in out.stdout
    bad_expr = run_cli("ls", "--store", store.root, "--where", "config.lr >> 1")
    assert bad_expr.returncode == 2 and "Traceback" not in bad_expr.stderr  # a usage error
    assert "expected a column name or a value, found '>'" in bad_expr.stderr
    assert "  config.lr >> 1\n" in bad_expr.stderr and "\n             ^\n" in bad_expr.stderr


def test_cli_table_formats(swept, tmp_path):
    store, hs, bad = swept
    out = run_cli(
        "table",
        "--store",
        store.root,
        "--where",
        "state == 'succeeded'",
        "--columns",
        "run_id,config.lr,metrics.acc",
        "--sort",
        "metrics.acc",
    )
    assert out.returncode == 0, out.stderr
    rows = list(csv.DictReader(io.StringIO(out.stdout)))
    assert len(rows) == 4 and rows[0]["metrics.acc"] == "0.5"
    js = tmp_path / "t.json"
    out = run_cli("table", "--store", store.root, "--format", "json", "-o", str(js))
    assert out.returncode == 0, out.stderr
    doc = json.loads(js.read_text())
    assert len(doc) == 5 and {r["state"] for r in doc} == {"succeeded", "failed"}
    failed = next(r for r in doc if r["state"] == "failed")
    assert failed["metrics.acc"] is None and failed["retired"] is False
    pqf = tmp_path / "t.parquet"
    out = run_cli(
        "table",
        "--store",
        store.root,
        "--format",
        "parquet",
        "-o",
        str(pqf),
        "--where",
        "config.lr == 0.01",
    )
    assert out.returncode == 0, out.stderr
    t = pq.read_table(pqf)
    assert t.num_rows == 2 and "config.lr" in t.column_names
    assert run_cli("table", "--store", store.root, "--format", "parquet").returncode == 2


def test_cli_compare(swept):
    store, hs, bad = swept
    sw = hs[0].record().sweep_id
    out = run_cli("compare", "--store", store.root, sw[:12], "--json")
    assert out.returncode == 0, out.stderr
    doc = json.loads(out.stdout)
    assert doc["sweep_id"] == sw
    assert doc["varied"] == ["config.epochs", "config.lr"]  # seed is the same everywhere
    assert doc["sorted_by"] == "metrics.acc:desc"
    assert [r["metrics.acc"] for r in doc["runs"]] == [0.99, 0.99, 0.9, 0.5]
    out = run_cli("compare", "--store", store.root, sw[:12], "--sort", "config.lr")
    assert out.returncode == 0, out.stderr
    assert "varied: config.epochs, config.lr" in out.stdout
    body = out.stdout.strip().splitlines()[2:]
    assert [ln.split()[4] for ln in body] == ["0.01", "0.01", "0.1", "0.5"]
    out = run_cli("compare", "--store", store.root, "zzzz")
    assert out.returncode == 1 and "no sweep id starts with" in out.stderr


def test_cli_index_and_missing_extra(swept):
    store, hs, bad = swept
    out = run_cli("index", "--store", store.root, "--rebuild")
    assert out.returncode == 0, out.stderr
    assert "rebuilt" in out.stdout and "5 runs (5 read" in out.stdout
    code = (
        "import sys; sys.modules['pandas'] = None\n"
        "import runrec_cluster as rr\n"
        f"rr.query({store.root!r})\n"
    )
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert p.returncode == 1 and "pip install 'runrec-cluster[query]'" in p.stderr


# ---------------------------------------------------------------------------------------------
# The index's own rules, on stores written directly (many runs, fast)
# ---------------------------------------------------------------------------------------------


def _write_run(store, i, lr=0.01, acc=None, state="succeeded"):
    rid = layout.new_id()
    store.write_version(
        rid,
        "launch",
        to_patch(
            run_id=rid,
            name=f"r{i}",
            sweep_index=i,
            config={"lr": ConfigEntry(value=lr, source="given")},
        ),
    )
    store.write_version(
        rid,
        "end",
        {
            "state": state,
            "state_source": "job",
            "metrics": {"acc": acc if acc is not None else i / 100},
        },
    )
    return rid


def test_index_is_incremental_and_derived(store, tmp_path, monkeypatch):
    from runrec_cluster.query import index as index_mod

    ids = [_write_run(store, i) for i in range(30)]
    idx = Index(store)
    st = idx.update()
    assert (st.read, st.runs, st.rebuilt) == (30, 30, True)
    assert os.path.exists(os.path.join(store.root, "index", INDEX_FILE))
    # runs written within SLACK_NS of the newest change are read once more, then settle
    monkeypatch.setattr(index_mod, "SLACK_NS", 0)
    reads = [idx.update(full=True).read for _ in range(3)]
    assert reads[-1] == 0, f"an unchanged store reads nothing in the end: {reads}"
    new = _write_run(store, 99, lr="fast")  # a string where other runs have numbers
    store.write_version(ids[3], "annotate", {"metrics": {"acc": 0.123}})
    st = idx.update()
    assert st.read == 2 and st.runs == 31
    df = rr.query(store, "config.lr == 'fast' or metrics.acc == 0.123", columns="run_id,config.lr")
    assert sorted(df["run_id"]) == sorted([new, ids[3]])
    assert set(map(str, df["config.lr"])) == {"fast", "0.01"}
    # deleting a run's directory drops it; deleting the index loses nothing
    import shutil

    shutil.rmtree(layout.run_dir(store.root, ids[0]))
    assert idx.update().removed == 0, "the journal cannot tell a deletion by hand"
    assert idx.update(full=True).removed == 1, "a full scan can"
    before = rr.query(store).sort_values("run_id").reset_index(drop=True)
    os.unlink(idx.path)
    after = rr.query(store).sort_values("run_id").reset_index(drop=True)
    assert before.equals(after) and len(after) == 30
    # an index elsewhere (a local cache for a store on NFS)
    other = rr.query(store, "config.lr == 0.01", index_dir=tmp_path / "cache")
    assert len(other) == 29
    assert os.listdir(tmp_path / "cache")


def test_hot_runs_settle(store, monkeypatch):
    from runrec_cluster.query import index as index_mod

    for i in range(5):
        _write_run(store, i)
    idx = Index(store)
    assert idx.update().read == 5
    assert idx.update(full=True).read == 5  # just written: read again (same-tick writes)
    monkeypatch.setattr(index_mod, "SLACK_NS", 0)  # as if 2 s had passed since
    idx.update(full=True)
    assert idx.update(full=True).read == 0


def _journal_files(store):
    base = os.path.join(store.root, layout.CHANGES_DIR)
    return [
        os.path.join(base, b, f)
        for b in os.listdir(base)
        for f in os.listdir(os.path.join(base, b))
    ]


def test_journal_finds_new_versions_without_a_stat_per_run(store, monkeypatch):
    ids = [_write_run(store, i) for i in range(12)]
    # one journal file for this process, one line per version, after the version is in place
    files = _journal_files(store)
    assert len(files) == 1 and os.path.basename(files[0]).split("-")[1] == str(os.getpid())
    with open(files[0]) as f:
        lines = f.read().splitlines()
    assert lines == [f"{rid} {seq}" for rid in ids for seq in (1, 2)]
    idx = Index(store)
    assert idx.update().full_scan  # no index yet: a full scan
    st = idx.update()
    assert (st.full_scan, st.scanned, st.read) == (False, 0, 0)
    store.write_version(ids[5], "annotate", {"metrics": {"acc": 0.5}})
    new = _write_run(store, 50)
    st = idx.update()
    assert (st.full_scan, st.scanned, st.read, st.runs) == (False, 0, 2, 13)
    assert set(rr.query(store, "metrics.acc == 0.5", refresh=False)["run_id"]) == {ids[5], new}
    # a line being written (no newline yet) is read once it is whole
    with open(files[0], "ab") as f:
        f.write(f"{ids[7]} 3".encode())
    assert idx.update().read == 0
    with open(files[0], "ab") as f:
        f.write(b"\n")
    # ... and a line naming a version this listing does not show yet keeps the run pending
    assert idx.update().read == 1
    assert idx.update().read == 1, "still pending: version 3 of the run is not there"
    store.write_version(ids[7], "annotate", {"metrics": {"acc": 0.7}})
    assert idx.update().read == 1
    assert idx.update().read == 0, "settled once the version is there"
    # a version written without its journal line (writer killed in between) is found by the
    # periodic full scan
    import shutil

    shutil.rmtree(os.path.join(store.root, layout.CHANGES_DIR))
    store.write_version(ids[0], "annotate", {"metrics": {"acc": 0.9}})  # into the deleted file
    shutil.rmtree(os.path.join(store.root, layout.CHANGES_DIR), ignore_errors=True)
    assert idx.update().read == 0
    monkeypatch.setenv("RUNREC_INDEX_FULL_SCAN_S", "0")
    st = idx.update()
    assert st.full_scan and st.read >= 1  # (with the hot runs of the first full scan)
    assert list(rr.query(store, "metrics.acc == 0.9", refresh=False)["run_id"]) == [ids[0]]


def test_journal_of_a_forked_writer_is_its_own(store):
    """A forked child gets a journal file of its own: one writer per file, always."""
    rid = _write_run(store, 0)
    pid = os.fork()
    if pid == 0:
        try:
            store.write_version(rid, "annotate", {"metrics": {"child": 1}})
        finally:
            os._exit(0)
    os.waitpid(pid, 0)
    store.write_version(rid, "annotate", {"metrics": {"parent": 1}})
    files = _journal_files(store)
    pids = sorted(os.path.basename(f).split("-")[1] for f in files)
    assert pids == sorted([str(os.getpid()), str(pid)])
    assert Index(store).update().runs == 1
    assert (
        rr.query(store, "metrics.child == 1 and metrics.parent == 1", refresh=False).shape[0] == 1
    )


def test_damaged_index_is_rebuilt(store):
    _write_run(store, 1)
    idx = Index(store)
    idx.update()
    os.chmod(idx.path, 0o644)
    with open(idx.path, "wb") as f:
        f.write(b"not arrow")
    assert len(rr.query(store)) == 1


def test_concurrent_writers_and_readers(store):
    """Writers add runs while two updaters and a reader run: the reader always sees a whole
    index, and once the writers stop one update has every run."""
    for i in range(20):
        _write_run(store, i)
    stop = threading.Event()
    errors = []

    def writer():
        i = 100
        while not stop.is_set():
            _write_run(store, i)
            i += 1

    def updater():
        try:
            while not stop.is_set():
                Index(store).update()
        except Exception as exc:  # pragma: no cover - the assertion below names it
            errors.append(exc)

    def reader():
        try:
            while not stop.is_set():
                df = rr.query(store, "metrics.acc >= 0", refresh=False)
                assert df["run_id"].is_unique
        except Exception as exc:  # pragma: no cover
            errors.append(exc)

    ts = [threading.Thread(target=f) for f in (writer, writer, updater, updater, reader)]
    for t in ts:
        t.start()
    import time

    time.sleep(3)
    stop.set()
    for t in ts:
        t.join()
    assert not errors, errors
    n = sum(1 for _ in store.run_ids())
    Index(store).update()
    assert len(rr.query(store, refresh=False)) == n
    assert not [f for f in os.listdir(os.path.join(store.root, "index")) if f.startswith(".tmp-")]


def test_new_runs_go_to_a_delta_file_folded_in_when_it_grows(store, monkeypatch):
    """A warm update writes only the changed rows (a small delta file beside the index); the
    delta is folded into a new base when it grows or runs vanish; a delta left from an older
    base is ignored. Queries always see each run once, as a rebuild would."""
    import shutil

    from runrec_cluster.query import index as index_mod
    from runrec_cluster.query.index import DELTA_FILE

    ids = [_write_run(store, i) for i in range(30)]
    idx = Index(store)
    idx.update()
    base_ino = os.stat(idx.path).st_ino
    delta = os.path.join(idx.dir, DELTA_FILE)
    assert not os.path.exists(delta)

    def same_as_rebuild():
        ref_dir = os.path.join(store.root, "ref-index")
        shutil.rmtree(ref_dir, ignore_errors=True)
        for where in (
            None,
            "metrics.acc > 0.1",
            "metrics.extra == 1 or config.lr == 'fast'",
            "not (config.lr == 0.01)",
        ):
            got = rr.query(store, where, refresh=False).sort_values("run_id")
            want = rr.query(store, where, index_dir=ref_dir).sort_values("run_id")
            assert list(got["run_id"]) == list(want["run_id"]), where  # each run once
            if where is None:
                drop = ["_dir_mtime_ns"]
                assert (
                    got.drop(columns=drop, errors="ignore")
                    .reset_index(drop=True)
                    .equals(want.drop(columns=drop, errors="ignore").reset_index(drop=True))
                )
        return rr.query(store, refresh=False)

    new = [_write_run(store, 100 + i, lr="fast") for i in range(3)]
    store.write_version(ids[4], "annotate", {"metrics": {"acc": 0.404, "extra": 1}})
    st = idx.update()
    assert (st.read, st.runs) == (4, 33)
    assert os.stat(idx.path).st_ino == base_ino, "the base file is not rewritten"
    assert os.path.exists(delta)
    got = same_as_rebuild()
    assert got.loc[got.run_id == ids[4], "metrics.acc"].item() == 0.404
    assert len(rr.query(store, "config.lr == 'fast'", refresh=False)) == 3
    # a second change to a run already in the delta replaces its delta row
    store.write_version(new[0], "annotate", {"metrics": {"acc": 0.5}})
    assert idx.update().runs == 33
    same_as_rebuild()
    # the delta grows past its limit: folded into a new base, the delta file goes
    stale = delta + ".old"
    shutil.copy(delta, stale)
    monkeypatch.setattr(index_mod, "DELTA_MIN_ROWS", 2)
    monkeypatch.setattr(index_mod, "DELTA_SHARE", 1000)
    for i in range(3):
        _write_run(store, 200 + i)
    assert idx.update().runs == 36
    assert not os.path.exists(delta) and os.stat(idx.path).st_ino != base_ino
    same_as_rebuild()
    # a delta written for the old base (a concurrent updater's, say) is ignored
    os.replace(stale, delta)
    assert len(rr.query(store, refresh=False)) == 36
    same_as_rebuild()
    # a vanished run (a full scan) folds everything into a new base as well
    monkeypatch.setattr(index_mod, "DELTA_MIN_ROWS", 2000)
    _write_run(store, 300)
    idx.update()
    assert os.path.exists(delta)
    shutil.rmtree(layout.run_dir(store.root, ids[0]))
    st = idx.update(full=True)
    assert st.removed == 1 and st.runs == 36 and not os.path.exists(delta)
    same_as_rebuild()


def test_warm_queries_read_only_what_they_need(store, tmp_path, monkeypatch):
    """An update that finds nothing new reads no column of the index (the files' metadata and
    the journal only); a query that does not ask for run ids reads none of the base's, also
    with a delta superseding base rows (their positions are in the delta's metadata). The
    answers are those of an index rebuilt elsewhere from the records."""
    from runrec_cluster.expr import parse

    ids = [_write_run(store, i) for i in range(30)]
    idx = Index(store)
    idx.update()
    store.write_version(ids[3], "annotate", {"metrics": {"acc": 0.77}})
    store.write_version(ids[4], "annotate", {"metrics": {"acc": 0.01}})
    new = _write_run(store, 60, lr=0.5, acc=0.78)
    st = idx.update()
    assert (st.read, st.runs) == (3, 31)
    reads: list[tuple[str, frozenset[str] | None]] = []
    real_read = Index._read

    def spy(self, path, columns=None):
        reads.append((os.path.basename(path), None if columns is None else frozenset(columns)))
        return real_read(self, path, columns)

    monkeypatch.setattr(Index, "_read", spy)
    st = Index(store).update()
    assert (reads, st.read, st.runs) == ([], 0, 31), "a quiet update reads no column"
    q = Index(store).select(parse("metrics.acc > 0.02"), columns=["config.lr", "metrics.acc"])
    base_reads = [cols for name, cols in reads if name == INDEX_FILE]
    assert base_reads and all(c is not None and "run_id" not in c for c in base_reads)
    truth = Index(store, tmp_path / "rebuilt")
    truth.update(rebuild=True)
    cols = ["run_id", "config.lr", "metrics.acc"]
    want = truth.select(parse("metrics.acc > 0.02"), columns=cols)
    # runs 3..29 match (acc i/100), less run 4 (now 0.01: its base row is hidden), plus the new
    assert len(q) == len(want) == 27
    assert new in set(want["run_id"]) and ids[4] not in set(want["run_id"])
    assert 0.04 not in set(q["metrics.acc"]) and 0.77 in set(q["metrics.acc"])
    assert sorted(zip(q["metrics.acc"], q["config.lr"], strict=True)) == sorted(
        zip(want["metrics.acc"], want["config.lr"], strict=True)
    )
