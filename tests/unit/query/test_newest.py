"""query.newest.Listing: the families a walk from the newest picks hold the last N rows of the
whole listing, as ``rerun.order_with_reruns`` orders it (the ground truth, on every run)."""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta

import msgspec
import pyarrow as pa
import pytest

from runrec_cluster.query import newest
from runrec_cluster.query.newest import LIGHT_COLUMNS, Listing
from runrec_cluster.record import FailureCause, RunRecord, RunState
from runrec_cluster.rerun import order_with_reruns

T0 = datetime(2025, 1, 1, tzinfo=UTC)
STATES = ["succeeded", "failed", "cancelled", "running", "submitted"]


def _stale(state: str | None, cause: str | None) -> bool:
    """A run a backend may still change, as the index's row tells (``record.needs_verdict``
    without the failure's source): not terminal, or ended killed."""
    terminal = state is not None and RunState(state).is_terminal()
    return not terminal or cause == FailureCause.KILLED.value


def _world(rng: random.Random, n: int) -> list[dict]:
    """``n`` runs: a few created at the same instant or with no time, reruns of earlier runs
    (chains), reruns of runs not in the store, some not terminal or killed."""
    rows: list[dict] = []
    for k in range(n):
        rid = f"{rng.randrange(10**6):06d}{k:020d}"  # unique; not in the order of creation
        created = None if rng.random() < 0.03 else T0 + timedelta(seconds=rng.randrange(n // 2 + 1))
        rerun_of = None
        r = rng.random()
        if rows and r < 0.25:
            rerun_of = rng.choice(rows)["run_id"]
        elif r < 0.28:
            rerun_of = "9" * 26  # an original not in the store
        state = rng.choice(STATES)
        rows.append(
            {
                "run_id": rid,
                "created_at": created,
                "rerun_of": rerun_of,
                "state": state,
                "cause": "killed" if state == "failed" and rng.random() < 0.3 else None,
                "name": rng.choice(["train", "eval", "train-big"]),
                "sweep_id": rng.choice([None, "sw1abc", "sw2def"]),
            }
        )
    return rows


def _light(rows: list[dict]) -> pa.Table:
    cols = {c: [r[c] for r in rows] for c in LIGHT_COLUMNS}
    cols["created_at"] = [d.isoformat() if d else None for d in cols["created_at"]]
    return pa.table({c: pa.array(v, pa.string()) for c, v in cols.items()})


def _record(row: dict, state: str) -> RunRecord:
    return msgspec.convert(
        {
            "run_id": row["run_id"],
            "name": row["name"],
            "state": state,
            "created_at": row["created_at"],
            "rerun_of": row["rerun_of"],
            "sweep_id": row["sweep_id"],
        },
        RunRecord,
    )


def _listed(recs, states, name, sweep, passing):
    """What ``runrec ls`` prints of ``recs`` before ``--limit`` (cli.runs: filter, sort,
    reruns after originals, row filter)."""
    if states:
        recs = [r for r in recs if r.state.value in states]
    if name:
        recs = [r for r in recs if name in r.name]
    if sweep:
        recs = [r for r in recs if r.sweep_id and r.sweep_id.startswith(sweep)]
    recs = sorted(recs, key=lambda r: (r.created_at or datetime.min.replace(tzinfo=UTC), r.run_id))
    ordered = order_with_reruns(recs)
    return [(r.run_id, d) for r, d in ordered if passing is None or r.run_id in passing]


@pytest.mark.parametrize("seed", range(100))
def test_the_walk_holds_the_last_rows_of_the_whole_listing(seed, monkeypatch):
    rng = random.Random(seed)
    monkeypatch.setattr(newest, "FIRST_K", rng.choice([1, 3, 1024]))
    rows = _world(rng, rng.choice([0, 1, 5, 40, 200]))
    # a stale run's state after its refresh (the backend found its job gone, or not)
    fresh = {
        r["run_id"]: rng.choice([r["state"], "failed"])
        for r in rows
        if _stale(r["state"], r["cause"])
    }
    recs = [_record(r, fresh.get(r["run_id"], r["state"])) for r in rows]
    states = tuple(rng.sample(STATES, rng.choice([0, 1, 2])))
    name = rng.choice([None, None, "train", "big"])
    sweep = rng.choice([None, None, "sw1"])
    passing = None
    if rng.random() < 0.5 and rows:  # --where / --negative as the index tells
        passing = {r["run_id"] for r in rows if rng.random() < 0.4}
    limit = rng.choice([1, 2, 5, 17, 1000])
    want = _listed(recs, states, name, sweep, passing)[-limit:]

    arr = pa.array(sorted(passing), pa.string()) if passing is not None else None
    listing = Listing(_light(rows), name, sweep, arr)
    assert not listing.cyclic()
    listing.set_states(states, {r: s for r, s in fresh.items()})
    assert set(listing.stale()) == {
        r["run_id"]
        for r in rows
        if _stale(r["state"], r["cause"])
        and (not name or name in r["name"])
        and (not sweep or (r["sweep_id"] or "").startswith(sweep))
    }
    picked = listing.more(limit)
    by_id = {r.run_id: r for r in recs}
    assert len(picked) == len(set(picked))
    # the stale runs count as passing in the walk; here the real filter is the index's
    while True:
        got = _listed([by_id[i] for i in picked], states, name, sweep, passing)
        if len(got) >= limit or listing.done:
            break
        picked += listing.more(limit - len(got))
    assert got[-limit:] == want
    if len(want) < limit:  # fewer rows than asked: the walk went through every run
        assert listing.done


def test_a_rerun_cycle_is_found():
    rows = [
        {"run_id": "a" * 26, "rerun_of": "b" * 26},
        {"run_id": "b" * 26, "rerun_of": "a" * 26},
        {"run_id": "c" * 26, "rerun_of": None},
    ]
    for r in rows:
        r.update(created_at=T0, state="succeeded", cause=None, name="x", sweep_id=None)
    assert Listing(_light(rows)).cyclic()
    assert not Listing(_light(rows[2:])).cyclic()
    rows[2]["rerun_of"] = "c" * 26  # its own rerun
    assert Listing(_light(rows[2:])).cyclic()


def test_columns_without_any_value_are_read_as_text():
    """The index types a column no run has a value in as null: --sweep, --where still work."""
    rows = [
        {"run_id": f"{k:026d}", "created_at": None, "rerun_of": None, "state": "running"}
        for k in range(4)
    ]
    for r in rows:
        r.update(cause=None, name="x", sweep_id=None)
    light = pa.Table.from_pylist(rows)
    assert light.schema.field("sweep_id").type == pa.null()
    listing = Listing(light, "x", "sw", pa.array([], pa.null()))
    assert listing.more(3) == [] and listing.done
    listing = Listing(light, None, None, pa.array([rows[0]["run_id"]]))
    assert listing.stale() == [r["run_id"] for r in rows]
    assert listing.more(2) == [rows[3]["run_id"], rows[2]["run_id"]]  # stale: may pass
