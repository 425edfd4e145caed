"""Issue 13, repro 11: a secret passed as a function argument, or on a command's command line,
never reaches the shared store.

Real local runs of a function and of commands (through the real ``runrec submit``) in a real git
repository. The test's own values are the ground truth: it greps every file under the store
(raw, and zstd-decompressed) for them, the job (the command) writes what it received to a file
of the test's, and reports the mode of its secrets file while it runs (``os.stat`` by the job
itself). Reruns and cancels through the real ``runrec`` CLI.
"""

from __future__ import annotations

import importlib
import json
import os
import secrets
import stat
import sys

import pytest
from helpers import git, run_cli, store_files_holding, wait_for

import runrec_cluster as rr
from runrec_cluster.record import FailureCause, RunState

DSN = "postgresql://bob:Hunter2Hunter2@db/x"
NESTED = "Nested9Secret9"
OTHER = "postgresql://bob:Other7Secret7@db/y"

JOB = """\
import json, os, stat, time


def connect(dsn, conn, out, wait_for=None):
    while wait_for and not os.path.exists(wait_for):
        time.sleep(0.05)
    run_id = os.environ["RUNREC_RUN_ID"]
    d = os.environ["RUNREC_SECRETS_DIR"]
    f = os.path.join(d, run_id + ".msgpack")
    seen = {"dsn": dsn, "password": conn["password"], "host": conn["host"]}
    if os.path.exists(f):
        seen["file_mode"] = stat.S_IMODE(os.stat(f).st_mode)
        seen["dir_mode"] = stat.S_IMODE(os.stat(d).st_mode)
    with open(out, "w") as fh:
        json.dump(seen, fh)
    return "connected"
"""

# a command: writes what it received (sys.argv) and the mode of its secrets file; parses its
# options with argparse (so the argparse capture of the job sees them too), then waits for a
# gate file when asked
TOOL = """\
import argparse, json, os, stat, sys, time

p = argparse.ArgumentParser()
p.add_argument("out")
p.add_argument("--password")
p.add_argument("--db")
p.add_argument("--lr", type=float, default=0.01)
p.add_argument("--wait-for")
a, _ = p.parse_known_args()  # PASSWORD=... stays in sys.argv, unparsed
d = os.environ["RUNREC_SECRETS_DIR"]
f = os.path.join(d, os.environ["RUNREC_RUN_ID"] + ".msgpack")
seen = {"argv": sys.argv[1:], "pid": os.getpid()}
if os.path.exists(f):
    seen["file_mode"] = stat.S_IMODE(os.stat(f).st_mode)
    seen["dir_mode"] = stat.S_IMODE(os.stat(d).st_mode)
with open(a.out + ".tmp", "w") as fh:
    json.dump(seen, fh)
os.replace(a.out + ".tmp", a.out)
while a.wait_for and not os.path.exists(a.wait_for):
    time.sleep(0.05)
"""
CMD_PW = "Hunter2Hunter2"
CMD_DB = "postgresql://bob:Db7Secret7@db/x"
CMD_ENV = "Env3Secret3"


@pytest.fixture
def project(tmp_path, monkeypatch):
    d = tmp_path / "proj"
    d.mkdir()
    git(d, "init", "-q", "-b", "main")
    name = f"dbjob_{secrets.token_hex(4)}"
    (d / f"{name}.py").write_text(JOB)
    (d / ".gitignore").write_text("store/\n")
    git(d, "add", ".")
    git(d, "commit", "-qm", "first")
    sdir = tmp_path / "private" / "secrets"
    monkeypatch.setenv("RUNREC_SECRETS_DIR", str(sdir))
    monkeypatch.chdir(d)
    sys.path.insert(0, str(d))
    try:
        mod = importlib.import_module(name)
    finally:
        sys.path.remove(str(d))
    return d, mod, str(sdir)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
        with open(f"/proc/{pid}/stat") as f:  # a zombie is gone for our purpose
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (ProcessLookupError, FileNotFoundError):
        return False


def _cli(store, *args, env=None):
    return run_cli(*args, "--store", store.root, env=env)


