"""Cost of the runrec Hydra launcher against Hydra's own basic launcher (issue 16).

Side by side, alternated repetition by repetition, on the same machine, with the test app
(tests/fixtures/hydra_app, copied into a temporary git repository):
  multirun   ``python app.py --multirun model=small,large lr=0.1,0.2,0.25`` (6 jobs) end to end,
             with ``hydra/launcher=basic`` (in-process, one after another) and with
             ``hydra/launcher=runrec_local`` (recorded, one process per job, in parallel)
  compose    per job, on the submitting host: Hydra's ``load_sweep_config`` alone, and with the
             provenance of every key and the config files (``provenance.job_config``)

Needs hydra-core (``pip install '.[hydra]'``). Prints a Markdown table, writes JSON (--out).

    python bench/bench_hydra_launcher.py [--reps 3] [--quick] [--out DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

from hydra import initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.types import RunMode

from runrec_cluster.hydra import provenance

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
APP = os.path.join(ROOT, "tests", "fixtures", "hydra_app")
GRID = ["model=small,large", "lr=0.1,0.2,0.25"]


def make_app(tmp: str) -> str:
    app = os.path.join(tmp, "app")
    shutil.copytree(APP, app)
    with open(os.path.join(app, ".gitignore"), "w") as f:
        f.write("multirun/\n")
    for argv in (["init", "-q", "-b", "main"], ["add", "."], ["commit", "-qm", "app"]):
        subprocess.run(
            ["git", "-c", "user.name=b", "-c", "user.email=b@b", *argv], cwd=app, check=True
        )
    return app


def multirun(app: str, launcher: str, store: str, i: int) -> float:
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([ROOT, os.environ.get("PYTHONPATH", "")]))
    argv = [sys.executable, "app.py", "--multirun", f"hydra/launcher={launcher}", *GRID]
    argv.append(f"hydra.sweep.dir=multirun/{launcher}-{i}")
    if launcher.startswith("runrec"):
        argv.append(f"hydra.launcher.store={store}")
    t0 = time.perf_counter()
    subprocess.run(argv, cwd=app, env=env, check=True, capture_output=True, timeout=600)
    return time.perf_counter() - t0


def compose_costs(n: int) -> dict[str, float]:
    conf = os.path.join(APP, "conf")
    with initialize_config_dir(config_dir=conf, version_base="1.3"):
        loader = GlobalHydra.instance().config_loader()
        master = loader.load_configuration("config", [], RunMode.MULTIRUN)
        bare, full = [], []
        for i in range(n):
            ov = [f"model={'small' if i % 2 else 'large'}", f"lr={0.1 + i / 1000}"]
            t0 = time.perf_counter()
            cfg = loader.load_sweep_config(master, ov)
            t1 = time.perf_counter()
            provenance.job_config(loader, cfg, ov)
            t2 = time.perf_counter()
            bare.append(t1 - t0)
            full.append(t2 - t0)
    return {
        "load_sweep_config_ms": statistics.median(bare) * 1e3,
        "with_provenance_ms": statistics.median(full) * 1e3,
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--reps", type=int, default=3)
    p.add_argument("--quick", action="store_true", help="one repetition, few compositions")
    p.add_argument("--out", default=None, help="directory for hydra_launcher.json / .md")
    a = p.parse_args()
    reps = 1 if a.quick else a.reps
    samples: dict[str, list[float]] = {"basic": [], "runrec_local": []}
    with tempfile.TemporaryDirectory(dir=os.environ.get("BENCH_TMP")) as tmp:
        app = make_app(tmp)
        for i in range(reps):
            for launcher in samples:
                samples[launcher].append(multirun(app, launcher, os.path.join(tmp, "store"), i))
    costs = compose_costs(10 if a.quick else 50)
    med = {k: statistics.median(v) for k, v in samples.items()}
    lines = [
        f"| 6-job multirun, end to end (median of {reps}) | seconds |",
        "|---|---|",
        f"| `hydra/launcher=basic` (in-process, sequential, nothing recorded) | {med['basic']:.2f} |",
        f"| `hydra/launcher=runrec_local` (recorded, a process per job) | {med['runrec_local']:.2f} |",
        "",
        "| per job, on the submitting host | ms |",
        "|---|---|",
        f"| Hydra's `load_sweep_config` | {costs['load_sweep_config_ms']:.1f} |",
        f"| the same plus provenance and config files (`provenance.job_config`) | {costs['with_provenance_ms']:.1f} |",
    ]
    md = "\n".join(lines)
    print(md)
    if a.out:
        os.makedirs(a.out, exist_ok=True)
        with open(os.path.join(a.out, "hydra_launcher.json"), "w") as f:
            json.dump(
                {"samples": samples, "medians": med, "compose": costs, "load": os.getloadavg()},
                f,
                indent=1,
            )
        with open(os.path.join(a.out, "hydra_launcher.md"), "w") as f:
            f.write(md + "\n")


if __name__ == "__main__":
    main()
