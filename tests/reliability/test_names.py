"""Names from users never write outside the store.

Hostile names: path traversal (``../``), absolute paths, home and Windows forms, encoded
traversal, and names with NUL, newline, carriage return, escape sequences, DEL, C1 controls.
Surfaces: run names (API and ``runrec submit --name``), tags, dataset version labels, artifact
names (``log_artifact``, ``rr.Artifact``), promoted names (``promote --to``, ``verify``,
``promoted``), retire and lineage targets, RUN arguments of every command, export outputs.
Then symlinks planted inside the store that point outside, under every directory runrec writes
(runs, logs, blobs, dataset cache, change journal, query index, rerun worktrees, promoted,
retirements).

Rules checked: a name that becomes a path component (a promoted name; run ids) is refused with a
clear error; a name that is data (run name, tag, label, artifact name) is stored verbatim and
never used as a path, and refused only when it holds a control character (it would forge
terminal output); a link out of the store is refused, never written through (derived data, the
dataset cache and the change journal, is simply not written). After each case the parent
directory tree of the store and the links' targets are compared with a snapshot taken before.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import time
import traceback
import types

import cloudpickle
import jobfns
import pytest
from helpers import git, run_cli
from helpers import write_figures as _write_results

import runrec_cluster as rr
from runrec_cluster.capture import inputs as capture_inputs
from runrec_cluster.errors import ConfigError, LineageError, PromotionError, StoreError
from runrec_cluster.lineage import graph as lineage
from runrec_cluster.lineage import promote
from runrec_cluster.store import layout
from runrec_cluster.store import promoted as store_promoted

RESULTS_DIR = os.environ.get("RUNREC_RELIABILITY_RESULTS") or os.path.join(
    os.path.dirname(os.path.abspath(__file__)), "results"
)


_TAG = f"evil-{os.getpid()}-{int(time.time())}"
PATH_NAMES = [
    "../" + _TAG,
    "../../../../" + _TAG,
    "/tmp/" + _TAG,
    "a/../../" + _TAG,
    "./../" + _TAG,
    "..",
    ".",
    "~/" + _TAG,
    "..\\" + _TAG,
    "C:\\" + _TAG,
    "%2e%2e%2f" + _TAG,
    _TAG + "/",
]
CONTROL_NAMES = [
    _TAG + "\x00nul",
    _TAG + "\nnewline",
    _TAG + "\n",  # a trailing newline: `$` in a regex would let it through
    _TAG + "\rcr",
    "\x1b[2J\x1b[H" + _TAG,
    _TAG + "\x07bell",
    _TAG + "\x7f",
    _TAG + "\x9b31m",
]
CLI_CONTROL_NAMES = [n for n in CONTROL_NAMES if "\x00" not in n]  # argv cannot carry NUL


def _tree(root, skip=()) -> set[str]:
    """Every path under ``root`` (links not followed), except under ``skip``."""
    out = set()
    if not os.path.lexists(root):
        return out
    for d, dirs, files in os.walk(root):
        dirs[:] = [x for x in dirs if os.path.join(d, x) not in skip]
        out |= {os.path.relpath(os.path.join(d, n), root) for n in dirs + files}
    return out


class Area:
    """``tmp/area`` holds the store and a project; ``tmp/outside`` is where planted links point.
    ``snapshot()`` / ``unchanged()``: nothing appeared outside the store."""

    def __init__(self, tmp_path):
        self.tmp = tmp_path
        self.root = tmp_path / "area"
        self.proj = self.root / "proj"
        self.proj.mkdir(parents=True)
        self.outside = tmp_path / "outside"
        self.outside.mkdir()
        self.store = rr.Store(self.root / "store")
        self.store.ensure_writable()
        self.work = tmp_path / "work"  # where jobs write their artifacts
        self.work.mkdir()
        self._before = None

    def snapshot(self):
        self._before = (
            _tree(self.tmp, skip={self.store.root, str(self.work)}),
            _tree(self.outside),
        )

    def unchanged(self):
        after = (_tree(self.tmp, skip={self.store.root, str(self.work)}), _tree(self.outside))
        assert after == self._before, (after[0] ^ self._before[0], after[1] ^ self._before[1])
        for name in PATH_NAMES:  # resolved against the store, the project, home, /tmp
            for base in (self.store.root, str(self.proj), os.path.expanduser("~"), "/tmp"):
                p = os.path.normpath(os.path.join(base, os.path.expanduser(name)))
                if _TAG in p:
                    assert not os.path.lexists(p), p
        assert _TAG not in json.dumps(sorted(_tree(self.store.root)))  # no path component


@pytest.fixture
def area(tmp_path, monkeypatch):
    a = Area(tmp_path)
    monkeypatch.chdir(a.proj)
    return a


def cli(area, command, *args):
    """The real `runrec` in a subprocess."""
    return run_cli(
        command, "--store", area.store.root, *args, cwd=area.proj, env={"COLUMNS": "200"}
    )


def cli_here(area, command, *args):
    """The same entry point (``runrec_cluster.cli.main``: exit codes, error lines) in this
    process: many cases without an interpreter start each."""
    from runrec_cluster.cli._common import main

    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            main([command, "--store", area.store.root, *args])
            code = 0
        except SystemExit as e:
            code = e.code if isinstance(e.code, int) else 1
        except BaseException:  # a traceback would reach the user: show it as one
            err.write("Traceback (in process)\n" + traceback.format_exc())
            code = -1
    return types.SimpleNamespace(returncode=code, stdout=out.getvalue(), stderr=err.getvalue())


def _refused(r, *words):
    assert r.returncode in (1, 2), (r.returncode, r.stdout, r.stderr)
    assert "Traceback" not in r.stderr, r.stderr
    low = r.stderr.lower()
    assert any(w.lower() in low for w in words), r.stderr


def _artifact_job():
    """Logs one artifact under each name; returns what happened to each (shipped by value)."""

    def log_all(out, names):
        import runrec_cluster as rr

        with open(out, "wb") as f:
            f.write(b"weights" * 10)
        run = rr.current_run()
        got = []
        for n in names:
            try:
                got.append(["ok", run.log_artifact(out, name=n).name])
            except rr.RunrecError as exc:
                got.append([type(exc).__name__, str(exc)])
        return got

    return log_all


# ---------------------------------------------------------------------------------------------
# names that are data: stored verbatim, never a path; control characters refused
# ---------------------------------------------------------------------------------------------


def test_data_names_are_stored_verbatim_and_never_become_paths(area):
    data = area.work / "train.csv"
    data.write_text("x\n1\n")
    area.snapshot()
    ex = rr.Executor(backend="local", store=area.store)
    handles = []
    for n in PATH_NAMES:
        handles.append(
            (n, ex.submit(jobfns.add, 1, name=n, tags={n: n}, inputs=[rr.Dataset(data, version=n)]))
        )
    art = ex.submit(_artifact_job(), str(area.work / "model.bin"), PATH_NAMES + CONTROL_NAMES)
    for n, h in handles:
        rec = h.wait(timeout=120)
        assert rec.state == rr.RunState.SUCCEEDED, rec.failure
        assert rec.name == n and rec.tags == {n: n} and rec.inputs[0].version == n
    got = art.result(timeout=120)
    assert got[: len(PATH_NAMES)] == [["ok", n] for n in PATH_NAMES]
    for (kind, msg), n in zip(got[len(PATH_NAMES) :], CONTROL_NAMES, strict=True):
        assert kind == "ConfigError" and "control character" in msg and repr(n) in msg
    # an artifact named like a path is looked up by name in its run's record, never opened
    # as a path: each resolves to the file the producer logged
    for n in PATH_NAMES:
        ref = capture_inputs.resolve_artifact_input(area.store, f"{art.run_id}:{n}")
        assert ref.artifact == n and ref.path == str(area.work / "model.bin")
    r = cli(area, "ls", "--json")
    assert r.returncode == 0 and all(n in r.stdout for n in ["../" + _TAG, "/tmp/" + _TAG])
    area.unchanged()
    _write_results(
        "test_data_names_are_stored_verbatim_and_never_become_paths",
        "Path-like names used as run names, tag keys and values, dataset version labels and "
        "artifact names of real local runs: stored verbatim, nothing written outside the store.",
        path_like_names=len(PATH_NAMES),
        surfaces=5,
        runs=len(handles) + 1,
        control_names_refused_in_log_artifact=len(CONTROL_NAMES),
        written_outside=0,
    )


@pytest.mark.parametrize("name", CONTROL_NAMES)
@pytest.mark.parametrize("surface", ["executor name", "run name", "tag key", "tag value", "label"])
def test_control_characters_in_names_are_refused(area, name, surface):
    data = area.work / "d.csv"
    data.write_text("x\n")
    area.snapshot()
    kw = {}
    ex_kw = {}
    if surface == "executor name":
        ex_kw["name"] = name
    elif surface == "run name":
        kw["name"] = name
    elif surface == "tag key":
        kw["tags"] = {name: "x"}
    elif surface == "tag value":
        kw["tags"] = {"k": name}
    else:
        kw["inputs"] = [rr.Dataset(data, version=name)]
    ex = rr.Executor(backend="local", store=area.store, **ex_kw)
    with pytest.raises(ConfigError, match="control character") as e:
        ex.submit(jobfns.add, 1, **kw)
    assert repr(name) in str(e.value)
    assert list(area.store.run_ids()) == []
    area.unchanged()


def test_cli_submit_names(area):
    area.snapshot()
    for i, n in enumerate(CLI_CONTROL_NAMES):
        run = cli if i == 0 else cli_here
        _refused(run(area, "submit", "--name", n, "--", "true"), "control character")
        _refused(run(area, "submit", "--tag", f"k={n}", "--", "true"), "control character")
    assert list(area.store.run_ids()) == []
    names = PATH_NAMES[:3]
    for i, n in enumerate(names):
        run = cli if i == 0 else cli_here
        r = run(area, "submit", "--name", n, "--wait", "--", "true")
        assert r.returncode == 0, r.stderr
    assert sorted(rr.load(area.store, i).name for i in area.store.run_ids()) == sorted(names)
    area.unchanged()


# ---------------------------------------------------------------------------------------------
# names that become paths, and targets
# ---------------------------------------------------------------------------------------------


@pytest.fixture
def promotable(area):
    """A succeeded run with an artifact ``model``, and one promoted version ``ok-model@v1``."""
    cloudpickle.register_pickle_by_value(jobfns)
    h = rr.Executor(backend="local", store=area.store).submit(
        jobfns.with_artifact, str(area.work / "model.bin")
    )
    assert h.result(timeout=120) == "ok"
    promote.promote(area.store, h.run_id, "model", to="ok-model")
    return h.run_id


def test_hostile_promoted_names_and_artifacts_are_refused(area, promotable):
    run = promotable
    promoted = os.path.join(area.store.root, "promoted")
    area.snapshot()
    before = _tree(promoted)
    refused = 0
    for n in PATH_NAMES + CONTROL_NAMES + ["", " ", "-x", ".hidden", "x" * 101, "ok-model/../x"]:
        with pytest.raises(PromotionError, match="not a usable promoted name"):
            promote.promote(area.store, run, "model", to=n)
        with pytest.raises(PromotionError):
            promote.verify(area.store, n)
        refused += 2
        if "\x00" in n or not n or n.startswith("-"):
            continue  # argv cannot carry NUL; click takes "" / "-x" as missing or an option
        sub = cli if n == PATH_NAMES[0] else cli_here
        _refused(sub(area, "promote", run, "model", "--to", n), "not a usable promoted name")
        _refused(sub(area, "verify", n), "not a usable promoted name", "no promoted version")
        refused += 2
    for n in PATH_NAMES + ["../../ok-model/v1/files/model.bin"]:
        with pytest.raises(PromotionError, match="no artifact"):
            promote.promote(area.store, run, n, to="other")
        refused += 1
    assert _tree(promoted) == before
    area.unchanged()
    _write_results(
        "test_hostile_promoted_names_and_artifacts_are_refused",
        "Hostile promoted names (API and real CLI: promote --to, verify) and artifact names "
        "given to promote: every one refused with a clear error, promoted/ unchanged.",
        names=len(PATH_NAMES + CONTROL_NAMES) + 6,
        refusals=refused,
        written_outside=0,
    )


HOSTILE_TARGETS = [
    "../../" + _TAG,
    "/etc/passwd",
    "/tmp/" + _TAG,
    "~/" + _TAG,
    "0123456789:../../" + _TAG,
    "ok-model@v1/../../" + _TAG,
    "ok-model@v1/../../../etc/passwd",
    "sha256:../../" + _TAG,
    _TAG + "\nx",
    "\x1b[2J",
]


def test_hostile_targets_and_run_arguments_are_refused(area, promotable):
    area.snapshot()
    retirements = _tree(os.path.join(area.store.root, "retirements"))
    refused = 0
    for t in HOSTILE_TARGETS:
        sub = cli if t == HOSTILE_TARGETS[0] else cli_here
        r = sub(area, "retire", t, "--state", "withdrawn", "--reason", "x")
        _refused(r, "not", "no ", "unknown", "cannot")
        r = sub(area, "lineage", t)
        _refused(r, "not", "no ", "unknown", "cannot")
        refused += 2
        with pytest.raises(rr.RunrecError):
            lineage.resolve_target(area.store, lineage.build_graph(area.store), t)
        refused += 1
    run_args = ["../../" + _TAG, "/etc/passwd", "~/" + _TAG, _TAG + "\n", "..", "runs/../x"]
    commands = [
        ["show"],
        ["history"],
        ["logs"],
        ["export"],
        ["cancel"],
        ["rerun"],
        ["annotate", "--verdict", "negative", "--note", "x"],
        ["diff", promotable],
    ]
    for bad in run_args:
        sub = cli if bad == run_args[0] else cli_here
        for c in commands:
            _refused(sub(area, *c, bad), "not a run id", "run id", "no run")
            refused += 1
        with pytest.raises(rr.RunrecError):
            area.store.load(bad)
        with pytest.raises(rr.RunrecError):
            area.store.log_dir(bad)
        refused += 2
    assert _tree(os.path.join(area.store.root, "retirements")) == retirements
    area.unchanged()
    _write_results(
        "test_hostile_targets_and_run_arguments_are_refused",
        "Hostile retire / lineage targets and RUN arguments of every command taking one (real "
        "CLI and API): all refused with a clear error, no retirement written, nothing outside.",
        targets=len(HOSTILE_TARGETS),
        run_arguments=len(run_args),
        commands=len(commands) + 2,
        refusals=refused,
        written_outside=0,
    )


def test_export_writes_only_where_asked(area):
    """Output files are the user's own paths (like a shell redirection), never derived from a
    record's content: a run named like a path still exports to exactly the file given."""
    h = rr.Executor(backend="local", store=area.store).submit(
        jobfns.add, 1, name="../../" + _TAG, tags={"to": "/tmp/" + _TAG}
    )
    h.wait(timeout=120)
    out = area.work / "exports"
    out.mkdir()
    area.snapshot()
    for fmt in ("json", "openlineage"):
        r = cli(area, "export", h.run_id, "--format", fmt, "-o", str(out / f"x.{fmt}"))
        assert r.returncode == 0, r.stderr
    r = cli(area, "table", "--format", "csv", "-o", str(out / "t.csv"))
    assert r.returncode == 0, r.stderr
    assert sorted(os.listdir(out)) == ["t.csv", "x.json", "x.openlineage"]
    area.unchanged()