def test_secret_arguments_stay_out_of_the_store_and_reruns_ask_for_them(project, tmp_path):
    d, mod, sdir = project
    store = rr.Store(d / "store")
    out = tmp_path / "seen.json"
    conn = {"host": "db", "password": NESTED}
    h = rr.Executor(backend="local", store=store).submit(mod.connect, DSN, conn, str(out))
    assert h.result(timeout=180) == "connected"
    assert conn == {"host": "db", "password": NESTED}  # the caller's objects are untouched

    # the job got the real values, from an owner-only file outside the store
    seen = json.loads(out.read_text())
    assert (seen["dsn"], seen["password"], seen["host"]) == (DSN, NESTED, "db")
    assert seen["file_mode"] == 0o600 and seen["dir_mode"] == 0o700
    assert not os.path.realpath(sdir).startswith(os.path.realpath(store.root))
    # ... removed when the run ended
    assert os.listdir(sdir) == []

    rec = h.record()
    assert rec.entrypoint.withheld == ["conn.password", "dsn"]
    assert rec.entrypoint.secrets_dir == sdir
    assert rec.config["dsn"].value == "postgresql://[redacted]@db/x"
    assert rec.config["conn"].value == {"host": "db", "password": "[redacted]"}

    # no file of the store holds either secret, raw or decompressed
    assert store_files_holding(store.root, "Hunter2Hunter2", NESTED) == {}
    exp = _cli(store, "export", h.run_id)
    assert exp.returncode == 0 and "Hunter2" not in exp.stdout and NESTED not in exp.stdout
    assert "dsn" in json.loads(exp.stdout)["record"]["entrypoint"]["withheld"]
    shown = _cli(store, "show", h.run_id)
    assert shown.returncode == 0 and "Hunter2" not in shown.stdout
    assert "withheld: conn.password, dsn (secrets kept out of the store)" in shown.stdout

    # a rerun without the values refuses, naming each and both ways to give it
    before = set(store.run_ids())
    r = _cli(store, "rerun", h.run_id)
    assert r.returncode == 1, (r.stdout, r.stderr)
    msg = " ".join(r.stderr.split())
    assert "kept out of the store" in msg and "--set dsn=VALUE" in msg, msg
    assert "$RUNREC_SECRET_DSN" in msg and "$RUNREC_SECRET_CONN_PASSWORD" in msg, msg
    assert "--set conn=VALUE (the whole value)" in msg, msg
    assert "Traceback" not in r.stderr and set(store.run_ids()) == before

    # with --set for one and the environment for the other, it runs, and says where each came from
    out.unlink()
    env = {"RUNREC_SECRET_CONN_PASSWORD": "Env5Secret5"}
    r = _cli(store, "rerun", h.run_id, "--set", f"dsn={OTHER}", "--wait", env=env)
    assert r.returncode == 0, (r.stdout, r.stderr)
    note = " ".join(r.stderr.split())
    assert "conn.password from $RUNREC_SECRET_CONN_PASSWORD" in note, note
    assert "dsn from --set dsn" in note, note
    seen = json.loads(out.read_text())
    # --set dsn replaces the whole argument; conn.password comes from the environment
    assert (seen["dsn"], seen["password"], seen["host"]) == (OTHER, "Env5Secret5", "db")
    (rid,) = set(store.run_ids()) - before
    rerun = store.load(rid)
    assert rerun.state == RunState.SUCCEEDED and rerun.rerun_of == h.run_id
    assert rerun.entrypoint.withheld == ["--set dsn", "conn.password", "dsn"]
    assert os.listdir(sdir) == []
    assert (
        store_files_holding(store.root, "Hunter2Hunter2", NESTED, "Other7Secret7", "Env5Secret5")
        == {}
    )

    # a rerun of the rerun: one variable gives both the original's dsn and the --set one
    out.unlink()
    env = {"RUNREC_SECRET_CONN_PASSWORD": NESTED, "RUNREC_SECRET_DSN": DSN}
    before = set(store.run_ids())
    r = _cli(store, "rerun", rid, "--wait", env=env)
    assert r.returncode == 0, (r.stdout, r.stderr)
    seen = json.loads(out.read_text())
    assert (seen["dsn"], seen["password"]) == (DSN, NESTED)
    assert (
        store_files_holding(store.root, "Hunter2Hunter2", NESTED, "Other7Secret7", "Env5Secret5")
        == {}
    )
    assert os.listdir(sdir) == []


def test_a_missing_secrets_file_fails_the_run_clearly(project, tmp_path):
    d, mod, sdir = project
    store = rr.Store(d / "store")
    gate = tmp_path / "gate"
    ex = rr.Executor(backend="local", store=store, local_max_parallel=1)
    common = {"conn": {"host": "db", "password": NESTED}}
    hs = ex.map_array(
        mod.connect,
        [
            {"dsn": DSN, "out": str(tmp_path / "a.json"), "wait_for": str(gate), **common},
            {"dsn": DSN, "out": str(tmp_path / "b.json"), **common},
        ],
    )
    # the second run waits behind the first; its secrets file vanishes meanwhile (a node
    # that does not share the directory sees the same)
    path = os.path.join(sdir, hs[1].run_id + ".msgpack")
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    os.unlink(path)
    gate.write_text("go")
    assert hs[0].result(timeout=180) == "connected"
    rec = hs[1].wait(timeout=180)
    assert rec.state == RunState.FAILED and rec.failure.cause == FailureCause.INFRASTRUCTURE
    msg = rec.failure.message
    assert "withheld from the store" in msg and "conn.password, dsn" in msg, msg
    assert path in msg and "RUNREC_SECRETS_DIR" in msg, msg
    assert not (tmp_path / "b.json").exists()  # the function never ran with placeholders
    assert os.listdir(sdir) == []
    assert store_files_holding(store.root, "Hunter2Hunter2", NESTED) == {}


