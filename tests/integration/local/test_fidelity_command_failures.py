"""Issue 13, repro 12 (command part): a failed command run says what the command said last on
stderr (redacted, bounded), and a missing executable is its own cause. Real `runrec` CLI, real
processes; the expected text is what the test's own run of the same script printed."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys

from helpers import run_cli

from runrec_cluster.job.commands import TAIL_BYTES, TAIL_LINES

SECRET_URL = "postgresql://bob:Hunter2Hunter2@db/x"
FAILING = (
    "import sys\n"
    "print('to stdout')\n"
    "for i in range(40):\n"
    "    print(f'progress line {i}', file=sys.stderr)\n"
    f"print('cannot connect to {SECRET_URL}', file=sys.stderr)\n"
    "sys.exit(3)\n"
)


def _submit(store, *argv: str, cwd=None):
    r = run_cli(
        "submit", "--store", store.root, "--backend", "local", "--wait", "--", *argv, cwd=cwd
    )
    runs = list(store.run_ids())
    assert len(runs) == 1, (r.stdout, r.stderr)
    return r, store.load(runs[0])


def test_missing_executable_is_its_own_cause(store, tmp_path):
    name = "no-such-binary-runrec-d13"
    assert shutil.which(name) is None  # ground truth: nothing of that name on PATH here
    r, rec = _submit(store, name, "--flag", cwd=tmp_path)
    assert r.returncode == 1 and "executable_not_found" in r.stdout
    assert rec.failure is not None
    assert rec.failure.cause.value == "executable_not_found"
    assert rec.failure.exit_code == 127
    assert name in rec.failure.message and "PATH" in rec.failure.message


def test_missing_executable_by_path(store, tmp_path):
    missing = tmp_path / "bin" / "train"
    assert not missing.exists()
    r, rec = _submit(store, str(missing), cwd=tmp_path)
    assert r.returncode == 1
    assert rec.failure.cause.value == "executable_not_found"
    assert "does not exist" in rec.failure.message


def test_not_executable_is_not_called_missing(store, tmp_path):
    script = tmp_path / "train.sh"
    script.write_text("#!/bin/sh\necho hi\n")
    os.chmod(script, 0o644)  # exists, but cannot be executed
    r, rec = _submit(store, str(script), cwd=tmp_path)
    assert r.returncode == 1
    assert rec.failure.cause.value == "code_error"
    assert "Permission denied" in rec.failure.message


def test_failed_command_records_the_redacted_tail_of_its_stderr(store, tmp_path):
    script = tmp_path / "fail.py"
    script.write_text(FAILING)
    # ground truth: the same script run by the test
    truth = subprocess.run([sys.executable, str(script)], capture_output=True, text=True)
    assert truth.returncode == 3
    lines = truth.stderr.splitlines()
    r, rec = _submit(store, sys.executable, str(script), cwd=tmp_path)
    assert r.returncode == 1 and "exit_code" in r.stdout
    f = rec.failure
    assert f.cause.value == "exit_code" and f.exit_code == 3
    head, _, tail = f.message.partition("; its last stderr lines:\n")
    assert head == "the command exited with code 3"
    expected = lines[-TAIL_LINES:]
    expected[-1] = expected[-1].replace("bob:Hunter2Hunter2", "[redacted]")
    assert tail.splitlines() == expected
    assert "Hunter2" not in f.message and "to stdout" not in f.message
    # the log still gets every stderr line, unchanged (the job passes them through)
    with open(os.path.join(rec.execution.log_dir, "stderr.txt")) as log:
        logged = log.read()
    assert all(line in logged for line in lines)


def test_stderr_tail_is_bounded_in_bytes(store, tmp_path):
    script = tmp_path / "long.py"
    script.write_text(
        "import sys\n"
        "for i in range(50):\n"
        "    sys.stderr.write(f'{i:03d} ' + 'x' * 1000 + '\\n')\n"
        "sys.exit(2)\n"
    )
    truth = subprocess.run([sys.executable, str(script)], capture_output=True, text=True)
    _, rec = _submit(store, sys.executable, str(script), cwd=tmp_path)
    tail = rec.failure.message.partition("; its last stderr lines:\n")[2]
    assert 0 < len(tail.encode()) <= TAIL_BYTES
    got = tail.splitlines()
    # only whole lines, the last ones the command wrote
    assert got == truth.stderr.splitlines()[-len(got) :] and got[-1].startswith("049 ")


def test_killed_command_keeps_its_stderr_tail(store, tmp_path):
    script = tmp_path / "die.py"
    script.write_text(
        "import os, signal, sys\n"
        "print('about to die', file=sys.stderr, flush=True)\n"
        "os.kill(os.getpid(), signal.SIGKILL)\n"
    )
    _, rec = _submit(store, sys.executable, str(script), cwd=tmp_path)
    assert rec.failure.cause.value == "killed" and rec.failure.signal == 9
    assert rec.failure.message.endswith("its last stderr lines:\nabout to die")


def test_a_command_silent_on_stderr_keeps_the_short_message(store, tmp_path):
    _, rec = _submit(store, sys.executable, "-c", "raise SystemExit(5)", cwd=tmp_path)
    assert rec.failure.message == "the command exited with code 5"
