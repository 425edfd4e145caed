"""The helpers every ``runrec`` command shares (runrec_cluster.cli._common / _table), on a real
store written with Store.write_version: no backend, no job process."""

from __future__ import annotations

import os

import click
import pytest
from click.testing import CliRunner

from runrec_cluster.cli import cli
from runrec_cluster.cli._common import key_values, load_all, load_some, query_options, short_ids
from runrec_cluster.record import ConfigEntry, to_patch
from runrec_cluster.store import layout


def _write(store, name, end=None):  # type: ignore[no-untyped-def]
    rid = layout.new_id()
    store.write_version(
        rid,
        "launch",
        to_patch(run_id=rid, name=name, config={"lr": ConfigEntry(value=0.1, source="given")}),
    )
    if end is not None:
        store.write_version(rid, "end", end)
    return rid


def _damage(store):  # type: ignore[no-untyped-def]
    """A run with an unreadable version file beside its launch, and a run that does not fold:
    (the damaged run, the unreadable file, the run that does not fold)."""
    damaged = _write(store, "damaged")
    first = next(iter(store.version_files(damaged)))
    garbage = os.path.join(os.path.dirname(first), "v009001-000000000000.msgpack.zst")
    with open(garbage, "wb") as f:
        f.write(b"not zstd")
    return damaged, garbage, _write(store, "no-fold", {"metrics": "not a mapping"})


def _warned_once_each(capsys, garbage, no_fold):  # type: ignore[no-untyped-def]
    err = " ".join(capsys.readouterr().err.split())  # rich wraps long lines
    assert f"warning: skipped unreadable record file {garbage}:" in err
    assert f"warning: run {no_fold} does not fold into a record (" in err
    assert err.count("warning:") == 2


def test_load_all_warns_once_per_problem_and_keeps_the_readable_runs(store, capsys):
    good = _write(store, "good", {"state": "succeeded", "state_source": "job"})
    damaged, garbage, no_fold = _damage(store)
    recs = load_all(store)
    assert [r.run_id for r in recs] == sorted([good, damaged])
    _warned_once_each(capsys, garbage, no_fold)
    load_all(store, warn_problems=False)
    assert capsys.readouterr().err == ""


def test_load_some_reads_the_runs_asked_for_in_that_order_as_load_all_does(store, capsys):
    """``load_some`` (ls --limit, show: ``Store.load_runs``) gives the same records, warnings
    and left-out runs as ``load_all`` for the runs it is asked for, in the order asked."""
    a = _write(store, "a", {"state": "succeeded", "state_source": "job"})
    b = _write(store, "b", {"state": "failed", "state_source": "job"})
    damaged, garbage, no_fold = _damage(store)
    whole = {r.run_id: r for r in load_all(store)}
    capsys.readouterr()
    absent = layout.new_id()  # a well-formed id of no run in the store
    recs = load_some(store, [b, absent, no_fold, damaged, a])
    assert [r.run_id for r in recs] == [b, damaged, a]
    assert recs == [whole[b], whole[damaged], whole[a]]
    _warned_once_each(capsys, garbage, no_fold)
    assert load_some(store, [a]) == [whole[a]]
    assert capsys.readouterr().err == ""


def test_key_values():
    assert key_values(("a=1", "b==2", "c="), "--tag") == {"a": "1", "b": "=2", "c": ""}
    assert key_values((" k =v",), "--set", strip=True) == {"k": "v"}
    assert key_values((" k =v",), "--tag") == {" k ": "v"}
    for bad in ("novalue", "=v"):
        with pytest.raises(click.BadParameter, match="is not KEY=VALUE"):
            key_values((bad,), "--tag")
    with pytest.raises(click.BadParameter):
        key_values((" =v",), "--set", strip=True)


def test_short_ids_tell_neighbours_apart():
    ids = ["aaaaaaaaaaaa1", "aaaaaaaaaaaa2", "bbbbbbbbbbbbb"]
    assert short_ids(ids) == {
        "aaaaaaaaaaaa1": "aaaaaaaaaaaa1",
        "aaaaaaaaaaaa2": "aaaaaaaaaaaa2",
        "bbbbbbbbbbbbb": "bbbbbbbbbb",
    }


def test_query_options_declare_where_columns_sort_in_order():
    @click.command()
    @query_options(columns_help="COLS", sort_help="SORT")
    def cmd(where, columns, sort):  # type: ignore[no-untyped-def]
        click.echo(f"{where}|{columns}|{sort}")

    assert [p.name for p in cmd.params] == ["where", "columns", "sort"]
    out = CliRunner().invoke(cmd, ["--where", "x > 1", "--columns", "a,b", "--sort", "-a"])
    assert out.output == "x > 1|a,b|-a\n"
    for name in ("ls", "table"):
        opts = [p.name for p in cli.commands[name].params]
        assert opts.index("where") + 1 == opts.index("columns") == opts.index("sort") - 1
