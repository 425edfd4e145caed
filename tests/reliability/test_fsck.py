"""`runrec fsck [--repair]` on real stores with planted problems.

One real store is built once (real jobs on the local backend from a dirty git checkout, a
dataset directory, an artifact, a promotion, a retirement: every kind of blob reference except
the Slurm batch script); each test damages its own copy, as a crash, a bad disk or a careless
`cp`/`rm` would, and checks what fsck reports, what --repair moves, and that nothing is lost.
"""

from __future__ import annotations

import json
import os
import shutil
import time

import cloudpickle
import jobfns
import pytest
from helpers import git, run_cli
from helpers import write_figures as _results

import runrec_cluster as rr
from runrec_cluster import fsck
from runrec_cluster.lineage import promote, retire
from runrec_cluster.store import codec, layout
from runrec_cluster.store import promoted as store_promoted

OLD = 2 * 3600  # seconds: older than the default --min-age


class Real:
    """The built store: ``art`` ran a job with a dataset input and an artifact (promoted as
    ``m``); ``add`` ran a plain function (retired)."""

    def __init__(self, root: str, art: str, add: str) -> None:
        self.root, self.art, self.add = root, art, add


@pytest.fixture(scope="module")
def real(tmp_path_factory):
    cloudpickle.register_pickle_by_value(jobfns)
    base = tmp_path_factory.mktemp("fsck-real")
    repo = base / "repo"
    repo.mkdir()
    git(repo, "init", "-q", "-b", "main")
    (repo / "train.py").write_text("print(1)\n")
    git(repo, "add", ".")
    git(repo, "commit", "-qm", "first")
    (repo / "train.py").write_text("print(2)\n")  # dirty: the record holds a patch blob
    data = base / "data"
    data.mkdir()
    for i in range(3):
        (data / f"f{i}.csv").write_text(f"x\n{i}\n")
    store = rr.Store(base / "store")
    old = os.getcwd()
    os.chdir(repo)
    try:
        ex = rr.Executor(backend="local", store=store, name="fsck")
        a = ex.submit(jobfns.with_artifact, str(base / "model.bin"), inputs=[rr.Dataset(data)])
        b = ex.submit(jobfns.add, 1, 2)
        assert a.result(timeout=120) == "ok" and b.result(timeout=120) == 3
    finally:
        os.chdir(old)
    promote.promote(store, a.run_id, "model", to="m")
    retire.retire(store, b.run_id, state="withdrawn", reason="fsck test")
    return Real(store.root, a.run_id, b.run_id)


@pytest.fixture
def copy(real, tmp_path):
    dst = tmp_path / "store"
    shutil.copytree(real.root, dst, symlinks=True)
    return rr.Store(dst), real


def versions_of(store, run_id):
    d = layout.run_dir(store.root, run_id)
    return {int(layout.VERSION_RE.match(n).group(1)): os.path.join(d, n) for n in os.listdir(d)}


def refs_of(store, run_id):
    """Every blob a run's versions name: their own fields, what their shared contexts hold
    (``store.versions`` merges those in), and the context blobs themselves."""
    from runrec_cluster.record import CONTEXT_KEY
    from runrec_cluster.store import codec

    out = {}
    for v in store.versions(run_id):
        out.update(dict(fsck.blob_refs(v.patch)))
    contexts: list[str] = []  # the launch's, the job's start and end (node facts) may differ
    for path in store.version_files(run_id):
        raw = codec.decode(open(path, "rb").read())["patch"]
        if CONTEXT_KEY in raw and raw[CONTEXT_KEY] not in contexts:
            contexts.append(raw[CONTEXT_KEY])
    for i, digest in enumerate(contexts):  # "context", "context#2", ...: the same field
        out[CONTEXT_KEY if i == 0 else f"{CONTEXT_KEY}#{i + 1}"] = digest
    return out


def writable(path):
    os.chmod(path, 0o644)


def every_file(root):
    out = set()
    for dp, _dn, fn in os.walk(root):
        for n in fn:
            out.add(os.path.relpath(os.path.join(dp, n), root))
    return out


def age(path, seconds):
    t = time.time() - seconds
    os.utime(path, (t, t))


def fsck_cli(store, *args):
    return run_cli("fsck", "--store", store.root, *args)


# ---------------------------------------------------------------------------------------------
# a clean store; every reference is checked
# ---------------------------------------------------------------------------------------------


