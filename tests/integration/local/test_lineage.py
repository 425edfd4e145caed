"""Lineage, promotion, retirement, negative results: real runs on the local backend, real files.

The chain (built once per module, then copied for every test that changes the store):

    data/train.csv (v1) ─▶ A train ─▶ A:model ─▶ B finetune (rr.Artifact at submit) ─▶ B:model ─▶ best-model@v1
                                          └────▶ C finetune (run.use_input in the job) ─▶ C:model
    data/train.csv (v2) ─▶ C
    F broken (failed, logged a model)        D dir-model (a directory artifact)
"""

from __future__ import annotations

import json
import os
import re
import shutil
import stat
import threading

import cloudpickle
import lineage_jobs
import pytest
from helpers import git, run_cli

import runrec_cluster as rr
from runrec_cluster.capture import inputs as capture_inputs
from runrec_cluster.lineage import graph as lineage
from runrec_cluster.lineage import promote, retire
from runrec_cluster.lineage import records as lineage_records
from runrec_cluster.lineage import refs as lineage_refs
from runrec_cluster.lineage import trust as lineage_trust
from runrec_cluster.lineage.annotate import annotate, negatives
from runrec_cluster.store import layout
from runrec_cluster.store import promoted as store_promoted

cloudpickle.register_pickle_by_value(lineage_jobs)


class Chain:
    def __init__(self, work, store, ids):
        self.work = work
        self.store = store
        self.__dict__.update(ids)

    @property
    def data(self):
        return str(self.work / "data" / "train.csv")


@pytest.fixture(scope="module")
def chain(tmp_path_factory):
    work = tmp_path_factory.mktemp("work")
    git(work, "init", "-q", "-b", "main")
    (work / "train.py").write_text("print('train')\n")
    git(work, "add", ".")
    git(work, "commit", "-qm", "first")
    git(work, "remote", "add", "origin", "https://git.example.org/lab/proj.git")
    (work / "data").mkdir()
    (work / "out").mkdir()
    data = work / "data" / "train.csv"
    data.write_text("x,y\n1,0\n2,1\n3,1\n")
    store = rr.Store(work / "store")
    old = os.getcwd()
    os.chdir(work)
    try:
        ex = rr.Executor(backend="local", store=store)
        a = ex.submit(
            lineage_jobs.train,
            str(data),
            str(work / "out" / "a.json"),
            0.91,
            0.30,
            inputs=[rr.Dataset(data, version="v1")],
            name="train",
        )
        f = ex.submit(lineage_jobs.broken, str(work / "out" / "f.json"), name="broken")
        d = ex.submit(lineage_jobs.model_dir, str(work / "out" / "dir-model"), name="dir-model")
        a.result(timeout=120)
        b = ex.submit(
            lineage_jobs.finetune,
            None,
            str(work / "out" / "b" / "model.json"),
            0.93,
            0.20,
            inputs=[rr.Artifact(f"{a.run_id[:12]}:model")],
            name="finetune",
        )
        data.write_text("x,y\n1,1\n2,0\n3,1\n")  # a corrected v2 under the same path
        c = ex.submit(
            lineage_jobs.finetune,
            f"{a.run_id}:model",
            str(work / "out" / "c" / "model.json"),
            0.80,
            0.50,
            inputs=[rr.Dataset(data, version="v2")],
            name="finetune-c",
        )
        for h in (b, c, d):
            h.result(timeout=120)
        with pytest.raises(rr.JobFailed):
            f.result(timeout=120)
        p = promote.promote(
            store, b.run_id, "model", to="best-model", criteria="val_acc >= 0.9 and loss < 1"
        )
        assert p.version == 1
    finally:
        os.chdir(old)
    return Chain(
        work, store, {"A": a.run_id, "B": b.run_id, "C": c.run_id, "F": f.run_id, "D": d.run_id}
    )


@pytest.fixture
def copy(chain, tmp_path):
    """The chain's store, copied: a test may retire, annotate, promote, tamper."""
    dst = tmp_path / "store"
    shutil.copytree(chain.store.root, dst, symlinks=True)
    return Chain(chain.work, rr.Store(dst), {k: v for k, v in vars(chain).items() if k.isupper()})


def cli(store, *args):
    return run_cli(*args, "--store", store.root, env={"COLUMNS": "250"})


def nodes(graph, ids):
    return {graph.nodes[i].id for i in ids}


# ---------------------------------------------------------------------------------------------
# artifacts as inputs
# ---------------------------------------------------------------------------------------------


