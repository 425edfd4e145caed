"""A realistic store of N runs, written through the library's own write path (issue 17).

Not hand-made files: every version is written by the functions real runs use.

- **Launch** (submitting side): sweeps of ``SWEEP_SIZES`` tasks (100 to 1,000, cycling) through
  ``Executor.prepare_calls`` (what ``map_array`` calls before the backend launches: the pickled
  call per task, the sweep's shared launch context, one launch version per task, or whatever
  the write path writes today), 50 config values and 10 tags per run; the function is
  ``dict`` (a builtin: its pickle names it, nothing of this module).
- **Job side**, as ``job/execute.py`` and ``job/outcome.py`` write it on the node: the record
  loaded (``Store.load``), ``execute.start_patch`` (the node's facts as a shared context, the
  process, state running) as version ``start``, 20 metrics through ``Run.log_metrics``, then
  the end: ``outcome.write_end`` with the result (``outcome.encode_result``) for a success, or
  ``outcome.record_failure`` with a real exception and its traceback for a failure (every
  ``FAIL_EVERY``-th task; a few out of memory, a few data problems).
- **Annotations** through ``lineage.annotate`` (every ``ANNOTATE_EVERY``-th run), **reruns**
  through ``rr.rerun`` on the local backend (``reruns``, a real job each: the first sweeps'
  runs), **retirements** through ``lineage.retire`` (``retirements``, early, while the store is
  small: a retirement reads the whole lineage graph).
- **Packing** as ``runrec pack`` does it (``packs.pack_store`` then ``index_packs.write_rows``),
  every ``pack_every`` runs when asked (the background packer's threshold is 10,000).

What is reused across sweeps, as one long session on one node would: the node's facts
(``execute.node_facts``: NVML, the package list; captured once, as every job on the same
node and environment would find them), and the submitting side's code and environment
capture (one ``Executor``; ``prepare_calls`` captures git and the environment at each call,
which is what a session does). Nothing else is cached.

    python bench/scale_gen.py STORE --n 10000 [--pack-every 10000]
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from dataclasses import dataclass, field
from typing import Any

from bench_query import run_values  # 50 config values, 20 metrics, 10 tags: the same runs

SWEEP_SIZES = (100, 250, 500, 1000, 200, 750)  # tasks per map_array, cycling
FAIL_EVERY = 20  # one task in 20 fails
ANNOTATE_EVERY = 500  # one run in 500 gets a verdict
os.environ.setdefault("RUNREC_AUTO_PACK", "0")  # packed here, at known points


@dataclass
class GenStats:
    runs: int = 0
    sweeps: int = 0
    failed: int = 0
    annotated: int = 0
    reruns: int = 0
    retired: int = 0
    packs: int = 0
    write_s: float = 0.0  # launch + job side + annotations, packing excluded
    pack_s: float = 0.0  # packs.pack_store + index_packs.write_rows
    notes: list[str] = field(default_factory=list)


def _failure(k: int) -> BaseException:
    """A real exception with a real traceback (raised and caught here)."""
    kinds: list[type[BaseException]] = [ValueError, ValueError, MemoryError, FileNotFoundError]
    try:
        _train_step(kinds[(k // FAIL_EVERY) % len(kinds)], k)
    except BaseException as exc:  # noqa: BLE001 - the exception is the point
        return exc
    raise AssertionError("unreachable")


def _train_step(kind: type[BaseException], k: int) -> None:
    if kind is FileNotFoundError:
        raise FileNotFoundError(2, "No such file or directory", f"/data/shard-{k % 97}.parquet")
    raise kind(f"loss is nan at step {1000 + k % 5000} (lr too high?)")


def pack_now(store: Any) -> tuple[int, float]:
    """What ``runrec pack`` does: finished runs into packs, then their kept index rows."""
    from runrec_cluster.query.columns import package_reader
    from runrec_cluster.query.index_packs import write_rows
    from runrec_cluster.store import packs

    t0 = time.perf_counter()
    st = packs.pack_store(store.root)
    pk = package_reader(store)
    for p in st.packs:
        write_rows(store, p, pk)
    return len(st.packs), time.perf_counter() - t0


def generate(
    root: str,
    n: int,
    *,
    pack_every: int = 0,
    reruns: int = 3,
    retirements: int = 2,
    cwd: str | None = None,
    progress: Any = None,
    before_pack: Any = None,
) -> GenStats:
    """Write ``n`` runs into the store at ``root`` (see the module docstring). ``cwd``: the
    submitting side's working directory (its git repository is the recorded code);
    ``progress(stats, seconds)`` after each sweep; ``before_pack(store, runs)`` before each
    periodic pack (its time is not counted)."""
    import runrec_cluster as rr
    from runrec_cluster.job import execute, outcome
    from runrec_cluster.job.run import Run
    from runrec_cluster.lineage.annotate import annotate
    from runrec_cluster.lineage.retire import retire
    from runrec_cluster.record import RunState, to_patch

    store = rr.Store(root)
    store.ensure_writable()
    ex = rr.Executor(backend="local", store=store, name="train", cwd=cwd)
    st = GenStats()
    node = None
    rerun_of: list[str] = []
    since_pack = 0
    t_start = time.perf_counter()
    while st.runs < n:
        size = min(SWEEP_SIZES[st.sweeps % len(SWEEP_SIZES)], n - st.runs)
        base = st.runs
        vals = [run_values(base + i) for i in range(size)]
        calls = [(dict, (), v[0]) for v in vals]
        specs = ex.prepare_calls(calls, tags=vals[0][2], sweep=True)
        for i, spec in enumerate(specs):
            k = base + i
            rid = spec.run_id
            rec = store.load(rid)
            if node is None:  # once per node and environment (see the module docstring)
                node = execute.node_facts(store, rec)
            patch = execute.start_patch(store, rec, node, scheduler={"job_id": str(10_000 + k)})
            store.write_version(rid, "start", patch, role="job")
            if k % FAIL_EVERY == FAIL_EVERY - 1:
                outcome.record_failure(store, rid, 0, _failure(k), spec.log_dir)
                st.failed += 1
            else:
                Run(store, rid, attempt=1).log_metrics(vals[i][1])
                ended = outcome.now()
                outcome.write_end(
                    store,
                    rid,
                    spec.log_dir,
                    lambda s, k=k, ended=ended: to_patch(
                        state=RunState.SUCCEEDED,
                        state_source="job",
                        ended_at=ended,
                        result=outcome.encode_result(s, {"acc": (k % 100) / 100.0}),
                    ),
                )
            if k % ANNOTATE_EVERY == ANNOTATE_EVERY - 1:
                verdict = "negative" if k % (2 * ANNOTATE_EVERY) else "positive"
                annotate(store, rid, verdict=verdict, note=f"checked by the scale generator ({k})")
                st.annotated += 1
            if len(rerun_of) < reruns and k % FAIL_EVERY == FAIL_EVERY - 1:
                rerun_of.append(rid)
        st.runs += size
        st.sweeps += 1
        since_pack += size
        if st.retired < retirements and st.sweeps >= 1:
            retire(store, specs[-1].run_id, state="invalidated", reason="bad data shard")
            st.retired += 1
        while st.reruns < len(rerun_of):
            try:
                rr.rerun(store, rerun_of[st.reruns], reason="retry after the failure")
            except rr.RunrecError as exc:  # a real rerun: say what failed, keep generating
                st.notes.append(f"rerun of {rerun_of[st.reruns]} failed: {exc}")
            st.reruns += 1
        if pack_every and since_pack >= pack_every:
            w = time.perf_counter()
            if before_pack is not None:  # the loose store, measured before it is packed
                before_pack(store, since_pack)
            packs_n, secs = pack_now(store)
            st.packs += packs_n
            st.pack_s += secs
            t_start += time.perf_counter() - w  # packing is timed apart
            since_pack = 0
        if progress is not None:
            progress(st, time.perf_counter() - t_start)
    st.write_s = time.perf_counter() - t_start
    return st


def generate_simple(
    root: str,
    n: int,
    *,
    pack_every: int = 0,
    progress: Any = None,
    before_pack: Any = None,
    **_: Any,
) -> GenStats:
    """``n`` runs of two versions each, written by ``bench_query.write_ours`` (the runs of
    bench_query.py and bench_packs.py): the launch versions (50 config values, 10 tags) of
    each 1,000 runs together in one launch pack (``Store.write_versions``, as ``map_array``
    writes a sweep), then each run's end version (20 metrics) loose. No job side, failures or
    blobs; one retirement. For the figures that depend on the number of runs more than on
    their history (the index, queries, packs) at sizes the full generator does not reach in a
    benchmark's time."""
    from bench_query import write_ours

    import runrec_cluster as rr
    from runrec_cluster.lineage.retire import retire

    store = rr.Store(root)
    store.ensure_writable()
    st = GenStats()
    since_pack = 0
    t_start = time.perf_counter()
    while st.runs < n:
        size = min(10_000, n - st.runs)
        write_ours(store, size, start=st.runs)
        st.runs += size
        if not st.retired:  # one retirement (lineage.retire), early: the query's trust flags
            retire(store, next(store.run_ids()), state="invalidated", reason="bad data shard")
            st.retired += 1
        since_pack += size
        if pack_every and since_pack >= pack_every:
            w = time.perf_counter()
            if before_pack is not None:
                before_pack(store, since_pack)
            packs_n, secs = pack_now(store)
            st.packs += packs_n
            st.pack_s += secs
            t_start += time.perf_counter() - w
            since_pack = 0
        if progress is not None:
            progress(st, time.perf_counter() - t_start)
    st.write_s = time.perf_counter() - t_start
    return st


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("store")
    p.add_argument("--n", type=int, default=10_000)
    p.add_argument("--pack-every", type=int, default=0, help="pack every N runs (0: never)")
    p.add_argument("--reruns", type=int, default=3)
    p.add_argument("--retirements", type=int, default=2)
    a = p.parse_args()

    def show(st: GenStats, secs: float) -> None:
        print(f"{st.runs:,} runs, {st.sweeps} sweeps, {st.runs / secs:,.0f} runs/s", flush=True)

    st = generate(
        a.store,
        a.n,
        pack_every=a.pack_every,
        reruns=a.reruns,
        retirements=a.retirements,
        progress=show,
    )
    print(st)
    return 0


if __name__ == "__main__":
    sys.exit(main())
