"""ColumnNames: which names a query may use, and the closest known names of one it may not."""

import pytest

from runrec_cluster.errors import ExpressionError
from runrec_cluster.expr import parse
from runrec_cluster.query.columns import BASE_COLUMNS, ColumnNames

PRESENT = {"config.lr", "config.epochs", "metrics.acc", "tags.team", "_lineage"}


def test_known_names():
    names = ColumnNames(PRESENT, has_runs=True)
    for c in [*BASE_COLUMNS, "packages.torch", "config.lr", "metrics.acc", "tags.team"]:
        assert names.knows(c), c
    for c in ["lr", "config.nope", "metrics.loss", "packages.left-pad", "_lineage", "bogus"]:
        assert not names.knows(c), c


def test_an_empty_store_accepts_run_prefixes_only():
    names = ColumnNames(set(), has_runs=False)
    assert names.knows("config.lr") and names.knows("metrics.x") and names.knows("tags.t")
    assert not names.knows("lr") and not names.knows("packages.left-pad")


def test_suggestions_put_the_same_name_under_a_prefix_first():
    names = ColumnNames(PRESENT, has_runs=True)
    assert names.suggest("lr") == ["config.lr"]
    assert names.suggest("config.epoch")[0] == "config.epochs"
    assert names.suggest("stat")[0] == "state"
    assert names.suggest("zzzzzz") == []


def test_check_points_at_the_first_unknown_name():
    names = ColumnNames(PRESENT, has_runs=True)
    with pytest.raises(ExpressionError) as e:
        names.check(parse("state == 'failed' and lr > 1"), None)
    assert e.value.pos == len("state == 'failed' and ")
    assert "unknown column 'lr' (did you mean config.lr?) in the where expression" in str(e.value)
    with pytest.raises(ExpressionError) as e:
        names.check(None, ["run_id", "lr", "bogus"])
    assert e.value.pos == len("run_id,") and e.value.text == "run_id,lr,bogus"
    assert "unknown columns 'lr' (did you mean config.lr?), 'bogus'" in str(e.value)
    with pytest.raises(ExpressionError, match="in the sort key"):
        names.check(None, None, "acc")
    names.check(parse("config.lr > 0 and metrics.acc == null"), ["run_id", "tags.team"], "state")