def test_artifact_inputs_link_to_the_producing_run(chain):
    a, b, c = (chain.store.load(x) for x in (chain.A, chain.B, chain.C))
    (inp,) = b.inputs
    assert inp.kind == "artifact" and inp.run_id == chain.A and inp.artifact == "model"
    assert inp.digest == a.artifacts[0].digest and inp.added_by == "submit"
    assert inp.path == a.artifacts[0].path
    used = [i for i in c.inputs if i.kind == "artifact"]
    assert len(used) == 1 and used[0].added_by == "job" and used[0].run_id == chain.A
    assert {i.version for i in c.inputs if i.kind == "dataset"} == {"v2"}


def test_artifact_references_are_refused_clearly(chain):
    s = chain.store
    before = sorted(s.run_ids())
    ex = rr.Executor(backend="local", store=s)
    with pytest.raises(rr.LineageError, match="no run id starts with"):
        ex.submit(lineage_jobs.finetune, None, "x", 1, 1, inputs=[rr.Artifact("0000000000:model")])
    with pytest.raises(
        rr.LineageError, match="no artifact named 'weights'.*its artifacts: 'model'"
    ):
        ex.submit(
            lineage_jobs.finetune, None, "x", 1, 1, inputs=[rr.Artifact(f"{chain.A}:weights")]
        )
    with pytest.raises(rr.LineageError, match="nothing is promoted as 'nope'"):
        ex.submit(lineage_jobs.finetune, None, "x", 1, 1, inputs=[rr.Artifact("nope@latest")])
    for bad in ("model", "../x:model", "a/b@v1", "best-model@3", ""):
        with pytest.raises(rr.LineageError):
            rr.Artifact(bad)
    assert sorted(s.run_ids()) == before  # nothing was written


# ---------------------------------------------------------------------------------------------
# lineage, both directions, every node
# ---------------------------------------------------------------------------------------------


def test_lineage_up_and_down_from_every_node(chain):
    s = chain.store
    g = lineage.build_graph(s)
    a_rec = s.load(chain.A)
    v1 = lineage_refs.dataset_node(a_rec.inputs[0].digest)
    v2 = lineage_refs.dataset_node(
        next(i.digest for i in s.load(chain.C).inputs if i.kind == "dataset")
    )
    A, B, C = (lineage_refs.run_node(x) for x in (chain.A, chain.B, chain.C))
    Am, Bm, Cm = (lineage_refs.artifact_node(x, "model") for x in (chain.A, chain.B, chain.C))
    P = lineage_refs.promoted_node("best-model", 1)

    def down(t):
        return set(g.reach(lineage.resolve_target(s, g, t), "down")) - {None}

    def up(t):
        return set(g.reach(lineage.resolve_target(s, g, t), "up"))

    algo, hexd = a_rec.inputs[0].digest.split(":")
    assert algo == "blake3"
    assert down(f"{algo}:{hexd[:10]}") == {
        v1,
        A,
        Am,
        B,
        Bm,
        C,
        Cm,
        P,
    }
    assert down(chain.A[:10]) == {A, Am, B, Bm, C, Cm, P}
    assert down(f"{chain.A[:10]}:model") == {Am, B, Bm, C, Cm, P}
    assert down(chain.B) == {B, Bm, P}
    assert down(f"{chain.B}:model") == {Bm, P}
    assert down("best-model@v1") == down("best-model@latest") == {P}
    assert up("best-model@v1") == {P, Bm, B, Am, A, v1}
    assert up(f"{chain.B}:model") == {Bm, B, Am, A, v1}
    assert up(chain.B) == {B, Am, A, v1}
    assert up(chain.C) == {C, Am, A, v1, v2}
    assert up(f"{chain.A}:model") == {Am, A, v1}
    assert up(chain.A) == {A, v1}
    # a path recorded with two contents is two nodes (v1 used by A, v2 by C)
    assert set(lineage.resolve_target(s, g, chain.data)) == {v1, v2}
    # a file elsewhere with a recorded content is found by its content
    elsewhere = chain.work / "copy-of-v2.csv"
    shutil.copyfile(chain.data, elsewhere)
    assert lineage.resolve_target(s, g, str(elsewhere)) == [v2]
    # depth
    assert set(g.reach([v1], "down", depth=2)) == {v1, A, Am}


