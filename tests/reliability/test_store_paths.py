"""Odd store paths: read-only, with spaces, quotes, non-ASCII and newlines, moved or copied.

- A read-only store (a read-only bind mount as root, ``chmod -R a-w`` otherwise): ``ls``, ``show``,
  ``export``, ``table`` (the query index goes to the cache directory) work, also when a run's job
  died unrecorded; every write fails with a clear error and exit code 1.
- A store whose path has spaces, single and double quotes, non-ASCII characters and a newline:
  a real local run, then ``ls``, ``show``, ``table``, ``export`` through the real CLI.
- A store moved (``mv``) or copied (``cp -a``) elsewhere: records, blobs, results, lineage and
  promoted versions still resolve; the query index rebuilds for the new path.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time

import jobfns
import pytest
from helpers import run_cli
from helpers import write_figures as _results

import runrec_cluster as rr


def _wait_for(cond, timeout=60.0):  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, "timed out waiting"
        time.sleep(0.1)


def _cli_ok(*args: str, env=None):  # type: ignore[no-untyped-def]
    out = run_cli(*args, env=env)
    assert out.returncode == 0, f"runrec {' '.join(args)}: {out.stderr}"
    assert "Traceback" not in out.stderr
    return out


def _killed_run(store, repo, tmp_path) -> str:
    """A run whose job and supervisor were killed (-9): nobody recorded its end."""
    ex = rr.Executor(backend="local", store=store, name="killed", cwd=repo)
    pidfile = tmp_path / "pid"
    h = ex.submit(jobfns.write_pid_and_sleep, str(pidfile), 120)
    _wait_for(lambda: pidfile.exists() and pidfile.read_text())
    _wait_for(lambda: store.load(h.run_id).state == rr.RunState.RUNNING)
    rec = store.load(h.run_id)
    os.kill(rec.execution.scheduler["supervisor"]["pid"], signal.SIGKILL)
    os.kill(int(pidfile.read_text()), signal.SIGKILL)
    _wait_for(lambda: not os.path.exists(f"/proc/{pidfile.read_text()}"))
    return h.run_id


# -- read-only ---------------------------------------------------------------------------------


@pytest.fixture
def read_only(tmp_path):
    """``make(src)`` returns a read-only view of the directory ``src``: a read-only bind mount
    as root (root ignores file modes), ``chmod -R a-w`` otherwise. Undone afterwards."""
    undo = []

    def make(src):  # type: ignore[no-untyped-def]
        if os.geteuid() == 0:
            dst = tmp_path / "ro-view"
            dst.mkdir()
            r = subprocess.run(["mount", "--bind", str(src), str(dst)], capture_output=True)
            if r.returncode != 0:
                pytest.skip(f"cannot bind-mount as root here: {r.stderr.decode().strip()}")
            undo.append(["umount", "-l", str(dst)])
            r = subprocess.run(["mount", "-o", "remount,bind,ro", str(dst)], capture_output=True)
            assert r.returncode == 0, r.stderr
            return dst
        subprocess.run(["chmod", "-R", "a-w", str(src)], check=True)
        undo.append(["chmod", "-R", "u+w", str(src)])
        return src

    yield make
    for cmd in reversed(undo):
        subprocess.run(cmd, check=False)


def test_read_only_store_reads_and_refuses_writes_clearly(store, repo, tmp_path, read_only):
    ex = rr.Executor(backend="local", store=store, name="ro", cwd=repo)
    done = ex.submit(jobfns.train, 0.1)
    assert done.result(timeout=120)["acc"] == 0.9
    from runrec_cluster.lineage.annotate import annotate

    annotate(store, done.run_id, verdict="positive", note="fine")
    killed = _killed_run(store, repo, tmp_path)
    ro = read_only(store.root)
    cache = tmp_path / "cache"
    env = {"XDG_CACHE_HOME": str(cache), "RUNREC_INDEX_DIR": ""}

    # reading works
    out = _cli_ok("ls", "--store", str(ro), env=env)
    assert done.run_id[:10] in out.stdout and "succeeded" in out.stdout
    assert killed[:10] in out.stdout
    assert "could not record" in out.stderr  # the verdict on the killed run is not saved
    rows = json.loads(_cli_ok("ls", "--json", "--store", str(ro), env=env).stdout)
    assert {r["run_id"] for r in rows} == {done.run_id, killed}
    out = _cli_ok("show", done.run_id, "--store", str(ro), env=env)
    assert "succeeded" in out.stdout and "fine" in out.stdout
    _cli_ok("show", killed, "--store", str(ro), env=env)
    exported = json.loads(_cli_ok("export", done.run_id, "--store", str(ro), env=env).stdout)
    assert exported["record"]["run_id"] == done.run_id
    assert exported["inlined"]["result"] == {"lr": 0.1, "acc": 0.9}
    out = _cli_ok(
        "table", "--format", "json", "--columns", "run_id,state", "--store", str(ro), env=env
    )
    assert {r["run_id"]: r["state"] for r in json.loads(out.stdout)}[done.run_id] == "succeeded"
    index_files = [f for _d, _s, fs in os.walk(cache) for f in fs if f.endswith(".arrow")]
    assert index_files == ["runs-v1.arrow"]  # the index went to the cache directory
    assert not os.path.exists(os.path.join(ro, "index"))
    assert rr.RunHandle(rr.Store(ro), done.run_id).result(timeout=10) == {"lr": 0.1, "acc": 0.9}

    # writing fails clearly
    out = run_cli(
        "annotate", done.run_id, "--verdict", "negative", "--note", "x", "--store", str(ro)
    )
    assert out.returncode == 1 and "Traceback" not in out.stderr
    assert "Read-only file system" in out.stderr or "Permission denied" in out.stderr
    assert str(ro) in out.stderr and "--store" in out.stderr  # and what to do
    with pytest.raises(rr.StoreError) as ei:
        rr.Store(ro).write_version(done.run_id, "metrics", {"metrics": {"x": 1}})
    assert str(ro) in str(ei.value) and "--store" in str(ei.value)
    with pytest.raises(rr.StoreError) as ei:
        rr.Executor(backend="local", store=ro, cwd=repo)
    assert "is not writable" in str(ei.value)
    _results(
        "test_read_only_store_reads_and_refuses_writes_clearly",
        "A store behind a read-only bind mount: ls, show, export, table and result() work "
        "(index in the cache directory, a dead job's verdict shown unsaved); writes exit 1 "
        "with a clear message.",
        runs=2,
        read_commands_ok=6,
        write_attempts_refused=3,
    )


# -- odd names -------------------------------------------------------------------------------

ODD_NAMES = {
    "quotes-spaces-unicode": "my store 'single' \"double\" ünïcødé ストア",
    "newline-and-shell": "new\nline $HOME `id` * ; & |",
}


@pytest.mark.parametrize("case", list(ODD_NAMES))
def test_store_on_an_odd_path_works_end_to_end(tmp_path, repo, case):
    root = tmp_path / ODD_NAMES[case] / "runs store"
    store = rr.Store(root)
    ex = rr.Executor(backend="local", store=store, name="odd", cwd=repo)
    h = ex.submit(jobfns.train, 0.3)
    assert h.result(timeout=120) == {"lr": 0.3, "acc": 0.7}
    rec = store.load(h.run_id)
    assert rec.state == rr.RunState.SUCCEEDED and rec.metrics["acc"] == 0.7
    assert os.path.isfile(os.path.join(store.log_dir(h.run_id), "stderr.txt"))

    out = _cli_ok("ls", "--store", str(root))
    assert h.run_id[:10] in out.stdout and "succeeded" in out.stdout
    out = _cli_ok("ls", env={"RUNREC_STORE": str(root)})  # the same through the environment
    assert h.run_id[:10] in out.stdout
    out = _cli_ok("show", h.run_id, "--store", str(root))
    assert "succeeded" in out.stdout and "seed" in out.stdout
    rows = json.loads(_cli_ok("table", "--format", "json", "--store", str(root)).stdout)
    assert [(r["run_id"], r["state"]) for r in rows] == [(h.run_id, "succeeded")]
    assert os.path.isfile(os.path.join(root, "index", "runs-v1.arrow"))
    exported = json.loads(_cli_ok("export", h.run_id, "--store", str(root)).stdout)
    assert exported["record"]["run_id"] == h.run_id
    assert exported["inlined"]["result"] == {"lr": 0.3, "acc": 0.7}
    logs = _cli_ok("logs", h.run_id, "--store", str(root))
    assert "Traceback" not in logs.stdout
    _results(
        f"test_store_on_an_odd_path_works_end_to_end[{case}]",
        "A real local run on a store whose path has spaces, quotes, non-ASCII characters or a "
        "newline; ls, show, table, export and logs through the real CLI.",
        path=str(root),
        cli_commands_ok=6,
    )


# -- moved and copied ------------------------------------------------------------------------


def test_moved_or_copied_store_still_resolves_everything(tmp_path, repo):
    a = tmp_path / "first place" / "store"
    store = rr.Store(a)
    ex = rr.Executor(backend="local", store=store, name="mv", cwd=repo)
    out_file = tmp_path / "model.bin"
    producer = ex.submit(jobfns.with_artifact, str(out_file))
    assert producer.result(timeout=120) == "ok"
    consumer = ex.submit(jobfns.train, 0.2, inputs=[rr.Artifact(f"{producer.run_id}:model")])
    assert consumer.result(timeout=120)["acc"] == 0.8
    _cli_ok("promote", producer.run_id, "model", "--to", "mnist-net", "--store", str(a))
    rows = json.loads(_cli_ok("table", "--format", "json", "--store", str(a)).stdout)
    assert len(rows) == 2
    before = {r: store.load(r) for r in (producer.run_id, consumer.run_id)}

    b = tmp_path / "second place" / "moved store"
    b.parent.mkdir()
    subprocess.run(["mv", str(a), str(b)], check=True)
    c = tmp_path / "third place"
    c.mkdir()
    subprocess.run(["cp", "-a", str(b), str(c / "copy")], check=True)
    checked = 0
    for where in (b, c / "copy"):
        moved = rr.Store(where)
        for rid, rec in before.items():
            assert moved.load(rid[:12]) == rec  # records resolve, by prefix too
            checked += 1
        assert rr.RunHandle(moved, consumer.run_id).result(timeout=10)["acc"] == 0.8
        cons = moved.load(consumer.run_id)
        moved.get_obj(cons.launch_env.packages_blob)  # blobs resolve (and match their hash)
        assert cons.inputs[0].run_id == producer.run_id
        # lineage: the consumer was made from the producer's artifact
        lin = json.loads(
            _cli_ok("lineage", consumer.run_id, "--up", "--json", "--store", str(where)).stdout
        )
        assert producer.run_id in json.dumps(lin)
        # the promoted copy lives inside the store, found relative to it
        _cli_ok("verify", "mnist-net@v1", "--store", str(where))
        # the query index is rebuilt for the new path
        out = _cli_ok("index", "--store", str(where))
        assert "rebuilt" in out.stdout and "2 runs" in out.stdout
        rows = json.loads(_cli_ok("table", "--format", "json", "--store", str(where)).stdout)
        assert {r["run_id"]: r["state"] for r in rows} == {
            producer.run_id: "succeeded",
            consumer.run_id: "succeeded",
        }
        # and it takes new runs, which resolve the promoted version inside the new place
        h = rr.Executor(backend="local", store=moved, name="after", cwd=repo).submit(
            jobfns.train, 0.5, inputs=[rr.Artifact("mnist-net@v1")]
        )
        assert h.result(timeout=120)["acc"] == 0.5
        used = moved.load(h.run_id).inputs[0]
        assert used.path.startswith(str(where)) and used.promoted == "mnist-net@v1"
    assert not os.path.exists(a)
    _results(
        "test_moved_or_copied_store_still_resolves_everything",
        "A store with 2 linked runs and a promoted artifact, moved with mv and copied with "
        "cp -a: records, results, blobs, lineage, the promoted copy and the query index "
        "resolve at the new paths, and new runs use them.",
        places=2,
        records_checked=checked,
    )
