"""capture.git: a git command that fails while the code is captured is recorded in the run
(``CodeInfo.error``, a CaptureError of the errors tree), never raised."""

from __future__ import annotations

import subprocess

from runrec_cluster.capture import git as gitcap


def test_a_failing_git_diff_is_recorded_as_a_capture_error(repo, monkeypatch):
    real = subprocess.run

    def failing(args, *a, **kw):
        if list(args[:2]) == ["git", "diff"]:
            return subprocess.CompletedProcess(args, 128, b"", b"fatal: bad object HEAD")
        return real(args, *a, **kw)

    monkeypatch.setattr(gitcap.subprocess, "run", failing)
    info = gitcap.capture_code(str(repo))
    assert info.is_repo and info.root == str(repo)
    assert info.error is not None and info.error.startswith("CaptureError: git diff HEAD")
    assert "exited 128: fatal: bad object HEAD" in info.error
