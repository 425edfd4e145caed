"""Issue 13, repro 11: a secret passed as a function argument never reaches the shared store.

Real local runs of a function in a real git repository. The test's own values are the ground
truth: it greps every file under the store (raw, and zstd-decompressed) for them, the job
writes what it received to a file of the test's, and the job reports the mode of its secrets
file while it runs (``os.stat`` by the job itself). Reruns through the real ``runrec`` CLI.
"""

from __future__ import annotations

import importlib
import io
import json
import os
import secrets
import stat
import sys

import pytest
import zstandard
from helpers import git, run_cli

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


def _files(root: str) -> list[str]:
    return [os.path.join(d, f) for d, _, fs in os.walk(root) for f in fs]


def _contents(path: str) -> list[bytes]:
    with open(path, "rb") as f:
        raw = f.read()
    out = [raw]
    if raw.startswith(b"\x28\xb5\x2f\xfd"):  # a zstd frame: every blob and record file
        with zstandard.ZstdDecompressor().stream_reader(
            io.BytesIO(raw), read_across_frames=True
        ) as r:
            out.append(r.read())
    return out


def _holding(root: str, *needles: str) -> dict[str, list[str]]:
    """{file under root: [needles found in its bytes or decompressed bytes]}"""
    found: dict[str, list[str]] = {}
    files = _files(root)
    assert files, root
    for p in files:
        hits = [n for n in needles if any(n.encode() in b for b in _contents(p))]
        if hits:
            found[p] = hits
    return found


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
    assert _holding(store.root, "Hunter2Hunter2", NESTED) == {}
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
    assert _holding(store.root, "Hunter2Hunter2", NESTED, "Other7Secret7", "Env5Secret5") == {}

    # a rerun of the rerun: one variable gives both the original's dsn and the --set one
    out.unlink()
    env = {"RUNREC_SECRET_CONN_PASSWORD": NESTED, "RUNREC_SECRET_DSN": DSN}
    before = set(store.run_ids())
    r = _cli(store, "rerun", rid, "--wait", env=env)
    assert r.returncode == 0, (r.stdout, r.stderr)
    seen = json.loads(out.read_text())
    assert (seen["dsn"], seen["password"]) == (DSN, NESTED)
    assert _holding(store.root, "Hunter2Hunter2", NESTED, "Other7Secret7", "Env5Secret5") == {}
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
    assert _holding(store.root, "Hunter2Hunter2", NESTED) == {}


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
