"""Jobs of tests/integration/local/test_fidelity_export.py (pickled by value)."""

import json

import runrec_cluster as rr


def nonfinite_metrics(data: str, out: str) -> int:
    """Reads ``data``, logs NaN / +-Infinity metrics and integer config, writes a model."""
    with open(data) as f:
        rows = f.read().splitlines()
    run = rr.current_run()
    run.log_config({"seed": 886812345, "ratio": float("inf")})
    run.log_metrics({"acc": float("nan"), "loss": float("inf"), "margin": float("-inf"), "ok": 0.5})
    with open(out, "w") as f:
        json.dump({"rows": len(rows)}, f)
    run.log_artifact(out, name="model")
    return len(rows)


def plain(i: int) -> float:
    """A sweep point: config ``i`` (given), a metric that is a whole float."""
    if i == 2:
        raise ValueError("point 2 fails before it logs anything")
    run = rr.current_run()
    run.log_config({"seed": 886812345 + i})
    run.log_metrics({"score": float(2 * i), "frac": 0.25 + i})
    return 2.0 * i