def test_lineage_cli_tree_and_json(chain):
    s = chain.store
    r = cli(s, "lineage", "best-model@v1", "--up")
    assert r.returncode == 0, r.stderr
    out = r.stdout
    assert "made from (upstream) of promoted best-model@v1" in out
    for needle in (
        f"run {chain.B[:12]} finetune",
        f"artifact {chain.A[:12]}:model",
        "dataset ",
        "version v1",
    ):
        assert needle in out
    assert (
        out.index("promoted best-model")
        < out.index(f"run {chain.B[:12]}")
        < out.index(f"run {chain.A[:12]}")
    )
    r = cli(s, "lineage", chain.A[:12], "--down", "--json")
    doc = json.loads(r.stdout)
    assert doc["resolved"] == [f"run:{chain.A}"] and "up" not in doc
    assert "promoted:best-model@v1" in doc["nodes"]
    assert {"from": f"run:{chain.A}", "to": f"artifact:{chain.A}:model", "kind": "output"} in doc[
        "edges"
    ]
    kids = doc["down"][0]["children"]
    assert [k["node"] for k in kids] == [f"artifact:{chain.A}:model"]
    r = cli(s, "lineage", chain.data, "--depth", "1")
    assert r.returncode == 0 and r.stdout.count("made into (downstream) of dataset") == 2
    assert "more (raise --depth)" in r.stdout
    r = cli(s, "lineage", "no-such-thing")
    assert r.returncode == 1 and "matches no run" in r.stderr and "Traceback" not in r.stderr
    r = cli(s, "lineage", chain.A, "--depth", "-1")
    assert r.returncode == 2


def test_lineage_is_public_api_and_gives_what_the_cli_prints(chain):
    """rr.lineage: the walk the CLI prints, as data. The facts checked are the chain's own: B
    was submitted with A's model as its input, and the promoted version is B's model."""
    found = rr.lineage(chain.store, "best-model@v1", direction="up")
    assert found.resolved == ["promoted:best-model@v1"] and list(found.trees) == ["up"]
    shown = found.node_ids()
    for nid in (
        f"run:{chain.B}",
        f"artifact:{chain.B}:model",
        f"artifact:{chain.A}:model",
        f"run:{chain.A}",
    ):
        assert nid in shown
    assert f"run:{chain.C}" not in shown  # C used A's model too, but made nothing promoted
    down = rr.lineage(str(chain.store.root), chain.A[:12], direction="down")
    assert {"from": f"run:{chain.A}", "to": f"artifact:{chain.A}:model", "kind": "output"} in (
        down.to_json()["edges"]
    )
    r = cli(chain.store, "lineage", chain.A[:12], "--down", "--json")
    assert json.loads(r.stdout) == json.loads(json.dumps(down.to_json(), default=str))
    with pytest.raises(rr.LineageError, match="matches no run"):
        rr.lineage(chain.store, "no-such-thing")
    with pytest.raises(rr.ConfigError, match="direction"):
        rr.lineage(chain.store, chain.A, direction="sideways")


# ---------------------------------------------------------------------------------------------
# promotion
# ---------------------------------------------------------------------------------------------


def test_promotion_record_copy_and_verify(chain):
    s = chain.store
    (e,) = store_promoted.list_promotions(s, "best-model")
    p = e.promotion
    b = s.load(chain.B)
    assert p.run_id == chain.B and p.artifact == "model" and p.digest == b.artifacts[0].digest
    assert p.criteria == "val_acc >= 0.9 and loss < 1" and p.values == {
        "val_acc": 0.93,
        "loss": 0.2,
    }
    assert p.approved_by == p.promoted_by and p.approved_by  # defaults to the user
    assert p.promoted_at.tzinfo is not None
    copy = os.path.join(s.root, "promoted", "best-model", "v1", "files", "model.json")
    assert p.files == "files/model.json" and os.path.isfile(copy)
    assert stat.S_IMODE(os.stat(copy).st_mode) & 0o222 == 0  # read-only
    rec_file = os.path.join(s.root, "promoted", "best-model", "v1", "promotion.msgpack.zst")
    assert stat.S_IMODE(os.stat(rec_file).st_mode) & 0o222 == 0
    r = cli(s, "verify", "best-model")
    assert r.returncode == 0 and "best-model@v1: intact" in r.stdout
    r = cli(s, "promoted")
    assert r.returncode == 0 and "best-model@v1" in r.stdout and chain.B[:12] in r.stdout
    js = json.loads(cli(s, "promoted", "--json").stdout)
    assert js[0]["ref"] == "best-model@v1" and js[0]["values"]["val_acc"] == 0.93


