"""Issue 13, repro 11 on the real Slurm cluster (slurm/up): a secret argument of a function, or
a secret item of a command's command line, reaches the job on a compute node through the
owner-only secrets file (the nodes share the directory, as $HOME is shared on a cluster), never
through the store; the job removes the file when the run ends."""

import hashlib
import importlib
import io
import json
import os
import secrets
import sys

import pytest
import zstandard
from slurm_target import NODE_X, NODE_Y

import runrec_cluster as rr

pytestmark = pytest.mark.usefixtures("slurm")

DSN = "postgresql://bob:Hunter2Hunter2@db/x"

MODULE = """\
import hashlib, os


def connect(dsn, conn):
    d = os.environ.get("RUNREC_SECRETS_DIR", "")
    return {
        "dsn_sha256": hashlib.sha256(dsn.encode()).hexdigest(),
        "password_sha256": hashlib.sha256(conn["password"].encode()).hexdigest(),
        "file_there": os.path.exists(os.path.join(d, os.environ["RUNREC_RUN_ID"] + ".msgpack")),
        "node": os.environ.get("SLURMD_NODENAME"),
    }
"""


def _sha(s: str) -> str:
    return hashlib.sha256(s.encode()).hexdigest()


def _leaks(root: str, *needles: str) -> list[str]:
    out = []
    for d, _, fs in os.walk(root):
        for f in fs:
            p = os.path.join(d, f)
            with open(p, "rb") as fh:
                raw = fh.read()
            forms = [raw]
            if raw.startswith(b"\x28\xb5\x2f\xfd"):
                with zstandard.ZstdDecompressor().stream_reader(
                    io.BytesIO(raw), read_across_frames=True
                ) as r:
                    forms.append(r.read())
            if any(n.encode() in b for n in needles for b in forms):
                out.append(p)
    return out


def test_secret_argument_reaches_the_slurm_job_but_not_the_store(
    store, project, tmp_path, monkeypatch
):
    sdir = tmp_path / "home-cache" / "secrets"
    monkeypatch.setenv("RUNREC_SECRETS_DIR", str(sdir))
    name = f"dbjob_{secrets.token_hex(4)}"
    (project / f"{name}.py").write_text(MODULE)
    sys.path.insert(0, str(project))
    try:
        mod = importlib.import_module(name)
    finally:
        sys.path.remove(str(project))
    ex = rr.Executor(backend="slurm", store=store, timeout_min=5, cpus=1, mem_gb=0.5)
    nested = "Nested9Secret9"
    h = ex.submit(mod.connect, DSN, {"host": "db", "password": nested})
    got = h.result(timeout=180)
    assert got["node"] in (NODE_X, NODE_Y)
    assert got["dsn_sha256"] == _sha(DSN) and got["password_sha256"] == _sha(nested)
    assert got["file_there"] is True  # the node read it from the shared directory
    rec = h.record()
    assert rec.entrypoint.withheld == ["conn.password", "dsn"]
    assert os.listdir(sdir) == []  # removed by the job on the node when the run ended
    assert _leaks(store.root, "Hunter2Hunter2", nested) == []


COMMAND = """\
import hashlib, json, os, sys

d = os.environ.get("RUNREC_SECRETS_DIR", "")
with open(sys.argv[1], "w") as fh:
    json.dump(
        {
            "argv_sha256": hashlib.sha256(json.dumps(sys.argv[2:]).encode()).hexdigest(),
            "file_there": os.path.exists(
                os.path.join(d, os.environ["RUNREC_RUN_ID"] + ".msgpack")
            ),
            "node": os.environ.get("SLURMD_NODENAME"),
        },
        fh,
    )
"""


def test_secret_command_line_item_reaches_the_slurm_job_but_not_the_store(
    store, project, tmp_path, monkeypatch
):
    sdir = tmp_path / "home-cache" / "secrets"
    monkeypatch.setenv("RUNREC_SECRETS_DIR", str(sdir))
    script = project / "report.py"
    script.write_text(COMMAND)
    out = tmp_path / "seen.json"
    pw = "Cmd8Secret8Cmd8"
    args = ["--password", pw, f"--db={DSN}", "--lr", "0.1"]
    ex = rr.Executor(backend="slurm", store=store, timeout_min=5, cpus=1, mem_gb=0.5)
    h = ex.submit_command([sys.executable, str(script), str(out), *args])
    rec = h.wait(timeout=180)
    assert rec.state == rr.RunState.SUCCEEDED, rec.failure
    got = json.loads(out.read_text())
    assert got["node"] in (NODE_X, NODE_Y)
    assert got["argv_sha256"] == _sha(json.dumps(args))  # the command got the real values
    assert got["file_there"] is True  # the node read them from the shared directory
    assert rec.entrypoint.withheld == ["argv[4]", "argv[5]"] and rec.entrypoint.call_blob is None
    assert rec.entrypoint.argv[3:6] == [
        "--password",
        "[redacted]",
        "--db=postgresql://[redacted]@db/x",
    ]
    assert os.listdir(sdir) == []  # removed by the job on the node when the run ended
    assert _leaks(store.root, pw, "Hunter2Hunter2") == []