def test_a_call_without_secrets_writes_no_secrets_file(project, tmp_path):
    d, mod, sdir = project
    store = rr.Store(d / "store")
    out = tmp_path / "plain.json"
    h = rr.Executor(backend="local", store=store).submit(
        mod.connect, "sqlite:///x.db", {"host": "db", "password": ""}, str(out)
    )
    assert h.result(timeout=180) == "connected"
    rec = h.record()
    assert rec.entrypoint.withheld == [] and rec.entrypoint.secrets_dir is None
    assert not os.path.exists(sdir)


# -- a command's command line (``runrec submit -- prog --password X``) --------------------------


@pytest.fixture
def tool(project):
    d, _, sdir = project
    (d / "tool.py").write_text(TOOL)
    git(d, "add", "tool.py")
    git(d, "commit", "-qm", "tool")
    return d, str(d / "tool.py"), sdir


def _submit(store, cwd, *argv, wait=True):
    """``runrec submit`` of ``argv`` (the real CLI); the new run's id."""
    before = set(store.run_ids())
    opts = ["--wait"] if wait else []
    r = run_cli("submit", "--store", store.root, "--backend", "local", *opts, *argv, cwd=cwd)
    assert r.returncode == 0, (r.stdout, r.stderr)
    (rid,) = set(store.run_ids()) - before
    return rid


def test_secret_command_line_items_stay_out_of_the_store_and_reruns_ask_for_them(tool, tmp_path):
    d, script, sdir = tool
    store = rr.Store(d / "store")
    out = tmp_path / "argv.json"
    argv = [
        sys.executable,
        script,
        str(out),
        "--password",
        CMD_PW,
        f"--db={CMD_DB}",
        f"PASSWORD={CMD_ENV}",
        "--lr",
        "0.1",
    ]
    rid = _submit(store, d, *argv)

    # the command received exactly its command line, the secrets from an owner-only file
    seen = json.loads(out.read_text())
    assert seen["argv"] == argv[2:]
    assert seen["file_mode"] == 0o600 and seen["dir_mode"] == 0o700
    assert os.listdir(sdir) == []  # removed when the run ended

    rec = store.load(rid)
    assert rec.state == RunState.SUCCEEDED, rec.failure
    assert rec.entrypoint.argv == [
        *argv[:4],
        "[redacted]",
        "--db=postgresql://[redacted]@db/x",
        "PASSWORD=[redacted]",
        "--lr",
        "0.1",
    ]
    assert rec.entrypoint.withheld == ["argv[4]", "argv[5]", "argv[6]"]
    assert rec.entrypoint.secrets_dir == sdir and rec.entrypoint.call_blob is None
    assert rec.config["lr"].value == 0.1 and rec.config["password"].value == "[redacted]"

    # no file of the store holds a secret, raw or decompressed (nor the CLI's views)
    assert store_files_holding(store.root, CMD_PW, "Db7Secret7", CMD_ENV) == {}
    for args in (["export", rid], ["show", rid]):
        r = _cli(store, *args)
        assert r.returncode == 0, r.stderr
        assert not [x for x in (CMD_PW, "Db7Secret7", CMD_ENV) if x in r.stdout], r.stdout

    # a rerun without the values refuses, naming each item and the ways to give it
    before = set(store.run_ids())
    r = _cli(store, "rerun", rid)
    assert r.returncode == 1, (r.stdout, r.stderr)
    msg = " ".join(r.stderr.split())
    assert "command line held values that were kept out of the store" in msg, msg
    assert "argv[4] ([redacted]): --set password=VALUE or $RUNREC_SECRET_ARGV_4" in msg, msg
    assert "--set db=VALUE or $RUNREC_SECRET_ARGV_5 (the whole argument)" in msg, msg
    assert "argv[6] (PASSWORD=[redacted]): $RUNREC_SECRET_ARGV_6" in msg, msg
    assert "Traceback" not in r.stderr and set(store.run_ids()) == before

    # --set rewrites its option's item, the environment gives a whole item: it runs, says so
    out.unlink()
    env = {
        "RUNREC_SECRET_ARGV_5": "--db=postgresql://bob:Other7Secret7@db/y",
        "RUNREC_SECRET_ARGV_6": "PASSWORD=Env5Secret5",
    }
    r = _cli(store, "rerun", rid, "--set", "password=New4Secret4", "--wait", env=env)
    assert r.returncode == 0, (r.stdout, r.stderr)
    note = " ".join(r.stderr.split())
    assert "argv[4] from --set password" in note, note
    assert "argv[5] from $RUNREC_SECRET_ARGV_5" in note, note
    assert "argv[6] from $RUNREC_SECRET_ARGV_6" in note, note
    seen = json.loads(out.read_text())
    assert seen["argv"] == [
        str(out),
        "--password",
        "New4Secret4",
        "--db=postgresql://bob:Other7Secret7@db/y",
        "PASSWORD=Env5Secret5",
        "--lr",
        "0.1",
    ]
    (rid2,) = set(store.run_ids()) - before
    rerun = store.load(rid2)
    assert rerun.state == RunState.SUCCEEDED and rerun.rerun_of == rid
    assert rerun.entrypoint.withheld == ["argv[4]", "argv[5]", "argv[6]"]
    assert os.listdir(sdir) == []
    every = (CMD_PW, "Db7Secret7", CMD_ENV, "New4Secret4", "Other7Secret7", "Env5Secret5")
    assert store_files_holding(store.root, *every) == {}


