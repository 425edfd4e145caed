"""Running submitit's documented examples (tests/fixtures/submitit_examples/) the way a user
runs their script, for the drop-in tests on the local and the Slurm cluster."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

EXAMPLES = Path(__file__).resolve().parent / "fixtures" / "submitit_examples"


def run_example(
    name: str, repo: Path, store: Path, cluster: str | None, extra=(), timeout: float = 600
) -> dict:
    """Run one documented example in a fresh interpreter (cwd: the repo); returns the runner's
    JSON report and the example's stdout. ``cluster``: forced through
    ``RUNREC_SUBMITIT_CLUSTER``; None lets AutoExecutor find it (Slurm where srun is on PATH)."""
    out = repo / f"{name}.json"
    env = dict(os.environ, RUNREC_STORE=str(store))
    env.pop("RUNREC_SUBMITIT_CLUSTER", None)
    if cluster is not None:
        env["RUNREC_SUBMITIT_CLUSTER"] = cluster
    p = subprocess.run(
        [sys.executable, str(EXAMPLES / "run_example.py"), str(EXAMPLES / f"{name}.py"), str(out)]
        + list(extra),
        cwd=repo,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    assert p.returncode == 0, f"runner failed:\n{p.stdout}\n{p.stderr}"
    report = json.loads(out.read_text())
    report["stdout"] = p.stdout
    return report
