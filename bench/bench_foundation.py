"""Foundation benchmarks (issue #2): what recording costs, measured beside the bare alternative.

1. ``submit``: ``rr.Executor(backend="local").submit`` against ``submitit.LocalExecutor.submit``
   of the same trivial function, in a temporary git repository with a small uncommitted change:
   the submit call alone, submit-to-result, submit-to-done, and ``map_array`` of 32.
2. ``records``: writing and reading realistic records (the six versions a local run gets) with
   ``Store(fsync=False)`` and ``Store(fsync=True)``: microseconds per version write, per
   ``store.load``, and bytes on disk per run; then one run with 500 metrics versions.
3. ``hashing``: ``capture.data.hash_path`` (BLAKE3, and with ``algo="sha256"``) on a 2 GiB
   file in the page cache against ``sha256sum``, ``md5sum`` (DVC's hash), ``openssl dgst
   -sha256``, ``b3sum`` when installed, and ``cat`` (the read limit); then a 20,000-file
   directory hashed with an empty cache and re-checked through the store's hash cache.
4. ``slurm``: submit with record against bare ``submitit.AutoExecutor`` on the real local Slurm
   cluster (``bash slurm/up`` first): the submit call, submit to done, and a ``map_array`` of 8.

Every figure is the median of ``--reps`` repetitions (default 5), alternatives interleaved within
each repetition (their order rotates), because the machine may be shared. Prints one
Markdown table per benchmark and writes ``foundation.json`` (raw samples included) to ``--out``.

    python bench/bench_foundation.py [--only submit,records,hashing] [--quick] [--out DIR]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)


def add_one(x: int) -> int:
    """The job both libraries run."""
    return x + 1


# -- helpers ---------------------------------------------------------------------------------


def med(xs: list[float]) -> float:
    return statistics.median(xs)


def clock(fn: Callable[[], Any]) -> float:
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def table(headers: list[str], rows: list[list[Any]]) -> str:
    def cell(v: Any) -> str:
        if isinstance(v, float):
            if v >= 100:
                return f"{v:,.0f}"
            if v >= 10:
                return f"{v:.1f}"
            return f"{v:.2f}"
        if isinstance(v, int):
            return f"{v:,}"
        return str(v)

    out = ["| " + " | ".join(headers) + " |", "|" + "|".join(["---"] * len(headers)) + "|"]
    out += ["| " + " | ".join(cell(v) for v in r) + " |" for r in rows]
    return "\n".join(out)


def ratio(a: float, b: float) -> str:
    if not b:
        return "n/a"
    r = a / b
    return f"{r:.2f}x" if r < 0.1 else f"{r:.1f}x"


def loadavg() -> list[float]:
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return []


def machine() -> dict[str, Any]:
    mem_gib = 0.0
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemTotal:"):
                    mem_gib = int(line.split()[1]) / 1024**2
    except OSError:
        pass
    cpu = platform.processor()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    distro = ""
    try:
        with open("/etc/os-release") as f:
            for line in f:
                if line.startswith("PRETTY_NAME="):
                    distro = line.split("=", 1)[1].strip().strip('"')
    except OSError:
        pass
    commit = subprocess.run(
        ["git", "-C", ROOT, "rev-parse", "--short", "HEAD"], capture_output=True, text=True
    ).stdout.strip()
    return {
        "cpus": os.cpu_count(),
        "cpu_model": cpu,
        "mem_gib": round(mem_gib, 1),
        "os": distro,
        "kernel": platform.release(),
        "python": platform.python_version(),
        "python_executable": sys.executable,
        "runrec_commit": commit,
    }


def git(repo: str, *args: str) -> None:
    subprocess.run(
        ["git", "-C", repo, "-c", "user.name=bench", "-c", "user.email=bench@example.com", *args],
        check=True,
        capture_output=True,
    )


def make_repo(tmp: str) -> str:
    """A small git repository with one commit and a small uncommitted change."""
    repo = os.path.join(tmp, "repo")
    os.makedirs(os.path.join(repo, "src"))
    subprocess.run(["git", "init", "-q", repo], check=True)
    for i in range(20):
        with open(os.path.join(repo, "src", f"mod{i}.py"), "w") as f:
            f.write("".join(f"def f{j}(x):\n    return x + {j}\n\n" for j in range(40)))
    with open(os.path.join(repo, "train.py"), "w") as f:
        f.write("LR = 0.1\nEPOCHS = 10\n")
    git(repo, "add", ".")
    git(repo, "commit", "-qm", "initial")
    with open(os.path.join(repo, "train.py"), "a") as f:  # the small dirty change
        f.write("BATCH = 64  # trying something\n")
    with open(os.path.join(repo, "notes.txt"), "w") as f:  # and an untracked text file
        f.write("lr sweep next\n")
    return repo


def wait_all(done: list[Callable[[], bool]], poll: float) -> None:
    pending = list(done)
    while pending:
        pending = [d for d in pending if not d()]
        if pending:
            time.sleep(poll)


# -- 1. submit -------------------------------------------------------------------------------


def bench_submit(tmp: str, reps: int, array_reps: int, array_n: int) -> dict[str, Any]:
    import submitit

    import runrec_cluster as rr
    import runrec_cluster.api as rr_api

    repo = make_repo(tmp)
    ex = rr.Executor(backend="local", store=os.path.join(tmp, "store"), cwd=repo)
    se = submitit.LocalExecutor(folder=os.path.join(tmp, "submitit"))

    def sub_submitit() -> Any:
        return se.submit(add_one, 1)

    # where runrec's submit time goes: time the two capture calls inside each real submit
    parts: dict[str, list[float]] = {"capture_code_ms": [], "capture_env_ms": []}
    spent = {"capture_code_ms": 0.0, "capture_env_ms": 0.0}

    def timing(key: str, f: Callable[..., Any]) -> Callable[..., Any]:
        def timed(*args: Any, **kwargs: Any) -> Any:
            t = time.perf_counter()
            try:
                return f(*args, **kwargs)
            finally:
                spent[key] += (time.perf_counter() - t) * 1e3

        return timed

    saved = rr_api.capture_code, rr_api.capture_env
    rr_api.capture_code = timing("capture_code_ms", rr_api.capture_code)
    rr_api.capture_env = timing("capture_env_ms", rr_api.capture_env)

    def sub_runrec() -> Any:
        for k in spent:
            spent[k] = 0.0
        h = ex.submit(add_one, 1)
        for k, v in spent.items():
            parts[k].append(v)
        return h

    # warm-up (first-call imports: cloudpickle, GitPython...), recorded apart
    cold = {}
    for name, fn in (("submitit", sub_submitit), ("runrec", sub_runrec)):
        t = time.perf_counter()
        j = fn()
        cold[name] = (time.perf_counter() - t) * 1e3
        assert j.result() == 2
    for v in parts.values():
        v.clear()

    s: dict[str, list[float]] = {
        k: []
        for k in (
            "submit_ms.submitit",
            "submit_ms.runrec",
            "result_ms.submitit",
            "result_ms.runrec",
            "done_ms.submitit",
            "done_ms.runrec",
        )
    }
    pairs = [("submitit", sub_submitit), ("runrec", sub_runrec)]
    for rep in range(reps):
        order = pairs if rep % 2 == 0 else pairs[::-1]
        # (a) submit, then the library's own blocking result()
        for name, fn in order:
            t0 = time.perf_counter()
            j = fn()
            t1 = time.perf_counter()
            value = j.result()
            t2 = time.perf_counter()
            assert value == 2, value
            s[f"submit_ms.{name}"].append((t1 - t0) * 1e3)
            s[f"result_ms.{name}"].append((t2 - t0) * 1e3)
        # (b) submit, then poll done() every 10 ms: the pipeline itself, without either
        # library's result() polling interval
        for name, fn in order:
            t0 = time.perf_counter()
            j = fn()
            t1 = time.perf_counter()
            wait_all([j.done], 0.01)
            t2 = time.perf_counter()
            assert j.result() == 2
            s[f"submit_ms.{name}"].append((t1 - t0) * 1e3)
            s[f"done_ms.{name}"].append((t2 - t0) * 1e3)

    # map_array of array_n: the submit call, then every job done (polled every 50 ms).
    # submitit sleeps 0.2 s between submissions by design (PicklingExecutor._throttle, meant
    # for cluster schedulers); the time spent in it is measured inside the same call
    params = list(range(array_n))
    a: dict[str, list[float]] = {
        k: []
        for k in (
            "array_submit_ms.submitit",
            "array_submit_ms.submitit_nothrottle",
            "array_submit_ms.runrec",
            "array_done_ms.submitit",
            "array_done_ms.runrec",
        )
    }
    throttled = [0.0]
    real_throttle = se._throttle

    def counted_throttle() -> None:
        t = time.perf_counter()
        real_throttle()
        throttled[0] += time.perf_counter() - t

    se._throttle = counted_throttle  # type: ignore[method-assign]

    def arr_submitit() -> list[Any]:
        return se.map_array(add_one, params)

    def arr_runrec() -> list[Any]:
        return ex.map_array(add_one, [{"x": p} for p in params])

    arrays = [("submitit", arr_submitit), ("runrec", arr_runrec)]
    for rep in range(array_reps):
        for name, fn in arrays if rep % 2 == 0 else arrays[::-1]:
            throttled[0] = 0.0
            t0 = time.perf_counter()
            jobs = fn()
            t1 = time.perf_counter()
            wait_all([j.done for j in jobs], 0.05)
            t2 = time.perf_counter()
            assert [j.result() for j in jobs] == [p + 1 for p in params]
            a[f"array_submit_ms.{name}"].append((t1 - t0) * 1e3)
            a[f"array_done_ms.{name}"].append((t2 - t0) * 1e3)
            if name == "submitit":
                a["array_submit_ms.submitit_nothrottle"].append((t1 - t0 - throttled[0]) * 1e3)
    s.update(a)
    rr_api.capture_code, rr_api.capture_env = saved
    parts["rest_ms"] = [
        t - c - e
        for t, c, e in zip(
            s["submit_ms.runrec"], parts["capture_code_ms"], parts["capture_env_ms"], strict=True
        )
    ]

    # the price of a fresh interpreter (each local job of either library starts two)
    py = sys.executable
    starts = {
        "python -c pass": [py, "-c", "pass"],
        "python -c 'import submitit'": [py, "-c", "import submitit"],
        "python -c 'import runrec_cluster.job.execute'": [
            py,
            "-c",
            "import runrec_cluster.job.execute",
        ],
    }
    start_s: dict[str, list[float]] = {k: [] for k in starts}
    for _ in range(reps):
        for k, argv in starts.items():
            start_s[k].append(clock(lambda argv=argv: subprocess.run(argv, check=True)) * 1e3)
    from runrec_cluster.capture.env import packages

    return {
        "reps": reps,
        "array_reps": array_reps,
        "array_n": array_n,
        "cold_first_submit_ms": cold,
        "samples": s,
        "median": {k: med(v) for k, v in s.items()},
        "breakdown_samples": parts,
        "breakdown_median": {k: med(v) for k, v in parts.items()},
        "interpreter_start_samples": start_s,
        "interpreter_start_median": {k: med(v) for k, v in start_s.items()},
        "installed_distributions": len(packages()),
        "runrec_parallel": os.cpu_count(),
    }


def report_submit(r: dict[str, Any]) -> str:
    m = r["median"]
    n = r["array_n"]
    rows = []
    for label, key in (
        ("submit() call", "submit_ms"),
        ("submit → result() returns", "result_ms"),
        ("submit → done() (polled every 10 ms)", "done_ms"),
    ):
        a, b = m[f"{key}.submitit"], m[f"{key}.runrec"]
        rows.append([label, a, b, ratio(b, a)])
    a, f, b = (m[f"array_submit_ms.{k}"] for k in ("submitit", "submitit_nothrottle", "runrec"))
    rows.append([f"map_array({n}) call", a, b, ratio(b, a)])
    rows.append(
        ["… submitit without its 0.2 s sleeps between jobs (`_throttle`)", f, b, ratio(b, f)]
    )
    a, b = m["array_done_ms.submitit"], m["array_done_ms.runrec"]
    rows.append([f"map_array({n}) → all done (polled every 50 ms)", a, b, ratio(b, a)])
    out = [
        f"### 1. Submit with record vs bare submitit (local, ms, median of {r['reps']} "
        f"(single), {2 * r['reps']} (submit call), {r['array_reps']} (arrays) reps)",
        "",
        table(["measure", "submitit ms", "runrec ms", "runrec / submitit"], rows),
        "",
    ]
    bd = r["breakdown_median"]
    st = r["interpreter_start_median"]
    rows2 = [
        ["capture_code (git: diff, untracked, patch blob)", bd["capture_code_ms"]],
        [
            f"capture_env (list of {r['installed_distributions']} installed distributions)",
            bd["capture_env_ms"],
        ],
    ]
    rest = bd["rest_ms"]
    rows2.append(
        ["rest of runrec's submit() (pickle, 2 versions, supervisor Popen), per call", rest]
    )
    rows2 += [[f"fresh interpreter: `{k}`", v] for k, v in st.items()]
    out += [
        "Where the time goes (median ms; the captures are timed inside the submit() calls above):",
        "",
        table(["part", "ms"], rows2),
        "",
        f"First submit in a process (imports): submitit {r['cold_first_submit_ms']['submitit']:.0f} ms, "
        f"runrec {r['cold_first_submit_ms']['runrec']:.0f} ms.",
    ]
    return "\n".join(out)


# -- 2. records ------------------------------------------------------------------------------


def realistic_versions(
    store: Any, repo: str, n: int
) -> list[tuple[str, list[tuple[str, dict[str, Any], str]]]]:
    """The patches of ``n`` runs, built as ``api._write_launch``, the local backend and
    ``job.execute`` build them, from real captures of this machine and a real repository."""
    import cloudpickle
    import msgspec

    from runrec_cluster.capture import config as cfg
    from runrec_cluster.capture import env as envcap
    from runrec_cluster.capture import node as nodecap
    from runrec_cluster.capture import proc
    from runrec_cluster.capture.git import capture_code
    from runrec_cluster.job.outcome import encode_result
    from runrec_cluster.record import Entrypoint, Execution, Resources, RunState, to_patch
    from runrec_cluster.store import layout

    code = capture_code(repo, store.put_blob)
    env, _ = envcap.capture_env(store.put_obj)
    pkgs = envcap.packages()
    node = msgspec.structs.replace(
        nodecap.capture_node(),
        packages_blob=store.put_obj(pkgs),
        package_drift={},
        env_vars=envcap.selected_env(),
    )
    end_node = msgspec.structs.replace(node, runtime=nodecap.runtime_libs())
    call_blob = store.put_blob(cloudpickle.dumps((add_one, (1,), {})))
    result = encode_result(store, {"loss": 0.123, "accuracy": 0.97})
    ident = proc.identity()
    config_values: dict[str, Any] = {}
    for i in range(50):  # ~50 keys of the usual kinds
        kind = i % 5
        config_values[f"param_{i:02d}"] = (
            i * 10
            if kind == 0
            else 0.001 * (i + 1)
            if kind == 1
            else f"value-{i}"
            if kind == 2
            else [i, i + 1, i + 2]
            if kind == 3
            else {"enabled": bool(i % 2), "scale": i / 7}
        )
    resources = Resources(timeout_min=60, cpus=4, mem_gb=16)
    runs = []
    for k in range(n):
        run_id = layout.new_id()
        now = datetime.now(UTC)
        values = dict(config_values, seed=k, lr=0.1 / (k + 1))
        config = cfg.entries(values, "given")
        launch = to_patch(
            run_id=run_id,
            name="train",
            sweep_id=None,
            sweep_index=None,
            user="bench",
            submit_host=node.hostname,
            tags={"project": "bench", "stage": "dev"},
            created_at=now,
            code=code,
            entrypoint=Entrypoint(
                kind="function", function="__main__:train", cwd=repo, call_blob=call_blob
            ),
            config=config,
            inputs=[],
            launch_env=env,
            execution=Execution(
                backend="local",
                resources=resources,
                options={},
                log_dir=store.log_dir(run_id),
            ),
            submitted_at=now,
        )
        launch.update(state=RunState.SUBMITTED.value, state_source="submitter", attempt=1)
        sup = {
            "host": ident.host,
            "pid": ident.pid + 1,
            "start_ticks": ident.start_ticks,
            "boot_id": ident.boot_id,
        }
        start = to_patch(nodes=[node])
        start.update(
            to_patch(state=RunState.RUNNING, state_source="job", started_at=now, process=ident)
        )
        start["attempt"] = 1
        runs.append(
            (
                run_id,
                [
                    ("launch", launch, "submitter"),
                    ("dispatch", {"execution": {"scheduler": {"supervisor": sup}}}, "submitter"),
                    ("dispatch", to_patch(process=ident), "backend"),
                    ("start", start, "job"),
                    (
                        "metrics",
                        {"metrics": {f"metric_{i}": 1.0 / (i + 1) for i in range(10)}},
                        "job",
                    ),
                    (
                        "end",
                        to_patch(
                            state=RunState.SUCCEEDED,
                            state_source="job",
                            ended_at=now,
                            result=result,
                            nodes=[end_node],
                        ),
                        "job",
                    ),
                ],
            )
        )
    return runs


def run_bytes(store_root: str) -> tuple[list[int], list[int]]:
    """Per run: sum of version file sizes, and of allocated blocks (what `du` counts)."""
    sizes, alloc = [], []
    runs = os.path.join(store_root, "runs")
    for shard in os.listdir(runs):
        for rid in os.listdir(os.path.join(runs, shard)):
            d = os.path.join(runs, shard, rid)
            sts = [os.stat(os.path.join(d, f)) for f in os.listdir(d)]
            sizes.append(sum(st.st_size for st in sts))
            alloc.append(sum(st.st_blocks * 512 for st in sts))
    return sizes, alloc


def bench_records(tmp: str, n: int, reps: int, long_n: int) -> dict[str, Any]:
    from runrec_cluster.record import RecordVersion, Writer
    from runrec_cluster.store import Store, codec

    repo = os.path.join(tmp, "repo")
    if not os.path.isdir(repo):
        repo = make_repo(tmp)
    # the patches are built once, from real captures (their blobs go to this store, once)
    shape = Store(os.path.join(tmp, "records-shape"))
    shape.ensure_writable()
    runs = realistic_versions(shape, repo, n)
    nv = sum(len(v) for _, v in runs)
    keys = ("write_us", "write_cpu_us", "encode_us", "load_us", "load_cpu_us")
    samples: dict[str, dict[str, list[float]]] = {m: {k: [] for k in keys} for m in ("off", "on")}
    stores = {}
    for mode in ("off", "on"):
        stores[mode] = Store(os.path.join(tmp, f"records-{mode}"), fsync=(mode == "on"))
        stores[mode].ensure_writable()
    # each repetition is one batch of n / reps runs, written into both stores in turn (order
    # alternating); the stores end with all n runs, and are then read back the same way
    batches = [runs[i::reps] for i in range(reps)]
    writer = Writer(host=platform.node(), pid=os.getpid(), role="job")
    for rep, batch in enumerate(batches):
        nb = sum(len(v) for _, v in batch)
        # the CPU part of a write alone: build the version and encode it (msgpack + zstd)
        t0 = time.perf_counter()
        for run_id, versions in batch:
            for seq, (event, patch, _role) in enumerate(versions, 1):
                codec.encode(
                    RecordVersion(
                        run_id=run_id,
                        seq=seq,
                        written_at=datetime.now(UTC),
                        writer=writer,
                        event=event,
                        patch=patch,
                    )
                )
        t1 = time.perf_counter()
        for mode in ("off", "on"):
            samples[mode]["encode_us"].append((t1 - t0) / nb * 1e6)
        for mode in ("off", "on") if rep % 2 == 0 else ("on", "off"):
            store = stores[mode]
            t0, c0 = time.perf_counter(), time.process_time()
            for run_id, versions in batch:
                for event, patch, role in versions:
                    store.write_version(run_id, event, patch, role=role)
            t1, c1 = time.perf_counter(), time.process_time()
            samples[mode]["write_us"].append((t1 - t0) / nb * 1e6)
            samples[mode]["write_cpu_us"].append((c1 - c0) / nb * 1e6)
    for rep, batch in enumerate(batches):
        for mode in ("off", "on") if rep % 2 == 0 else ("on", "off"):
            store = stores[mode]
            t0, c0 = time.perf_counter(), time.process_time()
            for run_id, _ in batch:
                store.load(run_id)
            t1, c1 = time.perf_counter(), time.process_time()
            samples[mode]["load_us"].append((t1 - t0) / len(batch) * 1e6)
            samples[mode]["load_cpu_us"].append((c1 - c0) / len(batch) * 1e6)
    size_stats = {}
    for mode, store in stores.items():
        sizes, alloc = run_bytes(store.root)
        assert len(sizes) == n, (len(sizes), n)
        size_stats[mode] = {"bytes": statistics.mean(sizes), "alloc": statistics.mean(alloc)}
        shutil.rmtree(store.root)
    # one long run: long_n metrics versions (a job calling log_metrics every epoch)
    long_s: dict[str, list[float]] = {"first_us": [], "last_us": [], "load_ms": []}
    k = max(1, long_n // 10)
    for rep in range(reps):
        store = Store(os.path.join(tmp, f"records-long-{rep}"))
        store.ensure_writable()
        run_id, versions = runs[rep]
        for event, patch, role in versions[:4]:
            store.write_version(run_id, event, patch, role=role)
        times = []
        for i in range(long_n):
            t0 = time.perf_counter()
            store.write_version(run_id, "metrics", {"metrics": {"loss": 1 / (i + 1)}}, role="job")
            times.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        rec = store.load(run_id)
        long_s["load_ms"].append((time.perf_counter() - t0) * 1e3)
        assert rec.metrics["loss"] == 1 / long_n
        long_s["first_us"].append(statistics.mean(times[:k]) * 1e6)
        long_s["last_us"].append(statistics.mean(times[-k:]) * 1e6)
        shutil.rmtree(store.root)

    # what one version and one record look like
    run_id, versions = runs[0]
    for event, patch, role in versions:
        shape.write_version(run_id, event, patch, role=role)
    per_event: dict[str, list[int]] = {}
    for path in shape.version_files(run_id):
        with open(path, "rb") as f:
            v = codec.decode(f.read(), Any)
        per_event.setdefault(v["event"], []).append(os.path.getsize(path))
    raw = len(codec.encode_raw(shape.load(run_id)))
    blob_bytes = sum(
        os.path.getsize(os.path.join(dp, f))
        for dp, _, fs in os.walk(os.path.join(shape.root, "blobs"))
        for f in fs
    )
    return {
        "n": n,
        "reps": reps,
        "versions_per_run": nv // n,
        "samples": samples,
        "median": {
            m: {k: med(v) for k, v in d.items()} | size_stats[m] for m, d in samples.items()
        },
        "long_run_versions": long_n,
        "long_run_samples": long_s,
        "long_run_median": {k: med(v) for k, v in long_s.items()},
        "file_bytes_by_event": per_event,
        "folded_record_msgpack_bytes": raw,
        "shared_blob_bytes": blob_bytes,
    }


def report_records(r: dict[str, Any]) -> str:
    off, on = r["median"]["off"], r["median"]["on"]

    def row(label: str, key: str) -> list[Any]:
        return [label, off[key], on[key], ratio(on[key], off[key])]

    rows = [
        row("write_version, µs per version (wall)", "write_us"),
        row("… CPU time of the writing process, µs", "write_cpu_us"),
        row("… of which building + encoding the version (no I/O), µs", "encode_us"),
        row(f"store.load (fold of {r['versions_per_run']} versions), µs per run (wall)", "load_us"),
        row("… CPU time, µs", "load_cpu_us"),
        ["version files per run, bytes (msgpack+zstd)", off["bytes"], on["bytes"], ""],
        ["disk allocated per run, bytes (4 KiB blocks)", off["alloc"], on["alloc"], ""],
    ]
    ev = ", ".join(
        f"{k} {'+'.join(str(b) for b in v)}" for k, v in r["file_bytes_by_event"].items()
    )
    lm = r["long_run_median"]
    tenth = max(1, r["long_run_versions"] // 10)
    return "\n".join(
        [
            f"### 2. Record write and read ({r['n']:,} runs x {r['versions_per_run']} versions "
            f"per store; median of {r['reps']} batches of {r['n'] // r['reps']:,} runs)",
            "",
            table(["measure", "fsync off", "fsync on", "on / off"], rows),
            "",
            f"Bytes per version file: {ev}. The folded record is "
            f"{r['folded_record_msgpack_bytes']:,} bytes of msgpack before compression. "
            f"Shared blobs (patch, package lists, call, result) not counted above: "
            f"{r['shared_blob_bytes']:,} bytes, written once.",
            "",
            f"One long run ({r['long_run_versions']:,} metrics versions after the first 4, "
            f"fsync off, median of {r['reps']} reps):",
            "",
            table(
                ["measure", "value"],
                [
                    [
                        f"write_version, first {tenth} metrics versions, µs each",
                        lm["first_us"],
                    ],
                    [f"write_version, last {tenth} metrics versions, µs each", lm["last_us"]],
                    [
                        f"store.load of the run ({r['long_run_versions'] + 4:,} versions), ms",
                        lm["load_ms"],
                    ],
                ],
            ),
        ]
    )


# -- 4. slurm ---------------------------------------------------------------------------------


def bench_slurm(tmp: str, reps: int, array_n: int) -> dict[str, Any]:
    """Submit with record against bare submitit on the real Slurm cluster (slurm/up)."""
    import submitit

    import runrec_cluster as rr

    if shutil.which("sinfo") is None or subprocess.run(["sinfo"], capture_output=True).returncode:
        raise RuntimeError("no Slurm cluster answers `sinfo`: run `bash slurm/up` first")
    tmp = os.path.join(tmp, "slurm")  # a repository of its own (the submit part made one)
    repo = make_repo(tmp)
    res = {"timeout_min": 5, "cpus": 1, "mem_gb": 0.5}
    ex = rr.Executor(backend="slurm", store=os.path.join(tmp, "slurm-store"), cwd=repo, **res)
    se = submitit.AutoExecutor(folder=os.path.join(tmp, "submitit-slurm"), cluster="slurm")
    se.update_parameters(timeout_min=5, cpus_per_task=1, mem_gb=0.5)
    pairs = [
        ("submitit", lambda: se.submit(add_one, 1)),
        ("runrec", lambda: ex.submit(add_one, 1)),
    ]
    for _, fn in pairs:  # warm-up
        assert fn().result() == 2
    s: dict[str, list[float]] = {}
    for rep in range(reps):
        for name, fn in pairs if rep % 2 == 0 else pairs[::-1]:
            t0 = time.perf_counter()
            j = fn()
            t1 = time.perf_counter()
            wait_all([j.done], 0.05)
            t2 = time.perf_counter()
            assert j.result() == 2
            s.setdefault(f"submit_ms.{name}", []).append((t1 - t0) * 1e3)
            s.setdefault(f"done_ms.{name}", []).append((t2 - t0) * 1e3)
    params = list(range(array_n))
    arrays = [
        ("submitit", lambda: se.map_array(add_one, params)),
        ("runrec", lambda: ex.map_array(add_one, [{"x": p} for p in params])),
    ]
    for rep in range(reps):
        for name, fn in arrays if rep % 2 == 0 else arrays[::-1]:
            t0 = time.perf_counter()
            jobs = fn()
            t1 = time.perf_counter()
            wait_all([j.done for j in jobs], 0.1)
            t2 = time.perf_counter()
            assert [j.result() for j in jobs] == [p + 1 for p in params]
            s.setdefault(f"array_submit_ms.{name}", []).append((t1 - t0) * 1e3)
            s.setdefault(f"array_done_ms.{name}", []).append((t2 - t0) * 1e3)
    return {
        "reps": reps,
        "array_n": array_n,
        "samples": s,
        "median": {k: med(v) for k, v in s.items()},
    }


def report_slurm(r: dict[str, Any]) -> str:
    m = r["median"]
    n = r["array_n"]
    rows = []
    for label, key in (
        ("submit() call (sbatch included)", "submit_ms"),
        ("submit → done() (polled every 50 ms)", "done_ms"),
        (f"map_array({n}) call (one sbatch --array)", "array_submit_ms"),
        (f"map_array({n}) → all done (polled every 100 ms)", "array_done_ms"),
    ):
        a, b = m[f"{key}.submitit"], m[f"{key}.runrec"]
        rows.append([label, a, b, ratio(b, a), b - a])
    return "\n".join(
        [
            f"### 4. Launch on Slurm: submit with record vs bare submitit (the local Slurm "
            f"cluster of slurm/up; median of {r['reps']} reps)",
            "",
            table(
                ["measure", "submitit ms", "runrec ms", "runrec / submitit", "difference ms"], rows
            ),
        ]
    )


# -- 3. hashing ------------------------------------------------------------------------------


def bench_hashing(tmp: str, size: int, files: int, reps: int) -> dict[str, Any]:
    import runrec_cluster as rr
    from runrec_cluster.capture.data import hash_path
    from runrec_cluster.capture.inputs import hash_input
    from runrec_cluster.store import Store

    big = os.path.join(tmp, "big.bin")
    chunk = 64 << 20
    with open(big, "wb") as f:
        left = size
        while left:
            n = min(chunk, left)
            f.write(os.urandom(n))
            left -= n
    subprocess.run(f"cat '{big}' > /dev/null", shell=True, check=True)  # into the page cache

    digests: dict[str, str] = {}

    def run_cat() -> None:
        subprocess.run(f"cat '{big}' > /dev/null", shell=True, check=True)

    def tool(name: str, argv: list[str], algo: str) -> Callable[[], None]:
        def run() -> None:
            out = subprocess.run([*argv, big], check=True, capture_output=True, text=True)
            digests[name] = f"{algo}:" + out.stdout.split()[0]

        return run

    def run_hash_path() -> None:
        res, _ = hash_path(big)
        digests["hash_path"] = res.digest

    def run_hash_path_sha256() -> None:
        res, _ = hash_path(big, algo="sha256")
        digests["hash_path_sha256"] = res.digest

    def run_blake3_1thread() -> None:
        import blake3

        h = blake3.blake3(max_threads=1)
        h.update_mmap(big)
        digests["blake3_1thread"] = "blake3:" + h.hexdigest()

    tools: list[tuple[str, Callable[[], None]]] = [
        ("cat", run_cat),
        ("sha256sum", tool("sha256sum", ["sha256sum"], "sha256")),
        ("md5sum", tool("md5sum", ["md5sum"], "md5")),
        ("hash_path", run_hash_path),
        ("hash_path_sha256", run_hash_path_sha256),
        ("blake3_1thread", run_blake3_1thread),
    ]
    if shutil.which("openssl"):
        tools.append(("openssl", tool("openssl", ["openssl", "dgst", "-sha256", "-r"], "sha256")))
    if shutil.which("b3sum"):
        tools.append(("b3sum", tool("b3sum", ["b3sum"], "blake3")))
    s: dict[str, list[float]] = {k: [] for k, _ in tools}
    for rep in range(reps):
        k = rep % len(tools)
        for name, fn in tools[k:] + tools[:k]:
            s[name].append(clock(fn))
    by_algo: dict[str, set[str]] = {}
    for d in digests.values():
        by_algo.setdefault(d.split(":")[0], set()).add(d)
    assert all(len(v) == 1 for v in by_algo.values()), digests  # the tools agree
    os.unlink(big)

    # a directory of small files: first hash vs re-check through the store's cache
    d = os.path.join(tmp, "dataset")
    rnd = __import__("random").Random(2)
    per_dir = 100
    total = 0
    for i in range(files):
        sub = os.path.join(d, f"part{i // per_dir:03d}")
        if i % per_dir == 0:
            os.makedirs(sub)
        n = rnd.randint(512, 8192)
        total += n
        with open(os.path.join(sub, f"item{i:05d}.json"), "wb") as f:
            f.write(os.urandom(n))
    ds = rr.Dataset(d)
    hash_path(d)  # pages into the cache, so both passes read from memory
    ds_s: dict[str, list[float]] = {
        "first_ms": [],
        "recheck_ms": [],
        "recheck_hash_path_ms": [],
        "file_digest_ms": [],
    }
    names = sorted(
        os.path.join(dp, f) for dp, _, fs in os.walk(d) for f in fs
    )  # for the reference: plain hashlib, one thread, no walk in the timing

    def plain_digests() -> None:
        for path in names:
            with open(path, "rb") as f:
                hashlib.file_digest(f, "sha256")

    for rep in range(reps):
        store = Store(os.path.join(tmp, f"hash-store-{rep}"))
        store.ensure_writable()
        t0 = time.perf_counter()
        ref1 = hash_input(store, ds)
        t1 = time.perf_counter()
        ref2 = hash_input(store, ds)
        t2 = time.perf_counter()
        assert ref1.digest == ref2.digest and ref1.file_count == files
        ds_s["first_ms"].append((t1 - t0) * 1e3)
        ds_s["recheck_ms"].append((t2 - t1) * 1e3)
        ds_s["file_digest_ms"].append(clock(plain_digests) * 1e3)
    # the stat-only walk alone (hash_path with a full cache), without the cache file and blob
    _, cache = hash_path(d)
    for _ in range(reps):
        t0 = time.perf_counter()
        res, _ = hash_path(d, cache=cache)
        ds_s["recheck_hash_path_ms"].append((time.perf_counter() - t0) * 1e3)
        assert res.hashed_bytes == 0
    shutil.rmtree(d)
    return {
        "reps": reps,
        "file_bytes": size,
        "samples_s": s,
        "median_s": {k: med(v) for k, v in s.items()},
        "gb_per_s": {k: size / med(v) / 1e9 for k, v in s.items()},
        "dir_files": files,
        "dir_bytes": total,
        "dir_samples": ds_s,
        "dir_median": {k: med(v) for k, v in ds_s.items()},
    }


def report_hashing(r: dict[str, Any]) -> str:
    g, t = r["gb_per_s"], r["median_s"]
    names = {
        "cat": "`cat file > /dev/null` (the read limit)",
        "md5sum": "`md5sum file` (DVC's hash)",
        "sha256sum": "`sha256sum file`",
        "openssl": "`openssl dgst -sha256 file`",
        "b3sum": "`b3sum file`",
        "blake3_1thread": "BLAKE3 on one thread (the `blake3` module, mapped file)",
        "hash_path_sha256": "`hash_path(file, algo='sha256')` (runrec, SHA-256)",
        "hash_path": "**`hash_path(file)` (runrec's default: BLAKE3, both cores)**",
    }
    rows = [
        [
            label,
            t[k],
            g[k],
            ratio(t[k], t["hash_path"]),
            f"{100 * g[k] / g['cat']:.0f}%",
        ]
        for k, label in names.items()
        if k in t
    ]
    dm = r["dir_median"]
    rows2 = [
        ["first hash (`hash_input`, empty cache)", dm["first_ms"], "1.0x"],
        [
            "re-check, unchanged (`hash_input`, stat only)",
            dm["recheck_ms"],
            ratio(dm["first_ms"], dm["recheck_ms"]),
        ],
        [
            "… of which the walk (`hash_path` with the cache)",
            dm["recheck_hash_path_ms"],
            ratio(dm["first_ms"], dm["recheck_hash_path_ms"]),
        ],
        [
            "reference, not runrec: `hashlib.file_digest` of every file, 1 thread",
            dm["file_digest_ms"],
            ratio(dm["first_ms"], dm["file_digest_ms"]),
        ],
    ]
    size_gib = r["file_bytes"] / 2**30
    return "\n".join(
        [
            f"### 3. Dataset hashing ({size_gib:g} GiB random file in the page cache; "
            f"median of {r['reps']} reps)",
            "",
            table(
                ["tool", "seconds", "GB/s", "this time / hash_path time", "% of read limit"], rows
            ),
            "",
            f"Directory of {r['dir_files']:,} small files ({r['dir_bytes'] / 1e6:.1f} MB, in the page cache):",
            "",
            table(["pass", "ms", "first hash time / this"], rows2),
        ]
    )


# -- main ------------------------------------------------------------------------------------


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--only", default="submit,records,hashing,slurm")
    p.add_argument("--out", default=os.path.join(HERE, "results"))
    p.add_argument("--reps", type=int, default=5)
    p.add_argument("--quick", action="store_true", help="tiny sizes: a smoke test, not figures")
    p.add_argument("--records", type=int, default=2000)
    p.add_argument("--hash-mib", type=int, default=2048)
    p.add_argument("--files", type=int, default=20000)
    p.add_argument("--array", type=int, default=32)
    p.add_argument("--long", type=int, default=500, help="metrics versions of the long run")
    a = p.parse_args()
    which = [w.strip() for w in a.only.split(",") if w.strip()]
    if a.quick:
        a.records, a.hash_mib, a.files, a.array, a.long = 50, 16, 200, 4, 50
        a.reps = min(a.reps, 2)
    reps = max(1, a.reps)
    os.makedirs(a.out, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix="runrec-bench-", dir=os.environ.get("BENCH_TMP"))
    result: dict[str, Any] = {
        "benchmark": "foundation",
        "started_at": datetime.now(UTC).isoformat(),
        "machine": machine(),
        "loadavg_start": loadavg(),
        "quick": a.quick,
    }
    sections = []
    t_all = time.perf_counter()
    try:
        for w in which:
            t = time.perf_counter()
            if w == "submit":
                r = bench_submit(tmp, reps=reps, array_reps=reps, array_n=a.array)
                sections.append(report_submit(r))
            elif w == "records":
                r = bench_records(tmp, a.records, reps, a.long)
                sections.append(report_records(r))
            elif w == "hashing":
                r = bench_hashing(tmp, a.hash_mib << 20, a.files, reps)
                sections.append(report_hashing(r))
            elif w == "slurm":
                try:
                    r = bench_slurm(tmp, reps, min(a.array, 8))
                except RuntimeError as exc:  # no cluster here: say so, measure the rest
                    print(f"(slurm: skipped, {exc})\n", flush=True)
                    continue
                sections.append(report_slurm(r))
            else:
                print(
                    f"unknown benchmark {w!r}; choose from submit, records, hashing, slurm",
                    file=sys.stderr,
                )
                return 2
            r["elapsed_s"] = time.perf_counter() - t
            result[w] = r
            print(sections[-1] + f"\n\n({w}: {r['elapsed_s']:.0f} s)\n", flush=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    result["loadavg_end"] = loadavg()
    result["elapsed_s"] = time.perf_counter() - t_all
    name = "foundation-quick.json" if a.quick else "foundation.json"
    with open(os.path.join(a.out, name), "w") as f:
        json.dump(result, f, indent=1)
    with open(os.path.join(a.out, name.replace(".json", ".md")), "w") as f:
        f.write("\n\n".join(sections) + "\n")
    m = result["machine"]
    print(
        f"foundation: {result['elapsed_s']:.0f} s on {m['cpus']} CPUs ({m['cpu_model']}), "
        f"{m['mem_gib']} GiB, {m['os']}, Python {m['python']}; load average "
        f"{result['loadavg_start']} -> {result['loadavg_end']}; wrote {os.path.join(a.out, name)}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
