"""``runrec demo``: a small real sweep on the local backend, with a dataset and an artifact.

The training function is a tiny logistic regression in pure Python on a generated CSV, so the
demo needs nothing beyond runrec-cluster itself.
"""

from __future__ import annotations

import csv
import json
import math
import os
import random
from collections.abc import Callable
from typing import Any

from runrec_cluster.api import Executor, RunHandle
from runrec_cluster.capture.data import Dataset
from runrec_cluster.job.run import current_run
from runrec_cluster.store import Store


def make_dataset(path: str, n: int = 400, seed: int = 7) -> None:
    rng = random.Random(seed)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["x1", "x2", "label"])
        for _ in range(n):
            x1, x2 = rng.gauss(0, 1), rng.gauss(0, 1)
            label = int(1.5 * x1 - x2 + rng.gauss(0, 0.5) > 0)
            w.writerow([f"{x1:.5f}", f"{x2:.5f}", label])


def train(
    data: str, lr: float = 0.1, epochs: int = 20, out_dir: str = "runrec-demo/models"
) -> dict[str, float]:
    run = current_run()
    seed = random.SystemRandom().randrange(2**31)
    if run is not None:
        run.log_config({"seed": seed})
    rng = random.Random(seed)
    with open(data, newline="") as f:
        rows = [(float(r["x1"]), float(r["x2"]), int(r["label"])) for r in csv.DictReader(f)]
    rng.shuffle(rows)
    split = int(len(rows) * 0.8)
    tr, va = rows[:split], rows[split:]
    w = [0.0, 0.0, 0.0]
    for _ in range(epochs):
        for x1, x2, y in tr:
            z = w[0] + w[1] * x1 + w[2] * x2
            p = 1 / (1 + math.exp(-max(-30.0, min(30.0, z))))
            g = p - y
            w = [w[0] - lr * g, w[1] - lr * g * x1, w[2] - lr * g * x2]

    def acc(rs: list[tuple[float, float, int]]) -> float:
        return sum(int((w[0] + w[1] * a + w[2] * b > 0) == bool(y)) for a, b, y in rs) / len(rs)

    metrics = {"train_acc": acc(tr), "val_acc": acc(va)}
    os.makedirs(out_dir, exist_ok=True)
    model = os.path.join(out_dir, f"model-lr{lr}.json")
    with open(model, "w") as f:
        json.dump({"weights": w, "lr": lr, "epochs": epochs}, f)
    if run is not None:
        run.log_metrics(metrics)
        run.log_artifact(model, name="model")
    return metrics


def run_demo(
    store: Store, runs: int = 4, echo: Callable[[str], Any] = print
) -> tuple[list[RunHandle], str]:
    data = os.path.abspath(os.path.join("runrec-demo", "data", "train.csv"))
    if not os.path.exists(data):
        make_dataset(data)
    echo(f"dataset: {data}")
    ex = Executor(backend="local", store=store, name="demo")
    lrs = [round(0.02 * (2**i), 4) for i in range(runs)]
    out_dir = os.path.abspath(os.path.join("runrec-demo", "models"))
    handles = ex.map_array(
        train,
        [{"data": data, "lr": lr, "out_dir": out_dir} for lr in lrs],
        inputs=[Dataset(data, version="demo-v1")],
        tags={"purpose": "demo"},
    )
    sweep_id = handles[0].record().sweep_id or ""
    echo(f"submitted sweep {sweep_id} with {len(handles)} runs on the local backend; waiting...")
    for h in handles:
        h.wait(timeout=300)
    return handles, sweep_id