def test_promotion_refused_on_unmet_criteria(copy):
    s = copy.store
    r = cli(
        s,
        "promote",
        copy.B,
        "model",
        "--to",
        "best-model",
        "--criteria",
        "val_acc >= 0.95 and loss < 1",
    )
    assert r.returncode == 1 and "Traceback" not in r.stderr
    assert "`val_acc >= 0.95` does not hold (val_acc = 0.93)" in r.stderr
    with pytest.raises(rr.PromotionError, match=r"`loss < 0\.1` does not hold \(loss = 0\.2\)"):
        promote.promote(
            s, copy.B, "model", to="best-model", criteria="val_acc >= 0.9 and loss < 0.1"
        )
    with pytest.raises(rr.PromotionError, match="metric 'f1', which run .* did not record"):
        promote.promote(s, copy.B, "model", to="best-model", criteria="f1 > 0.5")
    with pytest.raises(rr.PromotionError, match="cannot read"):
        promote.promote(
            s, copy.B, "model", to="best-model", criteria="__import__('os').system('true')"
        )
    # a criteria syntax error is a usage error, like a bad --where: exit 2 with the caret
    r = cli(s, "promote", copy.B, "model", "--to", "best-model", "--criteria", "val_acc = 0.9")
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert "cannot read the criteria: unknown operator '='" in r.stderr and "^" in r.stderr
    assert [e.version for e in store_promoted.list_promotions(s, "best-model")] == [1]


def test_promotion_refused_on_failed_run_and_missing_artifact(copy):
    s = copy.store
    r = cli(s, "promote", copy.F, "model", "--to", "broken-model")
    assert r.returncode == 1 and "failed (code_error: diverged at step 1200" in r.stderr
    assert "only a succeeded run can be promoted" in r.stderr
    with pytest.raises(rr.PromotionError, match="no artifact named 'weights'"):
        promote.promote(s, copy.B, "weights", to="x")
    assert not os.path.exists(os.path.join(s.root, "promoted", "broken-model"))


def test_promotion_refused_on_changed_artifact(copy, tmp_path, monkeypatch):
    s = copy.store
    monkeypatch.chdir(copy.work)
    monkeypatch.setenv("RUNREC_KEEP_ARTIFACTS_MAX_MB", "0")  # no kept copy to fall back on
    out = tmp_path / "m.json"
    h = rr.Executor(backend="local", store=s).submit(
        lineage_jobs.train, copy.data, str(out), 0.99, 0.1
    )
    h.result(timeout=120)
    out.write_text('{"weights": "edited by hand"}')
    r = cli(s, "promote", h.run_id, "model", "--to", "edited")
    assert r.returncode == 1 and "changed since the run recorded it" in r.stderr
    assert "Nothing was promoted" in r.stderr and "no kept copy (keeping copies is off" in r.stderr
    # the same check guards artifacts used as inputs
    with pytest.raises(rr.LineageError, match="changed since it was recorded"):
        rr.Executor(backend="local", store=s).submit(
            lineage_jobs.finetune, None, "x", 1, 1, inputs=[rr.Artifact(f"{h.run_id}:model")]
        )
    out.unlink()
    with pytest.raises(rr.PromotionError, match="is gone"):
        promote.promote(s, h.run_id, "model", to="edited")
    with pytest.raises(rr.LineageError, match="no longer exists"):
        capture_inputs.resolve_artifact_input(s, f"{h.run_id}:model")
    assert not os.path.exists(os.path.join(s.root, "promoted", "edited"))


