"""Functions the tests submit as jobs (pickled by value, see conftest)."""

from __future__ import annotations

import os
import time


def add(a, b=10):
    return a + b


def train(lr, epochs=3, data=None):
    import runrec_cluster as rr

    run = rr.current_run()
    run.log_config({"seed": 1234})
    run.log_metrics({"acc": round(1 - lr, 6), "epochs_done": epochs})
    return {"lr": lr, "acc": round(1 - lr, 6)}


def fail(msg):
    def inner():
        raise ValueError(msg)

    inner()


def sleep_then(seconds, value=None):
    time.sleep(seconds)
    return value


def write_pid_and_sleep(path, seconds):
    with open(path, "w") as f:
        f.write(str(os.getpid()))
    time.sleep(seconds)
    return "woke"


def with_artifact(out):
    import runrec_cluster as rr

    with open(out, "wb") as f:
        f.write(b"model-bytes" * 100)
    rr.current_run().log_artifact(out, name="model")
    return "ok"


def returns_object():
    class Thing:
        def __init__(self):
            self.x = 5

    return Thing()


def allocate_mb(mb):
    block = bytearray(mb * 1024 * 1024)
    for i in range(0, len(block), 4096):
        block[i] = 1
    time.sleep(5)
    return len(block)


def sleep_unless_restarted(seconds):
    n = int(os.environ.get("SLURM_RESTART_COUNT", "0") or 0)
    if n == 0:
        time.sleep(seconds)
    return f"restarted {n}"


def env_var(name):
    return os.environ.get(name)


def rank_info():
    import runrec_cluster as rr

    rank = int(os.environ.get("SLURM_PROCID", "0"))
    rr.current_run().log_metrics({"rank0_only": 1.0} if rank == 0 else {"from_rank": float(rank)})
    return {"rank": rank, "node": os.environ.get("SLURMD_NODENAME")}


def write_dir_artifact(d):
    """A directory artifact of three files in two folders (test_artifacts_kept.py)."""
    import runrec_cluster as rr

    os.makedirs(os.path.join(d, "sub"), exist_ok=True)
    for rel, text in (("a.txt", "alpha"), ("b.txt", "beta"), (os.path.join("sub", "c.txt"), "c")):
        with open(os.path.join(d, rel), "w") as f:
            f.write(text * 100)
    rr.current_run().log_artifact(d, name="ckpt")
    return 1


def determinism_job(import_torch):
    """What this job process sees (the test's ground truth), after importing the fake torch of
    test_determinism.py when asked: returns the values the record must hold."""
    import sys

    out = {
        "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS"),
        "PYTHONHASHSEED": os.environ.get("PYTHONHASHSEED"),
        "hash_randomization": bool(sys.flags.hash_randomization),
    }
    if import_torch:
        import torch

        torch.backends.cudnn.deterministic = True
        out["cudnn.deterministic"] = torch.backends.cudnn.deterministic
        out["num_threads"] = torch.get_num_threads()
    return out
