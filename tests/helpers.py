"""Helpers shared by the tests (import as `from helpers import ...`)."""

import os
import subprocess
import sys


def git(cwd, *args: str) -> str:
    env = dict(
        os.environ,
        GIT_AUTHOR_NAME="t",
        GIT_AUTHOR_EMAIL="t@x",
        GIT_COMMITTER_NAME="t",
        GIT_COMMITTER_EMAIL="t@x",
    )
    return subprocess.run(
        ["git", *args], cwd=cwd, env=env, check=True, capture_output=True, text=True
    ).stdout


def run_cli(*args: str, cwd=None, env=None, input=None):
    """The real `runrec` entry point in a subprocess."""
    e = dict(os.environ)
    e.update(env or {})
    return subprocess.run(
        [sys.executable, "-m", "runrec_cluster", *args],
        cwd=cwd,
        env=e,
        capture_output=True,
        text=True,
        input=input,
        timeout=300,
    )


def write_figures(name: str, what: str, **figures) -> None:
    """One reliability test's figures, as a JSON object in $RUNREC_RELIABILITY_RESULTS (default
    tests/reliability/results/), for tests/reliability/summarize.py and docs/reliability.md."""
    import json

    d = os.environ.get("RUNREC_RELIABILITY_RESULTS") or os.path.join(
        os.path.dirname(os.path.abspath(__file__)), "reliability", "results"
    )
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, f"{name}.json"), "w") as f:
        json.dump({"what": what, **figures}, f, indent=1, sort_keys=True, default=str)
