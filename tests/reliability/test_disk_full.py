"""Disk full: a small store on a real, full filesystem (a size-limited tmpfs, mounted as root).

What must hold: a write on the full store fails with a clear error (ENOSPC named as "No space
left on device", the path, what to do); the records written before are intact, byte for byte;
and a real local job whose store fills up while it runs does not lose its result: ``job.outcome``
saves the end record and the result under ``<log dir | ~ | $TMPDIR>/runrec-rescue/<run id>/``
(laid out like a store), says so in its stderr and in what the submitter sees, and a plain
``cp -rn`` puts them into the store once it has space again.
"""

from __future__ import annotations

import os
import random
import shlex
import subprocess
import sys
import time

import cloudpickle
import jobfns
import pytest
from helpers import run_cli
from helpers import write_figures as _results

import runrec_cluster as rr
from runrec_cluster.job import outcome
from runrec_cluster.lineage.annotate import annotate
from runrec_cluster.store import layout

# the job functions below travel by value: the job process cannot import this test module
cloudpickle.register_pickle_by_value(sys.modules[__name__])

pytestmark = pytest.mark.skipif(
    os.geteuid() != 0, reason="needs root to mount a small tmpfs (CI runs the tests as root)"
)

FS_SIZE = 24 * 1024 * 1024
RESULT_SEED = 8


# -- job functions (run in the job process) ---------------------------------------------------


def fill_then_return(mount: str, keep_free: int, result_bytes: int):
    """Fill the filesystem the store is on (leaving ``keep_free`` bytes), then return a result
    of ``result_bytes`` incompressible bytes that the store cannot take any more."""
    import errno
    import os
    import random

    reserve = os.path.join(mount, "reserve")
    if keep_free:
        with open(reserve, "wb") as f:
            f.write(b"r" * keep_free)
    fd = os.open(os.path.join(mount, "filler"), os.O_WRONLY | os.O_CREAT, 0o644)
    try:
        for chunk in (1 << 20, 4096, 1):
            block = b"f" * chunk
            while True:
                try:
                    os.write(fd, block)
                except OSError as exc:
                    if exc.errno != errno.ENOSPC:
                        raise
                    break
    finally:
        os.close(fd)
    if keep_free:
        os.unlink(reserve)
    return {"weights": random.Random(RESULT_SEED).randbytes(result_bytes), "acc": 0.93}


# -- fixtures ---------------------------------------------------------------------------------


@pytest.fixture
def small_fs(tmp_path):
    """A real filesystem of FS_SIZE bytes (tmpfs), unmounted afterwards."""
    mnt = tmp_path / "small-fs"
    mnt.mkdir()
    r = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={FS_SIZE},mode=0755", "tmpfs", str(mnt)],
        capture_output=True,
        text=True,
    )
    if r.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({r.stderr.strip()}); needs CAP_SYS_ADMIN")
    try:
        yield mnt
    finally:
        # lazy: a job or supervisor that crashed on the full disk may still hold a log open
        subprocess.run(["umount", "-l", str(mnt)], check=False)


@pytest.fixture
def homes(tmp_path, monkeypatch):
    """HOME and TMPDIR of the submitter and its jobs: fresh directories on the real disk, so the
    rescue files land in the test's own space."""
    home, tmp = tmp_path / "home", tmp_path / "tmpdir"
    home.mkdir()
    tmp.mkdir()
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.setenv("TMPDIR", str(tmp))
    return home, tmp


def _snapshot(root: str) -> dict[str, bytes]:
    """Every record version and blob of a store, by path."""
    out = {}
    for sub in ("runs", "blobs"):
        for dirpath, _dirs, files in os.walk(os.path.join(root, sub)):
            for f in files:
                p = os.path.join(dirpath, f)
                with open(p, "rb") as fh:
                    out[p] = fh.read()
    return out


def _earlier_runs(store, repo):
    """Records written while the disk had room: a real local run and an annotation."""
    ex = rr.Executor(backend="local", store=store, name="before", cwd=repo)
    h = ex.submit(jobfns.train, 0.25)
    assert h.result(timeout=120) == {"lr": 0.25, "acc": 0.75}
    annotate(store, h.run_id, verdict="positive", note="kept for the disk-full test")
    return h.run_id, store.load(h.run_id)


def _free_bytes(path) -> int:
    st = os.statvfs(path)
    return st.f_bavail * st.f_frsize


def _fill(mount) -> None:
    with open(os.path.join(mount, "filler-direct"), "wb", buffering=0) as f:
        for chunk in (1 << 20, 4096, 1):
            block = b"f" * chunk
            while True:
                try:
                    f.write(block)
                except OSError:
                    break


