"""The job side's pieces, split out of job.execute: the end of a command run, where a rescue
goes, and a launch record the job cannot run (the errors tree, not RuntimeError)."""

from __future__ import annotations

import os
import signal

import pytest

import runrec_cluster as rr
from runrec_cluster.job import outcome
from runrec_cluster.job.commands import exit_patch
from runrec_cluster.job.execute import execute
from runrec_cluster.job.run import current_run, set_current
from runrec_cluster.record import FailureCause
from runrec_cluster.store import layout


def test_exit_patch_says_succeeded_exit_code_or_signal():
    ok = exit_patch(0)
    assert ok["state"] == "succeeded" and ok["exit_code"] == 0 and "failure" not in ok
    bad = exit_patch(3)
    assert bad["state"] == "failed" and bad["failure"]["cause"] == FailureCause.EXIT_CODE.value
    assert bad["failure"]["exit_code"] == 3 and "exited with code 3" in bad["failure"]["message"]
    killed = exit_patch(-signal.SIGKILL)
    assert killed["state"] == "failed" and killed["failure"]["cause"] == "killed"
    assert killed["failure"]["signal"] == signal.SIGKILL


def test_rescue_dirs_log_dir_then_home_then_tmpdir(monkeypatch, tmp_path):
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.setenv("TMPDIR", str(tmp_path / "tmp"))
    rid = layout.new_id()
    got = outcome.rescue_dirs(rid, str(tmp_path / "logs"))
    assert got == [
        os.path.join(tmp_path / "logs", "runrec-rescue", rid),
        os.path.join(tmp_path / "home", "runrec-rescue", rid),
        os.path.join(tmp_path / "tmp", "runrec-rescue", rid),
    ]
    assert outcome.rescue_dirs(rid, None)[0].startswith(str(tmp_path / "home"))


def test_encode_result_msgpack_else_pickle(store):
    ref = outcome.encode_result(store, {"loss": 0.5})
    assert ref.format == "msgpack" and ref.type == "builtins.dict" and "loss" in ref.summary
    ref = outcome.encode_result(store, complex(1, 2))  # not msgpack: pickled
    assert ref.format == "pickle" and ref.type == "builtins.complex" and ref.summary == "(1+2j)"


def test_a_launch_record_without_entrypoint_is_a_corrupt_record(store, monkeypatch):
    for var in ("RUNREC_STORE", "RUNREC_RUN_ID"):  # execute sets them: restored after the test
        monkeypatch.setenv(var, "")
    rid = layout.new_id()
    store.write_version(rid, "launch", {"run_id": rid, "state": "submitted", "attempt": 1})
    with pytest.raises(rr.CorruptRecord, match=f"run {rid} has no entrypoint"):
        execute(store.root, rid)
    assert os.environ["RUNREC_RUN_ID"] == rid
    monkeypatch.delenv("RUNREC_RUN_ID")
    assert current_run() is None  # reset even when the job cannot start


def test_set_current_is_what_current_run_returns(store, monkeypatch):
    monkeypatch.delenv("RUNREC_RUN_ID", raising=False)
    run = rr.Run(store, layout.new_id())
    set_current(run)
    try:
        assert current_run() is run
    finally:
        set_current(None)
    assert current_run() is None
