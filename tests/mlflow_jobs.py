"""Job functions for the mlflow-sync tests (pickled by value, see test_mlflow_sync.py)."""

from __future__ import annotations

import json
import os
import time


def train(lr: float, out: str, width: int = 64, fail: bool = False, note: str = "") -> float:
    """Logs a generated seed, two rounds of metrics (a history), a model file; fails after all
    that when ``fail``."""
    import runrec_cluster as rr

    run = rr.current_run()
    run.log_config({"seed": 1234})
    run.log_metrics({"loss": 1.0 - lr})
    run.log_metrics({"loss": 0.5 - lr, "acc": 0.9 + lr, "phase": "done"})
    os.makedirs(os.path.dirname(out), exist_ok=True)
    with open(out, "w") as f:
        json.dump({"lr": lr, "width": width}, f)
    run.log_artifact(out, name="model")
    if fail:
        raise ValueError(f"diverged at lr={lr}")
    return 0.5 - lr


def slow(gate: str, timeout_s: float = 300.0) -> str:
    """Logs a metric, then waits until the file ``gate`` exists (the test creates it)."""
    import runrec_cluster as rr

    run = rr.current_run()
    run.log_metrics({"progress": 0.5})
    t0 = time.monotonic()
    while not os.path.exists(gate):
        if time.monotonic() - t0 > timeout_s:
            raise TimeoutError(f"{gate} never appeared")
        time.sleep(0.1)
    run.log_metrics({"progress": 1.0})
    return "ok"