def test_versions_are_taken_without_locks_by_concurrent_promoters(copy):
    s = copy.store
    got, errors = [], []

    def one():
        try:
            got.append(
                promote.promote(s, copy.B, "model", to="best-model", approved_by="ci").version
            )
        except Exception as exc:  # pragma: no cover - shown on failure
            errors.append(exc)

    threads = [threading.Thread(target=one) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors and sorted(got) == list(range(2, 10))
    assert all(c.intact for c in promote.verify(s, "best-model"))


def test_directory_artifact_is_copied_and_tampering_is_detected(copy):
    s = copy.store
    p = promote.promote(
        s, copy.D, "model", to="dir-model", criteria="val_acc > 0.9", approved_by="gate"
    )
    root = os.path.join(s.root, "promoted", "dir-model", "v1", p.files)
    assert os.path.isfile(os.path.join(root, "sub", "config.json")) and p.is_dir
    assert promote.verify(s, "dir-model", 1)[0].intact
    victim = os.path.join(root, "weights.bin")
    os.chmod(os.path.dirname(victim), 0o755)
    os.chmod(victim, 0o644)
    with open(victim, "ab") as f:
        f.write(b"!")
    r = cli(s, "verify", "dir-model@v1")
    assert r.returncode == 1 and "NOT INTACT" in r.stdout and p.digest in r.stdout
    r = cli(s, "verify", "dir-model@v7")
    assert r.returncode == 1 and "no promoted version dir-model@v7" in r.stderr
    # an interrupted promotion (a version directory without its record) is listed, not used
    os.mkdir(os.path.join(s.root, "promoted", "dir-model", "v2"))
    assert store_promoted.find_promotion(s, "dir-model").version == 1
    assert promote.promote(s, copy.D, "model", to="dir-model").version == 3
    r = cli(s, "promoted", "dir-model")
    assert "INCOMPLETE" in r.stdout and "dir-model@v3" in r.stdout


def test_a_promoted_version_is_an_input_and_a_node(copy, tmp_path, monkeypatch):
    s = copy.store
    monkeypatch.chdir(copy.work)
    h = rr.Executor(backend="local", store=s).submit(
        lineage_jobs.finetune,
        None,
        str(tmp_path / "e.json"),
        0.5,
        0.5,
        inputs=[rr.Artifact("best-model@latest")],
    )
    h.result(timeout=120)
    (inp,) = s.load(h.run_id).inputs
    assert inp.promoted == "best-model@v1" and inp.run_id == copy.B
    assert inp.path.startswith(os.path.join(s.root, "promoted", "best-model", "v1"))
    g = lineage.build_graph(s)
    assert lineage_refs.run_node(h.run_id) in g.reach(
        [lineage_refs.promoted_node("best-model", 1)], "down"
    )


# ---------------------------------------------------------------------------------------------
# retirement
# ---------------------------------------------------------------------------------------------


def test_withdrawing_the_dataset_marks_everything_downstream_suspect(copy, tmp_path, monkeypatch):
    s = copy.store
    v1 = s.load(copy.A).inputs[0].digest
    before = {p: open(p, "rb").read() for r in s.run_ids() for p in s.version_files(r)}
    # the path names two contents: refused, with the hashes to choose from
    r = cli(s, "retire", copy.data, "--state", "withdrawn", "--reason", "labels swapped")
    assert r.returncode == 1 and "names 2 things to retire" in r.stderr and v1 in r.stderr
    r = cli(
        s, "retire", v1, "--state", "withdrawn", "--reason", "labels of rows 2-3 swapped (DATA-17)"
    )
    assert r.returncode == 0, r.stderr
    out = r.stdout
    assert "withdrawn" in out and "SUSPECT (3 runs, 3 artifacts, 1 promoted version)" in out
    for rid in (copy.A, copy.B, copy.C):
        assert f"run {rid[:12]}" in out
    assert "promoted best-model@v1" in out and copy.F[:12] not in out
    (ret,) = lineage_records.list_retirements(s)
    assert ret.target == f"dataset:{v1}" and ret.reason.startswith("labels of rows") and ret.by
    assert layout.RUN_ID_RE.match(ret.id)
    assert os.path.isfile(os.path.join(s.root, "retirements", f"{ret.id}.msgpack.zst"))
    # nothing was rewritten: the same record files, byte for byte
    assert {p: open(p, "rb").read() for r in s.run_ids() for p in s.version_files(r)} == before

    rows = {x["run_id"]: x for x in json.loads(cli(s, "ls", "--json").stdout)}
    for rid in (copy.A, copy.B, copy.C):
        assert rows[rid]["trust"] == "SUSPECT" and rows[rid]["retirements"] == [ret.id]
    assert rows[copy.F]["trust"] is None and rows[copy.D]["trust"] is None
    table = cli(s, "ls").stdout
    assert "trust" in table.splitlines()[0] and table.count("SUSPECT") == 3

    show = cli(s, "show", copy.B).stdout
    assert "SUSPECT" in show.splitlines()[0] and "Trust" in show
    assert "labels of rows 2-3 swapped (DATA-17)" in show and ret.id in show
    lin = cli(s, "lineage", "best-model@v1", "--up").stdout
    assert (
        lin.count("SUSPECT") == 5 and "RETIRED withdrawn" in lin and f"retirement {ret.id}" in lin
    )
    assert "SUSPECT" in cli(s, "promoted").stdout

    # suspicion is computed at read time: a run made later from B's model is suspect too
    monkeypatch.chdir(copy.work)
    h = rr.Executor(backend="local", store=s).submit(
        lineage_jobs.finetune,
        None,
        str(tmp_path / "late.json"),
        0.99,
        0.01,
        inputs=[rr.Artifact(f"{copy.B}:model")],
    )
    h.result(timeout=120)
    t = lineage_trust.trust_for(s)
    assert t.marker(lineage_refs.run_node(h.run_id)) == "SUSPECT"
    assert t.marker(lineage_refs.run_node(copy.F)) == ""
    # and nothing suspect can be promoted
    with pytest.raises(
        rr.PromotionError, match="SUSPECT .*a retired or suspect run cannot be promoted"
    ):
        promote.promote(s, copy.B, "model", to="best-model")


def test_retire_a_run_an_artifact_and_a_promoted_version(copy):
    s = copy.store
    r = cli(s, "retire", copy.C, "--state", "invalidated", "--reason", "seed not fixed")
    assert r.returncode == 0 and "1 artifact" in r.stdout
    with pytest.raises(rr.PromotionError, match=r"RETIRED \(invalidated: seed not fixed"):
        promote.promote(s, copy.C, "model", to="c")
    p2 = promote.promote(s, copy.B, "model", to="best-model")
    r = cli(
        s,
        "retire",
        "best-model@v1",
        "--state",
        "superseded",
        "--reason",
        "v2 has the fixed export",
        "--superseded-by",
        "best-model@v2",
    )
    assert r.returncode == 0 and "superseded by promoted best-model@v2" in r.stdout
    assert "nothing downstream is recorded" in r.stdout
    r = cli(
        s,
        "retire",
        f"{copy.A}:model",
        "--state",
        "withdrawn",
        "--reason",
        "leaked test data",
        "--json",
    )
    doc = json.loads(r.stdout)
    assert doc["target"] == f"artifact:{copy.A}:model"
    assert {n["id"] for n in doc["downstream_nodes"] if n["kind"] == "run"} == {
        f"run:{copy.B}",
        f"run:{copy.C}",
    }
    t = lineage_trust.trust_for(s)
    assert t.marker(lineage_refs.promoted_node("best-model", p2.version)) == "SUSPECT"
    assert t.marker(lineage_refs.run_node(copy.A)) == ""  # upstream of a retired artifact: fine
    listed = cli(s, "retirements").stdout
    assert listed.count("\n") >= 4 and "superseded" in listed and "leaked test data" in listed
    # usage and input errors
    r = cli(s, "retire", copy.B, "--state", "withdrawn", "--reason", "x", "--superseded-by", copy.A)
    assert r.returncode == 2
    r = cli(s, "retire", copy.B, "--state", "lost", "--reason", "x")
    assert r.returncode == 2
    r = cli(s, "retire", "no-such-thing", "--state", "withdrawn", "--reason", "x")
    assert r.returncode == 1 and "matches no run" in r.stderr
    r = cli(s, "retire", copy.B, "--state", "withdrawn", "--reason", "  ")
    assert r.returncode == 1 and "needs a reason" in r.stderr


# ---------------------------------------------------------------------------------------------
# negative results
# ---------------------------------------------------------------------------------------------


def test_annotate_and_list_negatives(copy):
    s = copy.store
    r = cli(s, "ls", "--negative")
    assert r.returncode == 0 and copy.F[:10] in r.stdout and "(failed, no verdict)" in r.stdout
    assert "code_error" in r.stdout and copy.B[:10] not in r.stdout
    n_files = len(s.version_files(copy.F))
    r = cli(
        s,
        "annotate",
        copy.F[:12],
        "--verdict",
        "negative",
        "--blocks",
        "future-work",
        "--note",
        "lr 0.4 diverges without warmup; do not retry",
    )
    assert r.returncode == 0 and "annotated run" in r.stdout
    assert len(s.version_files(copy.F)) == n_files + 1  # a new version, nothing rewritten
    last = sorted(s.versions(copy.F), key=lambda v: v.seq)[-1]
    assert last.event == "annotate" and last.writer.role == "cli"
    annotate(s, copy.B, verdict="negative", blocks="run", note="evaluated on the training split")
    annotate(s, copy.C, verdict="negative", note="unstable")
    annotate(s, copy.C, verdict="inconclusive", note="rerun with 3 seeds: mixed")  # latest wins
    assert {n.record.run_id for n in negatives([s.load(x) for x in s.run_ids()])} == {
        copy.F,
        copy.B,
    }
    js = json.loads(cli(s, "ls", "--negative", "--json").stdout)
    by_id = {x["run_id"]: x for x in js}
    assert set(by_id) == {copy.F, copy.B}
    assert by_id[copy.F]["verdict"]["blocks"] == "future-work"
    assert by_id[copy.F]["cause"] == "code_error"
    assert by_id[copy.B]["verdict"]["note"] == "evaluated on the training split"
    table = cli(s, "ls", "--negative").stdout
    assert "lr 0.4 diverges without warmup" in table and "evaluated on the training split" in table
    rec = s.load(copy.C)
    assert [a.verdict for a in rec.annotations] == ["negative", "inconclusive"]
    show = cli(s, "show", copy.F).stdout
    assert "Annotations" in show and "negative, blocks future-work" in show
    assert "annotate" in cli(s, "history", copy.F).stdout
    # a negative verdict that blocks the run stops its promotion
    with pytest.raises(rr.PromotionError, match="negative verdict that blocks it"):
        promote.promote(s, copy.B, "model", to="best-model")
    r = cli(s, "annotate", copy.F, "--verdict", "meh", "--note", "x")
    assert r.returncode == 2
    r = cli(s, "annotate", copy.F, "--verdict", "negative", "--note", " ")
    assert r.returncode == 1 and "needs a note" in r.stderr


# ---------------------------------------------------------------------------------------------
# names from users never escape the store
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "name",
    [
        "../evil",
        "/tmp/evil",
        "a/b",
        "..",
        ".",
        ".hidden",
        "",
        "x" * 101,
        "ev\nil",
        "ev il",
        "a\\b",
        "-x",
    ],
)
def test_bad_promoted_names_are_refused(chain, name, tmp_path):
    s = chain.store
    with pytest.raises(rr.PromotionError, match="not a usable promoted name"):
        promote.promote(s, chain.B, "model", to=name)
    with pytest.raises(rr.PromotionError):
        promote.verify(s, name)
    assert sorted(os.listdir(os.path.join(s.root, "promoted"))) == ["best-model"]