def _recover(rescue_dir: str, store_root: str) -> None:
    """The copy the README tells people to make (run as a real shell command)."""
    readme = open(os.path.join(rescue_dir, "README.txt")).read()
    cmd = next(line.strip() for line in readme.splitlines() if line.strip().startswith("cp -rn"))
    assert (
        cmd
        == f"cp -rn {shlex.quote(os.path.join(rescue_dir, 'store'))}/. {shlex.quote(store_root)}/"
    )
    subprocess.run(cmd, shell=True, check=True)


# -- tests ------------------------------------------------------------------------------------


def test_writes_on_a_full_store_fail_clearly_and_earlier_records_stay_intact(small_fs, repo):
    store = rr.Store(small_fs / "store")
    store.ensure_writable()
    rid, before_rec = _earlier_runs(store, repo)
    before = _snapshot(store.root)
    _fill(small_fs)
    assert _free_bytes(small_fs) < 4096

    new = layout.new_id()
    failures = []
    attempts = {
        "write_version (new run)": lambda: store.write_version(new, "launch", {"run_id": new}),
        "write_version (existing run)": lambda: store.write_version(
            rid, "metrics", {"metrics": {"late": 1.0}}
        ),
        "put_blob": lambda: store.put_blob(os.urandom(10_000)),
    }
    for what, attempt in attempts.items():
        with pytest.raises(rr.StoreError) as ei:
            attempt()
        msg = str(ei.value)
        failures.append(msg)
        assert "No space left on device" in msg, what
        assert store.root in msg, what  # the path that could not be written
        assert "free space or point --store / RUNREC_STORE elsewhere" in msg, what

    # the real CLI: exit 1, the same clear message, no traceback
    out = run_cli(
        "annotate", rid[:12], "--verdict", "negative", "--note", "x", "--store", store.root
    )
    assert out.returncode == 1, out.stderr
    assert "No space left on device" in out.stderr and "Traceback" not in out.stderr
    # reading still works on the full disk
    out = run_cli("show", rid, "--store", store.root)
    assert out.returncode == 0, out.stderr
    assert "succeeded" in out.stdout and "kept for the disk-full test" in out.stdout

    after = _snapshot(store.root)
    assert after == before  # nothing changed, nothing half-written left behind
    assert store.load(rid) == before_rec
    leftovers = [p for p in os.listdir(layout.run_dir(store.root, rid)) if p.startswith(".tmp-")]
    assert leftovers == []
    _results(
        "test_writes_on_a_full_store_fail_clearly_and_earlier_records_stay_intact",
        "Writes on a full 24 MiB tmpfs store fail with a clear ENOSPC error naming the path and "
        "the fix; the files written before stay byte-identical.",
        failed_writes=len(failures),
        files_checked=len(before),
        files_changed=sum(1 for p in before if after.get(p) != before[p]),
        cli_exit_code=1,
    )


def test_job_whose_store_is_full_saves_its_result_elsewhere_and_says_where(small_fs, repo, homes):
    """The store fills up while the job runs: nothing is left for the end record at all."""
    home, _tmp = homes
    store = rr.Store(small_fs / "store")
    store.ensure_writable()
    rid_before, rec_before = _earlier_runs(store, repo)
    snap = _snapshot(store.root)

    ex = rr.Executor(backend="local", store=store, name="fills", cwd=repo)
    h = ex.submit(fill_then_return, str(small_fs), 0, 50_000)
    with pytest.raises(rr.StoreError) as ei:
        h.wait(timeout=120)
    rescue = os.path.join(str(home), "runrec-rescue", h.run_id)
    msg = str(ei.value)
    # what the submitter sees: the failed write (ENOSPC, the path, the fix) and where the
    # job's end record and result went, with the command that brings them back
    assert "No space left on device" in msg and store.root in msg
    assert rescue in msg and "cp -rn" in msg
    readme = open(os.path.join(rescue, "README.txt")).read()
    assert "No space left on device" in readme and h.run_id in readme and store.root in readme
    assert store.load(h.run_id).state != rr.RunState.SUCCEEDED  # not in the store (yet)

    # earlier records are intact
    assert {p: b for p, b in _snapshot(store.root).items() if p in snap} == snap
    assert store.load(rid_before) == rec_before

    # free space, copy the rescued files in: the run has its result
    os.unlink(small_fs / "filler")
    _recover(rescue, store.root)
    rec = store.load(h.run_id)
    assert rec.state == rr.RunState.SUCCEEDED and rec.state_source == "job"
    expected = random.Random(RESULT_SEED).randbytes(50_000)
    assert h.result(timeout=30) == {"weights": expected, "acc": 0.93}
    out = run_cli("show", h.run_id, "--store", store.root)
    assert out.returncode == 0 and "succeeded" in out.stdout
    _results(
        "test_job_whose_store_is_full_saves_its_result_elsewhere_and_says_where",
        "A real local job fills its 24 MiB store filesystem before returning: its end record "
        "and 50 kB result go to ~/runrec-rescue/<run id>; the submitter's error names it; "
        "cp -rn restores the result after space is freed.",
        result_bytes=50_000,
        rescued_files=sum(len(f) for _d, _s, f in os.walk(rescue)),
        recovered_state=rec.state.value,
        earlier_files_intact=len(snap),
    )