# ---------------------------------------------------------------------------------------------
# symlinks planted in the store
# ---------------------------------------------------------------------------------------------

PLANTS = [
    "runs/<shard>",
    "logs/<shard>",
    "blobs/<aa>",
    "cache/datasets",
    "changes/<bucket>",
    "index",
    "worktrees",
    "promoted/<name>",
    "retirements",
    "promoted",
]


@pytest.mark.parametrize("where", PLANTS)
def test_symlinks_planted_in_the_store_are_never_written_through(area, where):
    s = area.store
    git(area.proj, "init", "-q", "-b", "main")
    (area.proj / "train.py").write_text("print(1)\n")
    git(area.proj, "add", ".")
    git(area.proj, "commit", "-qm", "first")
    data = area.work / "d.csv"
    data.write_text("x\n1\n")
    cloudpickle.register_pickle_by_value(jobfns)
    ex = rr.Executor(backend="local", store=s, cwd=area.proj)
    first = None
    if where in ("worktrees", "promoted/<name>", "retirements", "promoted"):
        first = ex.submit(jobfns.with_artifact, str(area.work / "m.bin"))
        assert first.result(timeout=120) == "ok"
        (area.proj / "train.py").write_text("print(2)\n")  # the rerun needs a worktree
        git(area.proj, "commit", "-qam", "second")
    target = area.outside / where.replace("/", "_").strip("<>")
    target.mkdir()
    blob_data = b"planted-blob-test"
    import hashlib

    links = {
        "runs/<shard>": os.path.join(s.root, "runs", layout.new_id()[: layout.SHARD_LEN]),
        "logs/<shard>": os.path.join(s.root, "logs", layout.new_id()[: layout.SHARD_LEN]),
        "blobs/<aa>": os.path.join(s.root, "blobs", hashlib.sha256(blob_data).hexdigest()[:2]),
        "cache/datasets": os.path.join(s.root, "cache", "datasets"),
        "changes/<bucket>": os.path.join(
            s.root, layout.CHANGES_DIR, layout.change_bucket(time.time())
        ),
        "index": os.path.join(s.root, "index"),
        "worktrees": os.path.join(s.root, "worktrees"),
        "promoted/<name>": os.path.join(s.root, "promoted", "evil"),
        "retirements": os.path.join(s.root, "retirements"),
        "promoted": os.path.join(s.root, "promoted"),
    }
    link = links[where]
    os.makedirs(os.path.dirname(link), exist_ok=True)
    if where == "promoted":
        os.rename(link, link + ".moved") if os.path.exists(link) else None
    elif where == "changes/<bucket>" and os.path.isdir(link):
        os.rename(link, link + ".moved")
    os.symlink(target, link)
    area.snapshot()

    if where in ("runs/<shard>", "logs/<shard>"):
        with pytest.raises(StoreError, match="outside the store"):
            ex.submit(jobfns.add, 1)
        assert list(s.run_ids()) == []
    elif where == "blobs/<aa>":
        with pytest.raises(StoreError, match="outside the store"):
            s.put_blob(blob_data)
    elif where in ("cache/datasets", "changes/<bucket>"):  # derived data: not written, no error
        h = ex.submit(jobfns.add, 1, inputs=[rr.Dataset(data)])
        assert h.result(timeout=120) == 11
        assert h.record().inputs[0].digest
    elif where == "index":
        r = cli(area, "table", "--format", "json")
        _refused(r, "outside the store")
        with pytest.raises(StoreError, match="outside the store"):
            rr.query(s)
    elif where == "worktrees":
        r = cli(area, "rerun", first.run_id)
        _refused(r, "outside the store")
    elif where == "promoted/<name>":
        with pytest.raises(PromotionError, match="outside the store"):
            promote.promote(s, first.run_id, "model", to="evil")
        _refused(cli(area, "promote", first.run_id, "model", "--to", "evil"), "outside the store")
    elif where == "promoted":
        with pytest.raises(PromotionError, match="outside the store"):
            promote.promote(s, first.run_id, "model", to="fine")
        with pytest.raises(PromotionError, match="outside the store"):
            store_promoted.list_promotions(s)
    elif where == "retirements":
        r = cli(area, "retire", first.run_id, "--state", "withdrawn", "--reason", "x")
        _refused(r, "outside the store")
        with pytest.raises(LineageError, match="outside the store"):
            from runrec_cluster.lineage import retire

            retire.retire(s, first.run_id, state="withdrawn", reason="x")
    assert os.listdir(target) == [], os.listdir(target)
    area.unchanged()


