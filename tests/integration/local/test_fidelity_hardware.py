"""Issue 13, repro 9: hardware verdicts that cannot be missed, on the local backend.

A class whose ``expect`` cannot match this machine (a CPU model string this machine's
/proc/cpuinfo does not hold: the test reads it itself) is run in both ``on_mismatch`` modes
through the real ``runrec`` CLI: ``fail`` ends the run before the user's code (the test checks
the code's own side effect is absent), ``flag`` lets it run and every view marks it: ``ls``,
``show``, ``report``, ``table`` / ``rr.query`` (``hardware.match``), ``--wait``, ``diff``.
"""

from __future__ import annotations

import json
import os
import socket
import sys

import jobfns
import pytest
from helpers import git, run_cli

import runrec_cluster as rr
from runrec_cluster.errors import JobFailed

NO_SUCH_CPU = "NoSuchCPU-runrec-issue13"
# the user's code: leaves a file behind, so the test sees whether it ran
TOUCH = "import pathlib, sys; pathlib.Path(sys.argv[1]).write_text('ran')"


def _cpu_model() -> str:
    """Ground truth: this machine's CPU model as /proc/cpuinfo names it."""
    with open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return ""


@pytest.fixture
def project(repo):
    """The test repository with hardware classes in runrec.toml (committed: reruns check out)."""
    assert NO_SUCH_CPU.lower() not in _cpu_model().lower()
    (repo / "runrec.toml").write_text(
        f"""
[hardware.strict]
expect = {{ cpu_model = "{NO_SUCH_CPU}" }}
on_mismatch = "fail"

[hardware.lenient]
expect = {{ cpu_model = "{NO_SUCH_CPU}" }}

[hardware.here]
expect = {{ hostname = "{socket.gethostname()}" }}

[hardware.steer-only]
slurm = {{ constraint = "hwclass-x" }}
"""
    )
    (repo / ".gitignore").write_text("out-*\n")
    git(repo, "add", ".")
    git(repo, "commit", "-qm", "classes")
    return repo


def submit(store, project, cls, *extra):
    return run_cli(
        "submit",
        "--store",
        store.root,
        "--backend",
        "local",
        "--hardware",
        cls,
        "--wait",
        *extra,
        "--",
        sys.executable,
        "-c",
        TOUCH,
        str(project / f"out-{cls}"),
        cwd=project,
    )


def only_run(store):
    runs = list(store.run_ids())
    assert len(runs) == 1, runs
    return store.load(runs[0])


def cli(store, *args, cwd=None):
    r = run_cli(*args, "--store", store.root, cwd=cwd)
    assert r.returncode == 0, (args, r.stdout, r.stderr)
    return r.stdout


def test_fail_mode_stops_before_the_users_code(store, project):
    r = submit(store, project, "strict")
    assert r.returncode == 1, (r.stdout, r.stderr)
    assert "failed (hardware_mismatch)" in r.stdout
    assert not (project / "out-strict").exists(), "the user's command ran"
    rec = only_run(store)
    assert rec.state == rr.RunState.FAILED and rec.failure.cause.value == "hardware_mismatch"
    assert rec.failure.source == "job" and rec.exit_code is None
    model = _cpu_model()
    assert rec.execution.hardware_match is False
    assert rec.execution.hardware_mismatches == [
        f"cpu_model: expected {NO_SUCH_CPU!r}, node has {model!r}"
    ]
    assert rec.execution.hardware_mismatches[0] in rec.failure.message
    assert rec.node.hostname == socket.gethostname()  # the node was recorded before stopping
    warn = " ".join(r.stderr.split())
    assert "warning:" in warn and "'strict'" in warn and NO_SUCH_CPU in warn
    ls = cli(store, "ls", cwd=project)
    assert "failed (hardware_mismatch)" in ls
    show = " ".join(cli(store, "show", rec.run_id, cwd=project).split())
    assert "failed (hardware_mismatch)" in show and "on mismatch: fail" in show
    assert "DID NOT MATCH: the run was failed before your code ran" in show


def test_fail_mode_function_run_raises_and_does_not_call(store, project, tmp_path):
    ex = rr.Executor(backend="local", store=store, hardware="strict", cwd=project)
    out = tmp_path / "called"
    h = ex.submit(jobfns.with_artifact, str(out))
    with pytest.raises(JobFailed, match="hardware class 'strict'"):
        h.result(timeout=120)
    assert not out.exists()
    assert h.record().failure.cause.value == "hardware_mismatch"


def test_flag_mode_runs_and_every_view_marks_it(store, project):
    r = submit(store, project, "lenient")
    assert r.returncode == 0, (r.stdout, r.stderr)
    assert (project / "out-lenient").read_text() == "ran"
    assert "succeeded (hardware mismatch)" in r.stdout
    warn = " ".join(r.stderr.split())
    assert "warning:" in warn and "'lenient'" in warn
    assert f"cpu_model: expected {NO_SUCH_CPU!r}" in warn
    rec = only_run(store)
    assert rec.state == rr.RunState.SUCCEEDED and rec.execution.hardware_match is False
    assert rec.execution.hardware_on_mismatch == "flag"
    ls = cli(store, "ls", cwd=project)
    assert "succeeded (hardware mismatch)" in ls
    listed = json.loads(cli(store, "ls", "--json", cwd=project))
    assert listed[0]["hardware_match"] is False and listed[0]["hardware"] == "lenient"
    show = " ".join(cli(store, "show", rec.run_id, cwd=project).split())
    assert "HARDWARE MISMATCH" in show.split("Identity")[0]  # the header line
    assert "hardware class: lenient (DID NOT MATCH: the run went on" in show
    assert f"mismatch: cpu_model: expected {NO_SUCH_CPU!r}, node has {_cpu_model()!r}" in show
    rows = json.loads(
        cli(
            store,
            "table",
            "--format",
            "json",
            "--columns",
            "run_id,hardware.class,hardware.match,hardware.mismatches",
            cwd=project,
        )
    )
    assert rows == [
        {
            "run_id": rec.run_id,
            "hardware.class": "lenient",
            "hardware.match": False,
            "hardware.mismatches": rec.execution.hardware_mismatches[0],
        }
    ]
    flagged_ls = cli(store, "ls", "--where", "hardware.match == false", cwd=project)
    assert rec.run_id[:8] in flagged_ls
    df = rr.query(store, where="hardware.match == false", columns=["run_id", "hardware.match"])
    assert list(df["run_id"]) == [rec.run_id] and bool(df["hardware.match"].iloc[0]) is False


