"""The promotion criteria language: what holds, what fails and why, what is refused."""

import math

import pytest

from runrec_cluster.errors import ExpressionError, PromotionError
from runrec_cluster.lineage.criteria import evaluate, parse

M = {
    "val_acc": 0.93,
    "loss": 0.2,
    "epochs": 20,
    "diverged": False,
    "optimizer": "adam",
    "val/acc@5": 0.99,
    "eval": {"f1": 0.81, "nested": {"x": 3}},
    "bad": math.nan,
}


@pytest.mark.parametrize(
    "expr",
    [
        "val_acc >= 0.9",
        "val_acc >= 0.9 and loss < 1",
        "val_acc>=0.9 and loss<1",
        "val_acc > 0.99 or loss <= 0.2",
        "not val_acc < 0.5",
        "(val_acc > 0.99 or epochs == 20) and not diverged == true",
        "optimizer == 'adam' and optimizer != \"sgd\"",
        "`val/acc@5` >= 0.95",
        "eval.f1 > 0.8 and eval.nested.x == 3",
        "0.9 <= val_acc",
        "loss > -1e3",
        "epochs == 20.0",
    ],
)
def test_holds(expr):
    out = evaluate(expr, M)
    assert out.ok and out.failed == []


def test_failures_name_the_term_and_the_value():
    out = evaluate("val_acc >= 0.95 and loss < 1 and epochs > 30", M)
    assert not out.ok
    assert out.failed == [
        "`val_acc >= 0.95` does not hold (val_acc = 0.93)",
        "`epochs > 30` does not hold (epochs = 20)",
    ]
    assert out.values == {"val_acc": 0.93, "loss": 0.2, "epochs": 20}
    out = evaluate("val_acc > 0.99 or loss < 0.1", M)
    assert out.failed == [
        "`val_acc > 0.99` does not hold (val_acc = 0.93) and `loss < 0.1` does not hold (loss = 0.2)"
    ]
    out = evaluate("not diverged == false", M)
    assert out.failed == ["`not diverged == false` does not hold (diverged = false)"]
    assert not evaluate("bad > 0", M).ok and not evaluate("bad <= 0", M).ok  # nan never passes
    assert not evaluate("diverged == 0", M).ok  # false is not 0


@pytest.mark.parametrize(
    "expr, message",
    [
        ("f1 > 0.5", "metric 'f1', which the run did not record"),
        ("optimizer > 1", "'adam' (str), not a number"),
        ("diverged < 1", "not a number"),
        ("__import__('os').system('x')", "cannot read"),
        ("val_acc >= 0.9; rm -rf /", "cannot read"),
        ("val_acc", "expected a comparison"),
        ("val_acc >= ", "expected a metric name or a value"),
        ("val_acc = 0.9", "cannot read"),
        ("0.1 < val_acc < 0.9", "chained comparisons"),
        ("(val_acc > 1", "missing ')'"),
        ("val_acc > 1)", "unexpected ')'"),
        ("1 < 2", "compares two constants"),
        ("", "empty"),
        ("val_acc > 1 and", "expected a metric name or a value"),
        ("not " * 60 + "val_acc > 1", "too deeply nested"),
        ("(" * 60 + "val_acc > 1" + ")" * 60, "too deeply nested"),
        ("x > 1 " + "and x > 1 " * 300, "longer than"),
    ],
)
def test_refused(expr, message):
    with pytest.raises(PromotionError, match=message.replace("(", r"\(").replace(")", r"\)")):
        evaluate(expr, M)


def test_parse_has_no_side_effects_and_no_eval():
    tree = parse("a.b >= 1 and not (c == 'x' or d != true)")
    assert "Compare" in repr(tree)
    with pytest.raises(PromotionError):
        parse(12)  # type: ignore[arg-type]


def test_one_language_with_where():
    """The criteria are the --where language (expr.py): its values, quoting and keywords."""
    assert evaluate("optimizer in ['adam', 'sgd'] AND epochs NOT IN [1, 2]", M).ok
    assert evaluate("optimizer == 'it\\'s' or val_acc >= 1_000", M).failed
    assert evaluate("`val/acc@5` != null and loss < +1", M).ok
    out = evaluate("optimizer not in ['adam']", M)
    assert out.failed == ["`optimizer not in ['adam']` does not hold (optimizer = 'adam')"]


@pytest.mark.parametrize(
    "expr", ["val_acc = 0.9", "val_acc", "(val_acc > 1", "", "not " * 60 + "val_acc > 1"]
)
def test_a_syntax_error_is_an_expression_error(expr):
    """Refused like a bad --where (the CLI exits 2), still a PromotionError for promote()."""
    with pytest.raises(ExpressionError) as ei:
        parse(expr)
    assert isinstance(ei.value, PromotionError)
    assert 0 <= ei.value.pos <= len(expr) and str(ei.value).startswith("cannot read the criteria")


@pytest.mark.parametrize("expr", ["f1 > 0.5", "optimizer > 1"])
def test_a_failure_after_parsing_is_only_a_promotion_error(expr):
    with pytest.raises(PromotionError) as ei:
        evaluate(expr, M)
    assert not isinstance(ei.value, ExpressionError)
