"""Capture cost of the user code's environment and loaded libraries (issue 13): what the
interpreter probe and the /proc/PID/maps sampling add, measured beside the same captures
without them, in the same run.

1. ``submit``: the launch environment of a command run (``capture.env.capture_env``) without
   the command's interpreter (before: what a submit captured until now) against with it, the
   probe cold (empty cache: the first submit on a host) and cached (every later one).
2. ``start``: a command job's start on the node (``job.execute.node_facts``, the at-exit
   hook's directory, starting the sampler thread) with the probe and the sampler off (before:
   the job's own packages listed in a fresh process) against on, probe cold and cached.
3. ``sampling``: the sampler's CPU while it samples a real process tree (a shell, a Python that
   loads a library built with ``cc``, and ``--children`` sleeping children) for ``--seconds``:
   the sampler thread's own CPU time (``time.thread_time`` around each sample) over the wall
   time, with the production schedule (``SAMPLE_AT`` then every ``PERIOD_S``); and one sample's
   cost, which a sampler taking one every second would pay every second (the worst case).
4. ``hook``: a Python command (loading a library named like the CUDA runtime) with the at-exit
   maps hook's ``sitecustomize.py`` first on its PYTHONPATH (``job/maps_site.py``) against
   without: the whole process's wall time, start-up and its maps written at exit included.

Figures are medians of ``--reps`` repetitions, alternatives interleaved. Prints Markdown tables
and writes ``capture_cost.json`` (raw samples included) to ``--out``.

    python bench/bench_capture_cost.py [--reps 7] [--seconds 10] [--quick] [--out DIR]
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
from datetime import UTC, datetime
from typing import Any

import msgspec

from runrec_cluster.capture import env as envcap
from runrec_cluster.capture import interpreter, maps
from runrec_cluster.job.execute import node_facts
from runrec_cluster.job.libs import RunLibs
from runrec_cluster.record import Entrypoint, NodeInfo, RunRecord
from runrec_cluster.store import Store

HERE = os.path.dirname(os.path.abspath(__file__))
COMMAND = ["python3", "train.py", "--lr", "0.1"]


def med_ms(xs: list[float]) -> float:
    return round(statistics.median(xs) * 1000, 2)


def clock(fn: Any) -> float:
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def bench_submit(store: Store, cache: str, reps: int) -> dict[str, Any]:
    raw: dict[str, list[float]] = {"before": [], "cold": [], "cached": []}
    for _ in range(reps):
        envcap._packages_cache = None  # a fresh submitting process lists its packages once
        raw["before"].append(clock(lambda: envcap.capture_env(store.put_obj)))
        envcap._packages_cache = None
        shutil.rmtree(cache, ignore_errors=True)
        raw["cold"].append(
            clock(lambda: envcap.capture_env(store.put_obj, command=COMMAND, cwd=store.root))
        )
        envcap._packages_cache = None
        raw["cached"].append(
            clock(lambda: envcap.capture_env(store.put_obj, command=COMMAND, cwd=store.root))
        )
    return {k: med_ms(v) for k, v in raw.items()} | {"raw_s": raw}


def _command_record(store: Store) -> RunRecord:
    env, _ = envcap.capture_env(store.put_obj, command=COMMAND, cwd=store.root)
    return RunRecord(
        run_id="bench",
        entrypoint=Entrypoint(kind="command", argv=COMMAND, cwd=store.root),
        launch_env=env,
    )


def bench_start(store: Store, cache: str, reps: int) -> dict[str, Any]:
    rec = _command_record(store)
    fn_rec = msgspec.structs.replace(
        rec, entrypoint=Entrypoint(kind="function", function="m:f", cwd=store.root)
    )
    raw: dict[str, list[float]] = {"before": [], "cold": [], "cached": [], "fn_after": []}
    sleeper = subprocess.Popen(["sleep", "30"], start_new_session=True)

    def fn_started() -> None:
        libs = RunLibs(node_facts(store, fn_rec))
        libs.start_function()  # what a function run adds: its own sampler
        libs.stop()

    def started(r: RunRecord) -> None:
        libs = RunLibs(node_facts(store, r))
        libs.prepare_command(dict(os.environ))  # the at-exit maps hook's directory
        libs.start_command(sleeper.pid)  # what run_command adds once the command started
        libs.stop()

    try:
        for _ in range(reps):
            envcap._packages_cache = None  # the job is a fresh process
            raw["before"].append(clock(lambda: node_facts(store, fn_rec)))
            envcap._packages_cache = None
            raw["fn_after"].append(clock(fn_started))
            shutil.rmtree(cache, ignore_errors=True)
            raw["cold"].append(clock(lambda: started(rec)))
            raw["cached"].append(clock(lambda: started(rec)))
    finally:
        sleeper.kill()
        sleeper.wait()
    out = {k: med_ms(v) for k, v in raw.items()}
    out["added_cached"] = round(out["cached"] - out["before"], 2)
    out["added_cold"] = round(out["cold"] - out["before"], 2)
    out["added_fn"] = round(out["fn_after"] - out["before"], 2)
    return out | {"raw_s": raw}


def bench_hook(tmp: str, reps: int) -> dict[str, Any]:
    """A Python command's start-up and exit with the at-exit maps hook (``job/maps_site.py``)
    first on its PYTHONPATH, against without (wall time of the whole process, interleaved);
    the command loads a library named like the CUDA runtime (its maps are then written)."""
    lib = _fake_lib(tmp)
    code = f"import ctypes; ctypes.CDLL({lib!r})" if lib else "pass"
    base = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    raw: dict[str, list[float]] = {"without": [], "with": []}
    for _ in range(reps):
        for name in ("without", "with"):
            env = dict(base)
            libs = RunLibs(NodeInfo(hostname="bench"))
            if name == "with":
                libs.prepare_command(env)
            t = time.perf_counter()
            subprocess.run([sys.executable, "-c", code], env=env, check=True)
            raw[name].append(time.perf_counter() - t)
            libs.stop()
    out = {k: med_ms(v) for k, v in raw.items()}
    out["added"] = round(out["with"] - out["without"], 2)
    return out | {"raw_s": raw}


def _fake_lib(tmp: str) -> str:
    cc = shutil.which("cc") or shutil.which("gcc")
    lib = os.path.join(tmp, "libcudart.so.12.4.127")
    if not cc:
        return ""
    if not os.path.exists(lib):
        src = os.path.join(tmp, "f.c")
        with open(src, "w") as f:
            f.write("int f(void) { return 1; }\n")
        subprocess.run([cc, "-shared", "-fPIC", "-o", lib, src], check=True)
    return lib


def _tree(tmp: str, children: int) -> subprocess.Popen[bytes]:
    lib = _fake_lib(tmp)
    code = (
        "import ctypes, subprocess, time\n"
        + (f"ctypes.CDLL({lib!r})\n" if lib else "")
        + f"ps = [subprocess.Popen(['sleep', '600']) for _ in range({children})]\n"
        + "time.sleep(600)\n"
    )
    script = os.path.join(tmp, "tree.py")
    with open(script, "w") as f:
        f.write(code)
    p = subprocess.Popen(
        ["/bin/sh", "-c", f"{sys.executable} {script}; true"], start_new_session=True
    )
    time.sleep(1.0)  # the tree is up
    return p


def bench_sampling(tmp: str, seconds: float, children: int, reps: int) -> dict[str, Any]:
    p = _tree(tmp, children)
    try:
        tree = maps.process_tree(p.pid)
        with os.scandir("/proc") as it:
            procs = sum(1 for e in it if e.name.isdigit())
        s = maps.MapsSampler(p.pid, method="bench").start()
        wall0 = time.monotonic()
        time.sleep(seconds)
        s.stop(final=False)
        wall = time.monotonic() - wall0
        n, cpu = len(s.times), s.cpu_s
        one: list[float] = []
        for _ in range(max(reps, 5)):
            t = time.thread_time()
            s.sample()
            one.append(time.thread_time() - t)
        libs = s.runtime().loaded_libraries
    finally:
        os.killpg(p.pid, 9)
        p.wait()
    per_sample = statistics.median(one)
    return {
        "seconds": round(wall, 2),
        "tree_processes": len(tree),
        "machine_processes": procs,
        "samples": n,
        "sampler_cpu_ms": round(cpu * 1000, 2),
        "cpu_percent": round(100 * cpu / wall, 3),
        "one_sample_ms": round(per_sample * 1000, 3),
        "cpu_percent_at_1_per_s": round(100 * per_sample, 3),
        "cpu_percent_steady": round(100 * per_sample / maps.PERIOD_S, 4),
        "libraries_seen": libs,
    }


def report(
    sub: dict[str, Any], start: dict[str, Any], samp: dict[str, Any], hook: dict[str, Any]
) -> str:
    return "\n".join(
        [
            "| capture (median ms) | before (no probe, no sampler) | after, probe cold | "
            "after, probe cached |",
            "|---|---:|---:|---:|",
            f"| submit: launch environment of a command run | {sub['before']} | {sub['cold']} "
            f"| {sub['cached']} |",
            f"| job start: node facts (+ sampler started) | {start['before']} | "
            f"{start['cold']} | {start['cached']} |",
            f"| job start: added by probe + sampler | – | {start['added_cold']} | "
            f"{start['added_cached']} |",
            f"| function run start: node facts (+ its sampler) | {start['before']} | "
            f"{start['fn_after']} (added {start['added_fn']}) | – |",
            "",
            "| sampling | value |",
            "|---|---:|",
            f"| wall time sampled | {samp['seconds']} s |",
            f"| processes in the tree / on the machine | {samp['tree_processes']} / "
            f"{samp['machine_processes']} |",
            f"| samples taken (SAMPLE_AT, then every {maps.PERIOD_S:g} s) | {samp['samples']} |",
            f"| sampler CPU over that time | {samp['cpu_percent']} % |",
            f"| one sample (scan of /proc + maps of the tree) | {samp['one_sample_ms']} ms |",
            f"| CPU if sampling every second (worst case) | {samp['cpu_percent_at_1_per_s']} % |",
            f"| CPU in the steady state (every {maps.PERIOD_S:g} s) | "
            f"{samp['cpu_percent_steady']} % |",
            "",
            "| a Python command that loads a library (median ms, whole process) | value |",
            "|---|---:|",
            f"| without the at-exit maps hook | {hook['without']} |",
            f"| with it (start-up + its maps written at exit) | {hook['with']} |",
            f"| added | {hook['added']} |",
        ]
    )


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", default=os.path.join(HERE, "results"))
    p.add_argument("--reps", type=int, default=7)
    p.add_argument("--seconds", type=float, default=10.0)
    p.add_argument("--children", type=int, default=8)
    p.add_argument("--quick", action="store_true", help="tiny sizes: a smoke test, not figures")
    a = p.parse_args()
    if a.quick:
        a.reps, a.seconds, a.children = 2, 1.5, 2
    os.makedirs(a.out, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix="runrec-bench-cost-", dir=os.environ.get("BENCH_TMP"))
    cache = os.path.join(tmp, "cache")
    os.environ["RUNREC_CACHE_DIR"] = cache  # cold and cached under this benchmark's control
    try:
        store = Store(os.path.join(tmp, "store"))
        store.ensure_writable()
        with open(os.path.join(store.root, "train.py"), "w") as f:
            f.write("print('hi')\n")
        sub = bench_submit(store, cache, a.reps)
        start = bench_start(store, cache, a.reps)
        samp = bench_sampling(tmp, a.seconds, a.children, a.reps)
        hook = bench_hook(tmp, max(a.reps, 5) * 3)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    py = interpreter.resolve(COMMAND, os.environ.get("PATH", ""), "/").path
    text = report(sub, start, samp, hook)
    print(f"command {' '.join(COMMAND)}: python3 is {py}\n\n{text}\n", flush=True)
    name = "capture_cost-quick.json" if a.quick else "capture_cost.json"
    with open(os.path.join(a.out, name), "w") as f:
        json.dump(
            {
                "benchmark": "capture_cost",
                "at": datetime.now(UTC).isoformat(),
                "quick": a.quick,
                "loadavg": os.getloadavg(),
                "submit": sub,
                "start": start,
                "sampling": samp,
                "hook": hook,
            },
            f,
            indent=1,
        )
    with open(os.path.join(a.out, name.replace(".json", ".md")), "w") as f:
        f.write(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