def test_a_matched_run_has_no_warning_and_match_true(store, project):
    r = submit(store, project, "here")
    assert r.returncode == 0 and "warning" not in r.stderr, (r.stdout, r.stderr)
    assert f"{only_run(store).run_id} succeeded\n" in r.stdout
    df = rr.query(store, columns=["hardware.class", "hardware.match"])
    assert df.to_dict(orient="records") == [{"hardware.class": "here", "hardware.match": True}]


def test_report_flags_mismatched_runs(store, project, tmp_path):
    ex = rr.Executor(backend="local", store=store, hardware="lenient", cwd=project)
    hs = ex.map_array(jobfns.train, [{"lr": 0.1}, {"lr": 0.2}])
    for h in hs:
        h.result(timeout=120)
    sweep = hs[0].record().sweep_id
    out = tmp_path / "report.html"
    cli(store, "report", sweep, "-o", str(out), cwd=project)
    page = out.read_text()
    assert "HARDWARE MISMATCH: 2 runs ran on a node that did not meet its hardware class" in page
    for h in hs:
        assert f"<tr id='run-{h.run_id}' class='hwmismatch'>" in page
    assert page.count("<td>lenient: MISMATCH</td>") == 2
    assert f"cpu_model: expected &#x27;{NO_SUCH_CPU}&#x27;" in page


def test_local_run_of_a_steering_only_class_is_never_not_checked_yet(store, project):
    r = submit(store, project, "steer-only")
    assert r.returncode == 0, (r.stdout, r.stderr)
    rec = only_run(store)
    assert rec.execution.hardware_match is None
    assert rec.execution.hardware_placement == (
        f"ran on {socket.gethostname()} (the local backend has no scheduler to steer); "
        "no expect to check"
    )
    show = " ".join(cli(store, "show", rec.run_id, cwd=project).split())
    assert "not checked yet" not in show
    assert f"hardware class: steer-only (ran on {socket.gethostname()}" in show


def test_diff_labels_a_lost_match_incidental(store, project):
    r = submit(store, project, "here")
    assert r.returncode == 0, (r.stdout, r.stderr)
    orig = only_run(store)
    rr_ = run_cli(
        "rerun", orig.run_id, "--store", store.root, "--hardware", "lenient", "--wait", cwd=project
    )
    assert rr_.returncode == 0, (rr_.stdout, rr_.stderr)
    assert "succeeded (hardware mismatch)" in rr_.stdout and "warning:" in rr_.stderr
    new = next(store.load(i) for i in store.run_ids() if i != orig.run_id)
    assert new.execution.hardware_match is False
    changes = json.loads(cli(store, "diff", orig.run_id, new.run_id, "--json", cwd=project))
    by_key = {c["key"]: c for c in changes["differences"]}
    assert by_key["hardware"]["label"] == "intended"
    assert by_key["hardware.match"]["a"] is True and by_key["hardware.match"]["b"] is False
    assert by_key["hardware.match"]["label"] == "incidental"
    assert by_key["hardware.mismatches"]["label"] == "incidental"


def test_bad_on_mismatch_is_a_clear_error(store, project):
    (project / "runrec.toml").write_text('[hardware.gpu]\non_mismatch = "stop"\n')
    r = submit(store, project, "gpu")
    assert r.returncode == 1 and "Traceback" not in r.stderr
    msg = " ".join(r.stderr.split())
    assert "hardware class 'gpu'" in msg and "on_mismatch = 'stop'" in msg
    assert '"fail"' in msg and '"flag"' in msg and "runrec.toml" in msg
    assert list(store.run_ids()) == []


def test_an_index_written_before_the_hardware_columns_is_rebuilt(store, project):
    import pyarrow as pa
    import pyarrow.ipc as ipc

    assert submit(store, project, "lenient").returncode == 0
    rr.query(store)  # writes the index
    path = store.root + "/index/runs-v1.arrow"
    with pa.memory_map(path, "r") as src:
        table = ipc.open_file(src).read_all()
    old = table.drop_columns([c for c in table.column_names if c.startswith("hardware.")])
    old = old.replace_schema_metadata(table.schema.metadata)  # as an older runrec wrote it
    with pa.OSFile(path + ".tmp", "wb") as sink, ipc.new_file(sink, old.schema) as w:
        w.write_table(old)
    os.replace(path + ".tmp", path)  # never rewrite a mapped file in place
    df = rr.query(store, columns=["hardware.class", "hardware.match"])
    assert df.to_dict(orient="records") == [{"hardware.class": "lenient", "hardware.match": False}]