def test_symlinks_planted_in_the_store_are_not_followed(copy, tmp_path):
    s = copy.store
    outside = tmp_path / "outside"
    outside.mkdir()
    os.symlink(outside, os.path.join(s.root, "promoted", "evil"))
    with pytest.raises(rr.PromotionError, match="outside the store"):
        promote.promote(s, copy.B, "model", to="evil")
    r = cli(s, "verify", "evil")
    assert r.returncode == 1 and "outside the store" in r.stderr and "Traceback" not in r.stderr
    assert [e.ref for e in store_promoted.list_promotions(s)] == ["best-model@v1"]  # not listed
    with pytest.raises(rr.LineageError, match="outside the store"):
        rr.Executor(backend="local", store=s).submit(
            lineage_jobs.finetune, None, "x", 1, 1, inputs=[rr.Artifact("evil@v1")]
        )
    os.symlink(outside, os.path.join(s.root, "retirements"))
    r = cli(s, "retire", copy.B, "--state", "withdrawn", "--reason", "x")
    assert r.returncode == 1 and "outside the store" in r.stderr
    # a whole promoted/ directory that is a link out
    s2 = rr.Store(tmp_path / "store2")
    s2.ensure_writable()
    os.symlink(outside, os.path.join(s2.root, "promoted"))
    with pytest.raises(rr.PromotionError, match="outside the store"):
        store_promoted.list_promotions(s2)
    assert os.listdir(outside) == []


