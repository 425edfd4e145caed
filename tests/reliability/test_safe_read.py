"""Reading, listing, querying and exporting never unpickle.

Two real runs (a sweep on the local backend) return an object whose pickle, when loaded, runs
code that appends to a marker file: their result blobs are live malicious pickles written by
the job itself. Then the call blob of each run is replaced by another malicious pickle (a new
record version naming it), and one run's package list and patch blobs are pointed at it too.
Every reading command of the real CLI runs against that store, and the marker must never
appear. The control: ``runrec rerun`` does load the pickled call (of a function it cannot import
by name) and says so first; the marker then appears, written by the rerun's job process.
"""

from __future__ import annotations

import json
import os
import pickle

import msgspec
import pytest
from helpers import run_cli
from helpers import write_figures as _write_results

import runrec_cluster as rr
from runrec_cluster.lineage import graph as lineage
from runrec_cluster.record import to_patch
from runrec_cluster.views import export

RESULTS_DIR = os.environ.get("RUNREC_RELIABILITY_RESULTS") or os.path.join(
    os.path.dirname(os.path.abspath(__file__)), "results"
)


def _evil_kit():
    """``Evil(marker, tag)``: pickles to ``exec(code)``, and that code appends ``tag`` and the
    unpickling process's argv to ``marker``. ``job(marker)`` returns one (the job pickles its
    result, since it is not msgpack-able). Local definitions: cloudpickle ships them by value."""

    class Evil:
        def __init__(self, marker, tag):
            self.marker, self.tag = marker, tag

        def __reduce__(self):
            code = (
                "import sys\n"
                f"open({self.marker!r}, 'a').write({self.tag!r} + ' ' + repr(sys.argv) + '\\n')\n"
            )
            return (exec, (code,))

        def __repr__(self):
            return "Evil()"

    def job(marker, i=0):
        return Evil(marker, f"result-{i}")

    return Evil, job


def _cli(store, *args):
    return run_cli(*args, "--store", store.root, env={"COLUMNS": "200"})


