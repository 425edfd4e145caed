"""The query expression language: parsing, both evaluators, and the errors a person sees."""

import math

import numpy as np
import pytest

from runrec_cluster.errors import ConfigError
from runrec_cluster.expr import ExpressionError, parse, tokenize

ROWS = [
    {
        "state": "failed",
        "config.lr": 0.1,
        "metrics.acc": None,
        "cause": "timeout",
        "code_dirty": True,
    },
    {"state": "succeeded", "config.lr": 0.01, "metrics.acc": 0.9, "code_dirty": False},
    {"state": "succeeded", "config.lr": 0.01, "metrics.acc": 0.4, "config.opt": "adam"},
    {"state": "succeeded", "config.lr": 1, "metrics.acc": 0.7, "config.opt": 3, "tags.x": "a b"},
    {"state": "running"},
]


def both(text):
    """Matches by the row evaluator, checked equal to the column evaluator."""
    e = parse(text)
    by_row = [e.matches(r) for r in ROWS]
    names = {k for r in ROWS for k in r}

    def get(name):
        vals = [r.get(name) for r in ROWS]
        if all(v is None or (isinstance(v, int | float) and not isinstance(v, bool)) for v in vals):
            return np.array([math.nan if v is None else v for v in vals], dtype=float)
        return np.array(vals + [None], dtype=object)[:-1]

    assert set(e.columns) <= names | {"nope", "metrics.loss"}
    by_col = list(e.mask(get, len(ROWS)))
    assert by_row == by_col, text
    return [i for i, m in enumerate(by_row) if m]


@pytest.mark.parametrize(
    "text, expected",
    [
        ("config.lr == 0.01 and metrics.acc > 0.5", [1]),
        ('config.lr > 0.01 and state == "failed"', [0]),
        ("config.lr == 1.0", [3]),
        ("metrics.acc > 0.5 or state == 'running'", [1, 3, 4]),
        ("not metrics.acc > 0.5", [0, 2, 4]),
        ("metrics.acc <= 0.5", [2]),
        ("metrics.acc == null", [0, 4]),
        ("metrics.acc != null", [1, 2, 3]),
        ("metrics.acc != 0.9", [0, 2, 3, 4]),
        ('state in ["failed", "running"]', [0, 4]),
        ("state not in ('failed', 'running')", [1, 2, 3]),
        ("config.opt == 'adam'", [2]),
        ("config.opt == 3", [3]),
        ("config.opt > 2", [3]),  # a string is never > a number
        ("config.opt < 'b'", [2]),
        ("code_dirty", [0]),
        ("code_dirty == false", [1]),
        ("not code_dirty", [1, 2, 3, 4]),
        ("nope == null", [0, 1, 2, 3, 4]),
        ("`tags.x` == 'a b'", [3]),
        ("(state == 'failed' or state == 'running') and not cause == 'timeout'", [4]),
        ("0.5 < metrics.acc", [1, 3]),
        ("metrics.acc >= 4e-1 AND config.lr < 1", [1, 2]),
        ("metrics.loss > 0 or True", [0, 1, 2, 3, 4]),
        ("state == 'it\\'s'", []),
    ],
)
def test_expressions(text, expected):
    assert both(text) == expected


def test_columns_in_order():
    assert parse("b.c > 1 and a == 2 or b.c < 0").columns == ("b.c", "a")


@pytest.mark.parametrize(
    "text, message, pos",
    [
        ("config.lr > and x", "expected a column name or a value, found 'and'", 12),
        ("config.lr = 0.1", "unknown operator '='", 10),
        ("state == 'failed", "string not closed", 9),
        ("metrics.acc > 0.5 metrics.loss < 1", "expected 'and', 'or' or the end", 18),
        ("(a == 1", "expected ')', found the end", 7),
        ("a == 1 and", "expected a column name or a value, found the end", 10),
        ("a in 3", "expected a list", 5),
        ("1 == 2", "needs a column", 0),
        ("a < b < c", "chained comparisons", 6),
        ("a == $x", "unexpected character '$'", 5),
        ("", "empty", 0),
        ("a == 1.2.3", "not a number", 5),
    ],
)
def test_errors_point_at_the_bad_token(text, message, pos):
    with pytest.raises(ExpressionError) as ei:
        parse(text)
    err = ei.value
    assert isinstance(err, ConfigError)
    assert message in str(err)
    assert err.pos == pos
    lines = str(err).splitlines()
    assert lines[-2] == "  " + text
    assert lines[-1] == "  " + " " * pos + "^"


def test_no_eval_anywhere():
    # names that would mean something to Python are only column names here
    e = parse("__import__ == 'os' or __class__ != null")
    assert e.matches({}) is False
    assert e.columns == ("__import__", "__class__")


def test_tokens():
    kinds = [(t.kind, t.value) for t in tokenize('a.b>=-1.5e3 and `x y`!="s"')]
    assert kinds == [
        ("name", "a.b"),
        ("op", ">="),
        ("num", -1500.0),
        ("kw", "and"),
        ("name", "x y"),
        ("op", "!="),
        ("str", "s"),
        ("end", None),
    ]


def test_too_long_and_too_deep():
    with pytest.raises(ExpressionError):
        parse("a == 1 or " * 1000 + "a == 1")
    with pytest.raises(ExpressionError, match="nested too deeply"):
        parse("not " * 200 + "a == 1")