def test_the_copied_file_name_is_never_a_path():
    from runrec_cluster.store.layout import copy_name

    assert copy_name("/x/model.pt") == "model.pt"
    assert copy_name("/x/dir/") == "dir"
    for weird in ("/x/..", "/", "/x/.hidden", "/x/a\nb", "/x/ü.bin"):
        assert copy_name(weird) == "artifact"


def test_targets_cannot_name_files_outside_the_graph(chain):
    s = chain.store
    g = lineage.build_graph(s)
    for t in ("/etc/passwd", "../../etc/passwd", "x\x00y", "run\n", "best-model@v1/../../x"):
        with pytest.raises(rr.LineageError):
            lineage.resolve_target(s, g, t)


# ---------------------------------------------------------------------------------------------
# OpenLineage
# ---------------------------------------------------------------------------------------------


def test_openlineage_events_validate_against_the_spec(chain, copy, tmp_path, monkeypatch):
    import jobfns
    import ol_schema
    from openlineage.client.generated.base import RunEvent

    from runrec_cluster.views.openlineage import FACET_SCHEMAS, RUN_EVENT_SCHEMA, run_uuid

    def major(url):  # ".../facets/1-1-0/X.json#/$defs/X" -> ("facets", "1", "X.json#/$defs/X")
        m = re.match(r"https://openlineage.io/spec/(facets/)?(\d+)-\d+-\d+/(.*)$", url)
        return m.groups()

    # the same spec file and major version as the package's classes
    assert major(RUN_EVENT_SCHEMA) == major(RunEvent._get_schema())
    for key, cls in {
        **ol_schema.JOB_FACETS,
        **ol_schema.RUN_FACETS,
        **ol_schema.DATASET_FACETS,
    }.items():
        assert major(FACET_SCHEMAS[key]) == major(cls._get_schema())
    s = copy.store
    # a cancelled run (ABORT) and a run that never started (START only)
    monkeypatch.chdir(copy.work)
    pidfile = tmp_path / "pid"
    h = rr.Executor(backend="local", store=s).submit(jobfns.write_pid_and_sleep, str(pidfile), 60)
    import time

    deadline = time.monotonic() + 60
    while not (pidfile.exists() and pidfile.read_text() and h.record().process):
        assert time.monotonic() < deadline
        time.sleep(0.05)
    h.cancel()
    assert h.wait(timeout=60).state == rr.RunState.CANCELLED
    pending = layout.new_id()
    s.write_version(pending, "launch", {"run_id": pending, "name": "queued", "state": "submitted"})
    retire.retire(s, f"{copy.A}:model", state="withdrawn", reason="leak")

    expected = {
        copy.A: "COMPLETE",
        copy.B: "COMPLETE",
        copy.F: "FAIL",
        h.run_id: "ABORT",
        pending: None,
    }
    for rid, end in expected.items():
        r = cli(s, "export", rid, "--format", "openlineage")
        assert r.returncode == 0, r.stderr
        events = [json.loads(line) for line in r.stdout.splitlines()]
        assert [e["eventType"] for e in events] == ["START"] + ([end] if end else [])
        for e in events:
            ol_schema.validate(e)
            assert ol_schema.client_roundtrip(e) == ol_schema.client_normalized(e)
            assert (
                e["run"]["runId"] == run_uuid(rid)
                and e["run"]["facets"]["runrec_run"]["run_id"] == rid
            )
            assert e["job"]["namespace"] == "runrec"
        if end:
            assert events[0]["eventTime"] <= events[1]["eventTime"]
    a = [
        json.loads(x)
        for x in cli(s, "export", copy.A, "--format", "openlineage").stdout.splitlines()
    ]
    rec = s.load(copy.A)
    (inp,) = a[1]["inputs"]
    assert inp["namespace"] == "file" and inp["name"] == chain.data
    assert inp["facets"]["version"]["datasetVersion"] == rec.inputs[0].digest
    (out,) = a[1]["outputs"]
    assert (
        out["facets"]["version"]["datasetVersion"] == rec.artifacts[0].digest
        and a[0]["outputs"] == []
    )
    job = a[1]["job"]["facets"]
    assert job["sourceCodeLocation"]["url"] == "https://git.example.org/lab/proj.git"
    assert job["sourceCodeLocation"]["version"] == rec.code.commit
    assert job["runrec_code"]["entrypoint"]["function"].endswith(":train")
    run = a[1]["run"]["facets"]
    assert run["runrec_config"]["config"]["val_acc"] == {"value": 0.91, "source": "given"}
    assert run["runrec_environment"]["packages"]["msgspec"]
    assert run["runrec_hardware"]["nodes"][0]["hostname"] == rec.node.hostname
    assert run["runrec_hardware"]["backend"] == "local"
    assert run["runrec_run"]["metrics"] == {"val_acc": 0.91, "loss": 0.3}
    b = [
        json.loads(x)
        for x in cli(s, "export", copy.B, "--format", "openlineage").stdout.splitlines()
    ]
    assert b[0]["inputs"][0]["facets"]["runrec_content"]["produced_by"] == {
        "run_id": copy.A,
        "artifact": "model",
    }
    assert b[1]["run"]["facets"]["runrec_run"]["trust"][0]["kind"] == "suspect"
    f = [
        json.loads(x)
        for x in cli(s, "export", copy.F, "--format", "openlineage").stdout.splitlines()
    ]
    err = f[1]["run"]["facets"]["errorMessage"]
    assert "diverged at step 1200" in err["message"] and "RuntimeError" in err["stackTrace"]
    assert "errorMessage" not in f[0]["run"]["facets"]
    out_file = tmp_path / "events.ndjson"
    r = cli(
        s, "export", copy.A, "--format", "openlineage", "--namespace", "lab", "-o", str(out_file)
    )
    assert r.returncode == 0 and [
        json.loads(x)["job"]["namespace"] for x in out_file.read_text().splitlines()
    ] == ["lab", "lab"]


def test_run_uuid_is_a_uuid7_carrying_the_run_time():
    import uuid

    from runrec_cluster.views.openlineage import run_uuid

    rid = layout.new_id()
    u = uuid.UUID(run_uuid(rid))
    assert u.version == 7 and u.variant == uuid.RFC_4122
    assert abs((u.int >> 80) / 1000 - layout.id_time(rid)) < 0.001
    assert run_uuid(rid) == run_uuid(rid) and run_uuid(layout.new_id()) != run_uuid(rid)
    with pytest.raises(rr.ConfigError):
        run_uuid("../x")


def test_cli_help_lists_the_commands():
    r = run_cli("--help")
    for cmd in ("lineage", "annotate", "promote", "promoted", "verify", "retire", "retirements"):
        assert cmd in r.stdout