def test_a_real_store_is_clean_and_every_blob_reference_is_followed(copy):
    store, real = copy
    rep = fsck.check(store)
    assert rep.ok and rep.exit_code == 0, [f.to_dict() for f in rep.findings]
    assert rep.findings == []
    c = rep.counts
    assert (c.runs, c.promotions, c.retirements, c.unreferenced_blobs) == (2, 1, 1, 0)
    assert c.versions == sum(len(store.versions(r)) for r in (real.art, real.add))
    refs = refs_of(store, real.art)
    assert {k.split("#")[0] for k in refs} == {
        "context",  # the node's facts, shared by every run on that node (schema v2)
        "code.patch_blob",
        "entrypoint.call_blob",
        "inputs[0].manifest_blob",
        "launch_env.packages_blob",
        "launch_env.interpreter.packages_blob",  # the user code's interpreter (issue 13)
        "nodes[0].packages_blob",
        "nodes[0].interpreter.packages_blob",
        "result.blob",
    }
    assert c.blobs == len({*refs.values(), *refs_of(store, real.add).values()})
    # each referenced blob, removed in turn, is named with a field naming it, the run and the
    # blob's path (a blob named by two fields of one run is reported once for that run)
    fields: dict[str, set[str]] = {}
    for where, digest in refs.items():
        fields.setdefault(digest, set()).add(where.split("#")[0])
    for digest, wheres in sorted(fields.items()):
        path = layout.blob_path(store.root, digest)
        aside = path + ".aside"
        os.rename(path, aside)
        try:
            got = [f for f in fsck.check(store).problems if f.kind == "dangling_reference"]
        finally:
            os.rename(aside, path)
        mine = [f for f in got if f.run_id == real.art]
        assert len(mine) == 1 and mine[0].path == path and mine[0].field in wheres, wheres


def test_blob_refs_reads_record_fields_never_user_data():
    d = "sha256:" + "a" * 64
    patch = {
        "config": {"call_blob": {"value": "x", "source": "given"}},
        "metrics": {"patch_blob": 1},
        "tags": {"manifest_blob": "y"},
        "execution": {
            "backend": "slurm",
            "options": {"packages_blob": "z"},
            "scheduler": {"job_id": "12", "batch_script": d},
        },
        "result": {"blob": d, "format": "msgpack"},
        "rerun": {"pinned": {"call_blob": "p"}, "intended": [{"what": "x", "before": "b"}]},
        "nodes": [{"rank": 0, "hostname": "h", "packages_blob": d}],
        "inputs": [{"path": "/d", "digest": "sha256:" + "b" * 64, "manifest_blob": None}],
    }
    assert sorted(fsck.blob_refs(patch)) == [
        ("execution.scheduler.batch_script", d),
        ("nodes[0].packages_blob", d),
        ("result.blob", d),
    ]