def test_a_missing_secrets_file_fails_the_command_run_clearly(tool, tmp_path):
    d, script, sdir = tool
    store = rr.Store(d / "store")
    gate = tmp_path / "gate"
    ex = rr.Executor(backend="local", store=store, local_max_parallel=1)
    first = ex.submit_command(
        [sys.executable, script, str(tmp_path / "a.json"), "--wait-for", str(gate)]
    )
    out = tmp_path / "b.json"
    second = ex.submit_command([sys.executable, script, str(out), "--password", CMD_PW])
    # the second run waits behind the first; its secrets file vanishes meanwhile (a node
    # that does not share the directory sees the same)
    path = os.path.join(sdir, second.run_id + ".msgpack")
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    os.unlink(path)
    gate.write_text("go")
    assert first.wait(timeout=180).state == RunState.SUCCEEDED
    rec = second.wait(timeout=180)
    assert rec.state == RunState.FAILED and rec.failure.cause == FailureCause.INFRASTRUCTURE
    msg = rec.failure.message
    assert "withheld from the store (argv[4])" in msg and path in msg, msg
    assert "RUNREC_SECRETS_DIR" in msg, msg
    assert not out.exists()  # the command never ran with a placeholder
    assert os.listdir(sdir) == []
    assert store_files_holding(store.root, CMD_PW) == {}


def test_cancelling_a_command_run_removes_its_secrets_file(tool, tmp_path):
    d, script, sdir = tool
    store = rr.Store(d / "store")
    out = tmp_path / "c.json"
    never = tmp_path / "never"
    argv = [sys.executable, script, str(out), "--password", CMD_PW, "--wait-for", str(never)]
    rid = _submit(store, d, *argv, wait=False)
    seen = json.loads(wait_for("the command to start", lambda: out.exists() and out.read_text()))
    assert seen["argv"][2] == CMD_PW and seen["file_mode"] == 0o600
    r = _cli(store, "cancel", rid)
    assert r.returncode == 0, (r.stdout, r.stderr)
    wait_for("the command to end", lambda: not _alive(seen["pid"]))
    rec = wait_for("the run to end", lambda: (x := store.load(rid)).state.is_terminal() and x)
    assert rec.state == RunState.CANCELLED, rec.failure
    wait_for("the secrets file to go", lambda: os.listdir(sdir) == [])
    assert store_files_holding(store.root, CMD_PW) == {}


def test_a_submit_that_fails_before_its_job_starts_leaves_no_secrets_file(project, tool, tmp_path):
    d, mod, sdir = project
    _, script, _ = tool
    store = rr.Store(d / "store")
    argv = [sys.executable, script, str(tmp_path / "x.json"), "--password", CMD_PW]
    # refused while the launch record is written (a tag with a newline): nothing is launched
    ex = rr.Executor(backend="local", store=store)
    with pytest.raises(rr.ConfigError, match="control character"):
        ex.submit_command(argv, tags={"a": "x\ny"})
    with pytest.raises(rr.ConfigError, match="control character"):
        ex.submit(
            mod.connect,
            DSN,
            {"password": "Hunter2Hunter2"},
            str(tmp_path / "y"),
            None,
            name="bad\nname",
        )
    assert not os.path.exists(sdir) or os.listdir(sdir) == []
    # the backend cannot launch (its interpreter does not exist): failed, and the file is gone
    ex = rr.Executor(backend="local", store=store, local_python=str(tmp_path / "no-python"))
    with pytest.raises(rr.BackendError, match="cannot start the local supervisor"):
        ex.submit_command(argv)
    (rid,) = store.run_ids()
    rec = store.load(rid)
    assert rec.state == RunState.FAILED and rec.entrypoint.withheld == ["argv[4]"]
    assert os.listdir(sdir) == []
    assert store_files_holding(store.root, CMD_PW, "Hunter2Hunter2") == {}