def test_job_with_too_little_room_for_its_result_says_where_it_went(small_fs, repo, homes):
    """A little room is left (64 KiB): the 1 MiB result does not fit, the end of the story
    does. The job's stderr and the submitter's JobFailed name the rescue directory."""
    home, _tmp = homes
    store = rr.Store(small_fs / "store")
    store.ensure_writable()
    ex = rr.Executor(backend="local", store=store, name="nearly-full", cwd=repo)
    size = 1 << 20
    h = ex.submit(fill_then_return, str(small_fs), 64 * 1024, size)
    t0 = time.monotonic()
    with pytest.raises(rr.JobFailed) as ei:
        h.result(timeout=120)
    rescue = os.path.join(str(home), "runrec-rescue", h.run_id)
    msg = str(ei.value)
    assert "No space left on device" in msg and rescue in msg and "cp -rn" in msg
    stderr = open(os.path.join(store.log_dir(h.run_id), "stderr.txt")).read()
    assert "No space left on device" in stderr and rescue in stderr
    assert os.path.isfile(os.path.join(rescue, "README.txt"))
    rec = store.load(h.run_id)
    assert rec.state == rr.RunState.FAILED and rec.state_source == "backend"

    os.unlink(small_fs / "filler")
    _recover(rescue, store.root)
    rec = store.load(h.run_id)  # the job's own end beats the supervisor's
    assert rec.state == rr.RunState.SUCCEEDED and rec.state_source == "job"
    value = rr.RunHandle(store, h.run_id).result(timeout=30)
    assert value["weights"] == random.Random(RESULT_SEED).randbytes(size)
    _results(
        "test_job_with_too_little_room_for_its_result_says_where_it_went",
        "A real local job leaves 64 KiB free on its 24 MiB store filesystem and returns a "
        "1 MiB result: the result goes to ~/runrec-rescue/<run id>, the job's stderr and the "
        "submitter's JobFailed name it, and cp -rn restores it (state succeeded, by the job).",
        free_bytes_left=64 * 1024,
        result_bytes=size,
        seconds=round(time.monotonic() - t0, 1),
        recovered_state=rec.state.value,
    )


def test_failed_run_is_rescued_too_and_nowhere_to_save_is_said(small_fs, homes, monkeypatch):
    """The job's other end: a function that raised, on a full store. And when no rescue place is
    writable either, the error says the outcome is lost, and why."""
    home, _tmp = homes
    store = rr.Store(small_fs / "store")
    store.ensure_writable()
    rid, other = layout.new_id(), layout.new_id()
    for r in (rid, other):
        store.write_version(r, "launch", {"run_id": r, "state": "submitted", "attempt": 1})
    _fill(small_fs)
    try:
        raise ValueError("lr 0.9 diverged")
    except ValueError as exc:
        with pytest.raises(rr.StoreError) as ei:
            outcome.record_failure(store, rid, 0, exc, store.log_dir(rid))
    rescue = os.path.join(str(home), "runrec-rescue", rid)
    assert "No space left on device" in str(ei.value) and rescue in str(ei.value)

    monkeypatch.setenv("HOME", "/dev/null/home")  # nothing can be created under a file
    monkeypatch.setenv("TMPDIR", "/dev/null/tmp")
    with pytest.raises(rr.StoreError) as ei:
        outcome.write_end(store, other, store.log_dir(other), lambda _s: {"state": "succeeded"})
    msg = str(ei.value)
    assert "No space left on device" in msg and "nor save it anywhere else" in msg
    assert "/dev/null/home" in msg and "/dev/null/tmp" in msg

    os.unlink(small_fs / "filler-direct")
    _recover(rescue, store.root)
    rec = store.load(rid)
    assert rec.state == rr.RunState.FAILED and rec.failure.cause == rr.FailureCause.CODE_ERROR
    assert "lr 0.9 diverged" in rec.failure.traceback