def test_verify_blob_names_truncation_trailing_bytes_and_wrong_content(tmp_path):
    data = os.urandom(3 << 20)  # larger than one read: the check streams
    hexd = __import__("hashlib").sha256(data).hexdigest()
    good = codec.compress(data)
    p = tmp_path / "b.zst"
    p.write_bytes(good)
    assert fsck.verify_blob(str(p), hexd) == len(data)
    p.write_bytes(good[: len(good) // 2])
    assert "truncated" in fsck.verify_blob(str(p), hexd)
    p.write_bytes(good + b"xx")
    assert "trailing bytes" in fsck.verify_blob(str(p), hexd)
    p.write_bytes(codec.compress(b"other"))
    assert "hashes to sha256:" in fsck.verify_blob(str(p), hexd)
    p.write_bytes(b"\x00garbage" * 10)
    assert "not a valid zstd frame" in fsck.verify_blob(str(p), hexd)


# ---------------------------------------------------------------------------------------------
# planted problems: found with their paths, repaired into quarantine, nothing deleted
# ---------------------------------------------------------------------------------------------


def plant(store, real):
    """Every kind of damage the issue names, on one store. Returns what each finding must be."""
    art = versions_of(store, real.art)
    add = versions_of(store, real.add)
    refs = refs_of(store, real.art)
    # a truncated version (a disk that lost the end of a file)
    trunc = art[3]
    raw = open(trunc, "rb").read()
    writable(trunc)
    open(trunc, "wb").write(raw[: len(raw) // 2])
    # garbage bytes in place of a version
    garbage = add[2]
    writable(garbage)
    open(garbage, "wb").write(os.urandom(300))
    # a gap: a version deleted by hand
    gap_run = real.add
    os.unlink(add[3])
    # a blob with the wrong content (still a valid zstd frame)
    bad_digest = refs["inputs[0].manifest_blob"]
    bad_blob = layout.blob_path(store.root, bad_digest)
    writable(bad_blob)
    open(bad_blob, "wb").write(codec.compress(b"not the manifest"))
    # a referenced blob that is missing
    gone_digest = refs["result.blob"]
    gone_blob = layout.blob_path(store.root, gone_digest)
    os.unlink(gone_blob)
    # a run without its launch version
    nolaunch = layout.new_id()
    store.write_version(nolaunch, "metrics", {"metrics": {"loss": 1.0}})
    store.write_version(nolaunch, "end", {"state": "succeeded"})
    # stray temporary files: one old (a writer killed long ago), one young (maybe live)
    old_tmp = os.path.join(layout.run_dir(store.root, real.art), ".tmp-0123456789abcdef")
    open(old_tmp, "wb").write(b"half a ver")
    age(old_tmp, OLD)
    young_tmp = os.path.join(os.path.dirname(gone_blob), ".tmp-fedcba9876543210")
    open(young_tmp, "wb").write(b"half a blob")
    return {
        "problems": {
            ("unreadable_version", trunc),
            ("unreadable_version", garbage),
            ("seq_gap", layout.run_dir(store.root, gap_run)),
            ("bad_blob", bad_blob),
            ("dangling_reference", bad_blob),
            ("dangling_reference", gone_blob),
            ("no_launch", layout.run_dir(store.root, nolaunch)),
        },
        "leftovers": {("temp_file", old_tmp), ("temp_file", young_tmp)},
        "trunc": trunc,
        "garbage": garbage,
        "bad_blob": bad_blob,
        "gone_digest": gone_digest,
        "bad_digest": bad_digest,
        "nolaunch": nolaunch,
        "old_tmp": old_tmp,
        "young_tmp": young_tmp,
        "gap_run": gap_run,
    }


def test_planted_problems_are_found_then_repaired_into_quarantine(copy):
    store, real = copy
    p = plant(store, real)
    before_files = every_file(store.root)
    rep = fsck.check(store)
    assert {(f.kind, f.path) for f in rep.problems} == p["problems"]
    assert {(f.kind, f.path) for f in rep.leftovers} == p["leftovers"]
    assert rep.exit_code == 1 and not rep.ok
    for f in rep.problems:
        assert f.hint and f.message, f
    by_kind = {f.kind: f for f in rep.problems}
    assert "truncated" in by_kind["bad_blob"].message or "hashes to" in by_kind["bad_blob"].message
    assert by_kind["seq_gap"].message.endswith("has no version 3 (highest is 5)")
    dangling = {f.digest: f for f in rep.problems if f.kind == "dangling_reference"}
    assert dangling[p["gone_digest"]].field == "result.blob"
    assert "is missing" in dangling[p["gone_digest"]].message
    assert dangling[p["bad_digest"]].field == "inputs[0].manifest_blob"
    assert "fails its hash check" in dangling[p["bad_digest"]].message
    assert fsck_cli(store).returncode == 1

    fixed = fsck.repair(store)  # default --min-age: the young temporary file stays
    assert fixed.ok and fixed.exit_code == 0, [f.to_dict() for f in fixed.problems]
    assert fixed.repair is not None
    q = fixed.repair.quarantine
    assert q and os.path.isdir(q) and q.startswith(os.path.join(store.root, "quarantine"))
    moved = {a.path: a.to for a in fixed.repair.actions if a.action == "quarantine"}
    for path in (p["trunc"], p["garbage"], p["bad_blob"], p["old_tmp"]):
        assert moved[path] == os.path.join(q, os.path.relpath(path, store.root))
        assert not os.path.exists(path) and os.path.exists(moved[path])
    nl_dir = layout.run_dir(store.root, p["nolaunch"])
    assert moved[nl_dir] == os.path.join(q, os.path.relpath(nl_dir, store.root))
    assert p["young_tmp"] not in moved and os.path.exists(p["young_tmp"])
    assert [(f.kind, f.path) for f in fixed.leftovers] == [("temp_file", p["young_tmp"])]
    # nothing deleted: every file is where it was, or under quarantine at the same relative path
    qrel = os.path.relpath(q, store.root)
    after = every_file(store.root)
    for rel in before_files:
        assert rel in after or os.path.join(qrel, rel) in after, rel
    log = json.load(open(os.path.join(q, fsck.REPAIR_LOG)))
    assert {a["path"] for a in log["actions"] if a["action"] == "quarantine"} == set(moved)
    # the losses are written into the runs: placeholders fill seqs, the missing blobs are named
    art = store.load(real.art)
    add = store.load(real.add)
    assert any(
        "version 3 of this run was damaged and moved to quarantine/" in w for w in art.warnings
    )
    assert any(p["gone_digest"] in w and "result.blob" in w for w in art.warnings)
    assert any(p["bad_digest"] in w for w in art.warnings)
    assert any("version 3 of this run is missing" in w for w in add.warnings)
    assert any("version 2 of this run was damaged" in w for w in add.warnings)
    assert sorted(versions_of(store, real.add)) == list(range(1, 6))
    notes = {(f.kind, f.digest) for f in fixed.notes}
    assert notes == {
        ("acknowledged_loss", p["gone_digest"]),
        ("acknowledged_loss", p["bad_digest"]),
    }
    assert "rebuilt" in fixed.repair.index
    # a second check agrees, the CLI too; ls lists both runs
    assert fsck.check(store).ok
    assert fsck_cli(store).returncode == 0
    ls = run_cli("ls", "--store", store.root, "--json")
    assert ls.returncode == 0 and {r["run_id"] for r in json.loads(ls.stdout)} == {
        real.art,
        real.add,
    }
    acts = fixed.repair.actions
    _results(
        "test_planted_problems_are_found_then_repaired_into_quarantine",
        "a real store (2 local-backend runs, a promotion, a retirement) with planted damage: a "
        "truncated version, a garbage version, a deleted version (seq gap), a blob with wrong "
        "content, a missing referenced blob, a run without launch, an old and a young temporary "
        "file; fsck named each with its path, --repair moved the damaged files to quarantine, "
        "recorded every loss in its run, kept the young temporary file, and a second fsck was "
        "clean with every original file still present or in quarantine",
        planted_problems=len(p["problems"]),
        planted_leftovers=len(p["leftovers"]),
        found_problems=len(rep.problems),
        found_leftovers=len(rep.leftovers),
        quarantined=sum(1 for a in acts if a.action == "quarantine"),
        placeholders=sum(1 for a in acts if a.action == "placeholder"),
        losses_recorded=sum(1 for a in acts if a.action == "record_loss"),
        problems_after_repair=len(fixed.problems),
        leftovers_after_repair=len(fixed.leftovers),
        files_before=len(before_files),
        files_lost=sum(
            1 for rel in before_files if rel not in after and os.path.join(qrel, rel) not in after
        ),
    )


def test_repair_min_age_zero_moves_every_temporary_file(copy):
    store, real = copy
    young = os.path.join(layout.run_dir(store.root, real.add), ".tmp-00000000000000aa")
    open(young, "wb").write(b"x")
    empty = layout.run_dir(store.root, layout.new_id())
    os.makedirs(empty)
    rep = fsck.check(store)
    assert rep.ok and {(f.kind, f.path) for f in rep.leftovers} == {
        ("temp_file", young),
        ("empty_run_dir", empty),
    }
    kept = fsck.repair(store)  # both younger than an hour: a live writer may own them
    assert {f.path for f in kept.leftovers} == {young, empty}
    assert kept.repair.quarantine is None
    assert [a.action for a in kept.repair.actions] == ["index"]
    gone = fsck.repair(store, min_age_s=0)
    assert gone.ok and gone.leftovers == [] and gone.findings == []
    assert not os.path.exists(young) and not os.path.exists(empty)
    assert os.path.exists(os.path.join(gone.repair.quarantine, os.path.relpath(young, store.root)))


def test_a_version_that_does_not_fold_is_named_and_set_aside(copy):
    store, real = copy
    store.write_version(real.add, "reconcile", {"created_at": "the day before yesterday"})
    store.write_version(real.add, "metrics", {"metrics": {"late": 1}})
    culprit = versions_of(store, real.add)[6]
    rep = fsck.check(store)
    assert [(f.kind, f.path, f.seq) for f in rep.problems] == [("does_not_fold", culprit, 6)]
    fixed = fsck.repair(store)
    assert fixed.ok, [f.to_dict() for f in fixed.problems]
    rec = store.load(real.add)
    assert rec.metrics["late"] == 1 and rec.state.value == "succeeded"
    assert any("version 6 of this run was damaged" in w for w in rec.warnings)


def test_a_version_copied_from_another_run_is_named(copy):
    store, real = copy
    src = versions_of(store, real.add)[1]
    dst = os.path.join(layout.run_dir(store.root, real.art), "v000007-aaaaaaaaaaaa.msgpack.zst")
    shutil.copyfile(src, dst)
    rep = fsck.check(store)
    assert [(f.kind, f.path) for f in rep.problems] == [("mismatched_version", dst)]
    assert f"version 1 of run {real.add}" in rep.problems[0].message
    fixed = fsck.repair(store)
    assert fixed.ok and not os.path.exists(dst)
    # the moved file held the highest seq: the loss is still recorded, in a placeholder
    assert any("version 7 of this run was damaged" in w for w in store.load(real.art).warnings)


def test_two_versions_with_one_seq_one_damaged_records_the_loss_without_a_gap(copy):
    store, real = copy
    twin = os.path.join(layout.run_dir(store.root, real.add), "v000004-bbbbbbbbbbbb.msgpack.zst")
    open(twin, "wb").write(b"\x28\xb5\x2f\xfd garbage")
    fixed = fsck.repair(store)
    assert fixed.ok and [f.kind for f in fixed.repair.found] == ["unreadable_version"]
    assert any("a version 4 of this run was damaged" in w for w in store.load(real.add).warnings)


# ---------------------------------------------------------------------------------------------
# promotions and retirements
# ---------------------------------------------------------------------------------------------


def test_promotion_and_retirement_damage(copy):
    store, real = copy
    vdir = os.path.join(store.root, "promoted", "m", "v1")
    rec = os.path.join(vdir, "promotion.msgpack.zst")
    (ret,) = [
        os.path.join(store.root, "retirements", n)
        for n in os.listdir(os.path.join(store.root, "retirements"))
    ]
    # the promoted copy vanished (not repairable), the retirement record is garbage
    copy_path = os.path.join(vdir, "files", "model.bin")
    os.chmod(os.path.dirname(copy_path), 0o755)
    os.unlink(copy_path)
    writable(ret)
    open(ret, "wb").write(b"junk")
    rep = fsck.check(store)
    assert {(f.kind, f.path) for f in rep.problems} == {
        ("missing_promoted_copy", copy_path),
        ("unreadable_retirement", ret),
    }
    fixed = fsck.repair(store)
    # the copy cannot be restored by fsck: it remains, and the exit code says so
    assert [(f.kind, f.path) for f in fixed.problems] == [("missing_promoted_copy", copy_path)]
    assert fixed.exit_code == 1
    assert not os.path.exists(ret)
    assert fsck_cli(store, "--repair").returncode == 1
    # an unreadable promotion record: moved aside, the version directory stays (never reused)
    os.chmod(vdir, 0o755)
    writable(rec)
    open(rec, "wb").write(b"junk")
    os.chmod(vdir, 0o555)
    rep = fsck.check(store)
    assert {(f.kind, f.path) for f in rep.problems} == {("unreadable_promotion", rec)}
    fixed = fsck.repair(store)
    assert fixed.ok and os.path.isdir(vdir) and not os.path.exists(rec)
    assert [(f.kind, f.path) for f in fixed.leftovers] == [("incomplete_promotion", vdir)]
    assert store_promoted.list_promotions(store, "m")[0].promotion is None


def test_a_retirement_whose_run_is_gone_is_named(copy):
    store, real = copy
    shutil.rmtree(layout.run_dir(store.root, real.add))
    rep = fsck.check(store)
    kinds = [(f.kind, f.message) for f in rep.problems]
    assert len(kinds) == 1 and kinds[0][0] == "dangling_retirement"
    assert f"run:{real.add} is not in the store" in kinds[0][1]


# ---------------------------------------------------------------------------------------------
# the command: --json, exit codes, no tracebacks
# ---------------------------------------------------------------------------------------------


def test_json_shape_and_exit_codes_of_the_real_command(copy, tmp_path):
    store, real = copy
    # clean: 0
    out = fsck_cli(store, "--json")
    assert out.returncode == 0, out.stderr
    doc = json.loads(out.stdout)
    assert set(doc) == {
        "store",
        "ok",
        "exit_code",
        "seconds",
        "counts",
        "problems",
        "leftovers",
        "notes",
        "repair",
    }
    assert doc["ok"] is True and doc["exit_code"] == 0 and doc["repair"] is None
    assert doc["counts"]["runs"] == 2 and doc["counts"]["promotions"] == 1
    # only a temporary file: still 0, and it is named
    tmp = os.path.join(store.root, "blobs", ".tmp-1111222233334444")
    open(tmp, "wb").write(b"")
    out = fsck_cli(store, "--json")
    doc = json.loads(out.stdout)
    assert out.returncode == 0 and [x["path"] for x in doc["leftovers"]] == [tmp]
    assert set(doc["leftovers"][0]) == {"severity", "kind", "path", "message", "hint", "age_s"}
    text = fsck_cli(store)
    assert text.returncode == 0 and tmp in text.stdout and "clean: no problems" in text.stdout
    # a problem: 1, with path, message and hint
    p = plant(store, real)
    out = fsck_cli(store, "--json")
    doc = json.loads(out.stdout)
    assert out.returncode == 1 and doc["ok"] is False and doc["exit_code"] == 1
    assert {(x["kind"], x["path"]) for x in doc["problems"]} == p["problems"]
    assert all(x["hint"] and x["message"] and x["severity"] == "problem" for x in doc["problems"])
    text = fsck_cli(store)
    assert text.returncode == 1 and "PROBLEM  seq_gap" in text.stdout and p["trunc"] in text.stdout
    assert "Traceback" not in text.stdout + text.stderr
    # --repair --json: the state after, and what was found and done
    out = fsck_cli(store, "--repair", "--json", "--min-age", "0")
    doc = json.loads(out.stdout)
    assert out.returncode == 0, doc["problems"]
    assert set(doc["repair"]) == {"found", "actions", "quarantine", "min_age_s", "index"}
    assert doc["repair"]["min_age_s"] == 0 and doc["leftovers"] == []
    assert {
        (x["kind"], x["path"]) for x in doc["repair"]["found"] if x["severity"] == "problem"
    } == p["problems"]
    assert {a["action"] for a in doc["repair"]["actions"]} >= {
        "quarantine",
        "placeholder",
        "record_loss",
        "index",
    }
    # usage: 2; no store: 1 with a message; never a traceback
    for args in (["--min-age", "-1", "--repair"], ["--min-age", "5"], ["--bogus"]):
        bad = fsck_cli(store, *args)
        assert bad.returncode == 2, (args, bad.stderr)
        assert "Traceback" not in bad.stderr
    none = run_cli("fsck", "--store", str(tmp_path / "nowhere"))
    assert none.returncode == 1 and "no store at" in none.stderr
    assert "Traceback" not in none.stderr


def test_repair_without_the_query_extra_says_so_and_goes_on(copy, tmp_path):
    """pandas/pyarrow hidden from the interpreter: the index is not rebuilt, the repair is done."""
    store, real = copy
    tmp = os.path.join(store.root, "runs", ".tmp-aaaabbbbccccdddd")
    open(tmp, "wb").write(b"")
    block = tmp_path / "block"
    block.mkdir()
    for mod in ("pandas", "pyarrow"):
        (block / f"{mod}.py").write_text("raise ImportError('hidden by the test')\n")
    out = run_cli(
        "fsck",
        "--store",
        store.root,
        "--repair",
        "--min-age",
        "0",
        "--json",
        env={"PYTHONPATH": str(block)},
    )
    doc = json.loads(out.stdout)
    assert out.returncode == 0, out.stderr
    assert doc["repair"]["index"].startswith("not rebuilt:")
    assert not os.path.exists(tmp)


def test_a_run_in_the_wrong_shard_is_named_and_left_where_it_is(copy):
    store, real = copy
    src = layout.run_dir(store.root, real.add)
    dst = os.path.join(store.root, "runs", "zzzzz", real.add)
    os.makedirs(os.path.dirname(dst))
    os.rename(src, dst)
    rep = fsck.check(store)
    assert ("misplaced_run", dst) in {(f.kind, f.path) for f in rep.problems}
    fixed = fsck.repair(store)
    assert ("misplaced_run", dst) in {(f.kind, f.path) for f in fixed.problems}
    assert fixed.exit_code == 1 and os.path.isdir(dst)
