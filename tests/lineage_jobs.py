"""Job functions for the lineage tests (pickled by value, see test_lineage.py)."""

from __future__ import annotations

import hashlib
import json
import os


def train(data: str, out: str, val_acc: float, loss: float) -> str:
    """Run A: reads a dataset, writes a model file, logs metrics and the artifact."""
    import runrec_cluster as rr

    with open(data, "rb") as f:
        h = hashlib.sha256(f.read()).hexdigest()
    with open(out, "w") as f:
        json.dump({"trained_on": h, "weights": [0.1, 0.2]}, f)
    run = rr.current_run()
    run.log_metrics({"val_acc": val_acc, "loss": loss})
    run.log_artifact(out, name="model")
    return h


def finetune(base_ref: str | None, out: str, val_acc: float, loss: float) -> str:
    """Run B: consumes run A's model (given at submit, or found in the job with use_input),
    writes its own model."""
    import runrec_cluster as rr

    run = rr.current_run()
    if base_ref is not None:  # discovered inside the job
        base = run.use_input(rr.Artifact(base_ref)).path
    else:  # given at submit: rr.Artifact(...) in inputs=
        base = next(i.path for i in run.record.inputs if i.kind == "artifact")
    with open(base) as f:
        parent = json.load(f)
    os.makedirs(os.path.dirname(out), exist_ok=True)
    with open(out, "w") as f:
        json.dump({"base": parent, "weights": [0.3]}, f)
    run.log_metrics({"val_acc": val_acc, "loss": loss})
    run.log_artifact(out, name="model")
    return "ok"


def model_dir(out: str) -> str:
    """Writes a directory artifact (with a symlink inside, followed when hashed and copied)."""
    import runrec_cluster as rr

    os.makedirs(os.path.join(out, "sub"), exist_ok=True)
    with open(os.path.join(out, "weights.bin"), "wb") as f:
        f.write(b"\x00\x01" * 500)
    with open(os.path.join(out, "sub", "config.json"), "w") as f:
        f.write('{"layers": 2}')
    run = rr.current_run()
    run.log_metrics({"val_acc": 0.95})
    run.log_artifact(out, name="model")
    return "ok"


def broken(out: str) -> None:
    """Logs a good-looking model and metrics, then fails."""
    import runrec_cluster as rr

    with open(out, "w") as f:
        f.write("half a model")
    run = rr.current_run()
    run.log_metrics({"val_acc": 0.99, "loss": 0.01})
    run.log_artifact(out, name="model")
    raise RuntimeError("diverged at step 1200 (loss became nan)")