def test_a_store_reached_through_a_symlink_still_works(area, tmp_path):
    """The store root itself may be a link (a scratch path to a mount): only links *inside*
    the store are refused."""
    link = tmp_path / "store-link"
    os.symlink(area.store.root, link)
    s = rr.Store(link)
    h = rr.Executor(backend="local", store=s).submit(jobfns.add, 2)
    assert h.result(timeout=120) == 12
    assert rr.load(area.store, h.run_id).state == rr.RunState.SUCCEEDED
    r = run_cli("table", "--format", "json", "--store", str(link), cwd=area.proj)
    assert r.returncode == 0 and h.run_id in r.stdout


def test_store_names_reject_traversal_at_the_path_rules():
    good = layout.new_id()
    for bad in ["../x", "/etc/passwd", "a" * 26 + "/", "\x00" * 26, good + "\n", good[:25] + "\n"]:
        for fn in (layout.run_dir, layout.log_dir):
            with pytest.raises(ConfigError):
                fn("/store", bad)
    for bad in [
        "sha256:../../x",
        "sha256:" + "g" * 64,
        "../" + "a" * 64,
        "sha256:" + "a" * 64 + "\n",
    ]:
        with pytest.raises(ConfigError):
            layout.blob_path("/store", bad)


def test_control_characters_in_old_records_never_reach_the_terminal(store):
    """A record written before names were checked (or by hand) may hold terminal escapes: ls and
    show print them as \\xNN, never raw."""
    from runrec_cluster.record import to_patch

    rid = layout.new_id()
    evil = "x\x1b]0;owned\x07\x1b[2J\rfake\x9b"
    store.write_version(
        rid, "launch", {**to_patch(run_id=rid, name=evil), "state": "submitted", "attempt": 1}
    )
    store.write_version(
        rid, "end", {"state": "succeeded", "state_source": "job", "metrics": {evil: 1.0}}
    )
    for args in (("ls",), ("show", rid)):
        out = run_cli(*args, "--store", store.root)
        assert out.returncode == 0, out.stderr
        for ch in ("\x1b", "\x07", "\r", "\x9b"):
            assert ch not in out.stdout, (args, repr(out.stdout))
        assert "\\x1b" in out.stdout