def test_reading_commands_never_unpickle(tmp_path, repo, monkeypatch):
    monkeypatch.chdir(repo)
    marker = str(tmp_path / "PWNED")
    Evil, job = _evil_kit()

    # the payload is live: loading it does write the marker (in a separate control file)
    control = str(tmp_path / "control")
    pickle.loads(pickle.dumps(Evil(control, "control")))
    assert os.path.exists(control)

    store = rr.Store(tmp_path / "store")
    ex = rr.Executor(backend="local", store=store, cwd=repo)
    handles = ex.map_array(job, [{"marker": marker, "i": 0}, {"marker": marker, "i": 1}])
    recs = [h.wait(timeout=180) for h in handles]  # wait() reads the record, not the result
    assert all(r.state == rr.RunState.SUCCEEDED for r in recs), [r.failure for r in recs]
    assert all(r.result.format == "pickle" for r in recs)
    a, b = (r.run_id for r in recs)
    sweep = recs[0].sweep_id
    # the results are the job's own malicious pickles
    assert b"exec" in store.get_blob(recs[0].result.blob)

    # plant: the calls become malicious pickles; run B also gets a pickle where a msgpack
    # package list and a text patch belong, and a result mislabelled "msgpack"
    evil_call = store.put_blob(pickle.dumps(Evil(marker, "call")))
    for r in recs:
        store.write_version(
            r.run_id,
            "plant",
            to_patch(entrypoint=msgspec.structs.replace(r.entrypoint, call_blob=evil_call)),
        )
    evil_other = store.put_blob(pickle.dumps(Evil(marker, "other")))
    rb = store.load(b)
    store.write_version(
        b,
        "plant",
        to_patch(
            launch_env=msgspec.structs.replace(rb.launch_env, packages_blob=evil_other),
            code=msgspec.structs.replace(rb.code, patch_blob=evil_other, patch_size=99),
            result=msgspec.structs.replace(rb.result, blob=evil_other, format="msgpack"),
        ),
    )
    assert store.load(a).entrypoint.call_blob == evil_call
    assert store.load(b).launch_env.packages_blob == evil_other

    out = tmp_path / "out"
    out.mkdir()
    commands = [
        ["show", a],
        ["show", b],
        ["ls"],
        ["ls", "--json"],
        ["ls", "--where", 'state == "succeeded"', "--columns", "run_id,name,state"],
        ["ls", "--negative"],
        ["table", "--format", "json"],
        ["table", "--format", "csv", "--where", "sweep_index >= 0"],
        ["table", "--format", "parquet", "-o", str(out / "t.parquet")],
        ["index", "--rebuild"],
        ["compare", sweep],
        ["compare", sweep, "--json"],
        ["report", sweep, "-o", str(out / "report.html")],
        ["export", a, "--format", "json"],
        ["export", b, "--format", "json", "-o", str(out / "b.json")],
        ["export", a, "--format", "openlineage"],
        ["export", b, "--format", "openlineage"],
        ["lineage", a],
        ["lineage", b, "--json"],
        ["diff", a, b],
        ["diff", a, b, "--json", "--all"],
        ["history", a],
        ["history", b],
        ["logs", a],
        ["promoted"],
        ["retirements"],
    ]
    ran = []
    for args in commands:
        r = _cli(store, *args)
        assert "Traceback" not in r.stderr, (args, r.stderr)
        assert r.returncode == 0, (args, r.stdout, r.stderr)
        assert not os.path.exists(marker), f"`runrec {' '.join(args)}` unpickled: {args}"
        ran.append(args[0])
    exported = json.loads((out / "b.json").read_text())
    assert "not unpickled" in json.dumps(exported["inlined"]["entrypoint.call"])

    # the same through the Python API
    for rid in (a, b):
        rr.load(store, rid)
        export.export_json(store, store.load(rid))
    rows = rr.query(store, where="sweep_index >= 0")
    assert len(rows) == 2
    lineage.build_graph(store)
    assert not os.path.exists(marker)

    # the control: rerun loads the pickled call, in the job, after saying so
    r = _cli(store, "rerun", a, "--wait")
    note = f"calling the function recorded in the pickled call of {a}"
    assert note in " ".join(r.stderr.split()), r.stderr  # (the console may wrap it)
    assert os.path.exists(marker), "the rerun's job should have loaded the (malicious) call"
    with open(marker) as f:
        lines = f.read().splitlines()
    assert len(lines) == 1 and lines[0].startswith("call ") and "runrec_cluster" in lines[0]
    assert "job" in lines[0]  # the job process, not the `runrec rerun` command itself
    assert r.returncode == 1  # the planted call is not a (fn, args, kwargs): the rerun failed

    _write_results(
        "test_reading_commands_never_unpickle",
        "Real runs whose result, call, package-list and patch blobs are malicious pickles; "
        "every reading command of the real CLI and the Python read API run against them, then "
        "`runrec rerun` as the control.",
        runs=2,
        malicious_blobs=4,
        cli_commands=len(commands),
        distinct_commands=len(set(ran)),
        api_calls=6,
        unpickled_by_readers=0,
        unpickled_by_rerun_job=len(lines),
    )


@pytest.mark.parametrize("fmt", ["pickle", "msgpack"])
def test_runhandle_result_is_the_only_reader_of_a_pickled_result(tmp_path, repo, fmt, monkeypatch):
    """``RunHandle.result()`` is the user's own request for the value: it unpickles a pickled
    result, and never a blob labelled msgpack."""
    monkeypatch.chdir(repo)
    marker = str(tmp_path / "PWNED")
    Evil, job = _evil_kit()
    store = rr.Store(tmp_path / "store")
    h = rr.Executor(backend="local", store=store, cwd=repo).submit(job, marker)
    rec = h.wait(timeout=180)
    if fmt == "msgpack":
        store.write_version(
            h.run_id, "plant", to_patch(result=msgspec.structs.replace(rec.result, format=fmt))
        )
        with pytest.raises(Exception):  # noqa: B017 - any refusal; never an unpickle
            h.result(timeout=10)
        assert not os.path.exists(marker)
    else:
        h.result(timeout=10)
        assert os.path.exists(marker)
