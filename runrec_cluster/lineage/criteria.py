"""Promotion criteria: the one expression language (``expr.py``) over a run's recorded metrics.

    val_acc >= 0.9 and loss < 1
    (f1 > 0.8 or recall >= 0.95) and not diverged == true
    optimizer in ["adam", "adamw"]
    `val/acc@5` >= 0.7            backquotes for metric names with other characters

The tokenizer and parser are ``expr.py``'s, in the ``metric`` dialect: the same values, quoting,
keywords and operators as ``--where``, plus two rules of their own: every term is a comparison
(``diverged`` alone is refused, write ``diverged == true``), and at most ``MAX_LEN`` characters
(they are stored in the promotion record). A syntax error is a ``CriteriaSyntaxError``: an
``ExpressionError`` (the CLI exits 2, as for ``--where``) and a ``PromotionError``.

Evaluation is this module's: a name is looked up in the run's metrics (``a.b`` also reaches into
a nested dict when no metric is called ``a.b``); a metric the run did not record is refused;
ordering operators compare numbers only (anything else is refused, never silently false);
``==`` / ``!=`` / ``in`` follow ``expr.compare``. Every failure names the term that did not hold
and the value the run recorded.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from runrec_cluster.errors import CriteriaSyntaxError, PromotionError
from runrec_cluster.expr import Col, Compare, Dialect, Lit, Not, compare, is_in, parse_tree

MAX_LEN = 2000


CRITERIA = Dialect(noun="metric", comparisons_only=True, error=CriteriaSyntaxError)


@dataclass
class Outcome:
    """The verdict: ``ok``, the value of every metric named, and why it failed."""

    ok: bool
    values: dict[str, Any] = field(default_factory=dict)
    failed: list[str] = field(default_factory=list)


def parse(text: str) -> Any:
    """The syntax tree of criteria (``expr`` nodes); ``CriteriaSyntaxError`` saying where it is
    wrong, ``PromotionError`` when ``text`` is not text."""
    if not isinstance(text, str):
        raise PromotionError(f"criteria must be text, got {type(text).__name__}.")
    if len(text) > MAX_LEN:
        raise CriteriaSyntaxError(
            f"criteria longer than {MAX_LEN} characters; shorten them", text[:60], 0
        )
    return parse_tree(text, CRITERIA)


_MISSING = object()


def _lookup(metrics: Mapping[str, Any], name: str) -> Any:
    if name in metrics:
        return metrics[name]
    cur: Any = metrics
    for part in name.split("."):
        if isinstance(cur, Mapping) and part in cur:
            cur = cur[part]
        else:
            return _MISSING
    return cur


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _fmt(v: Any) -> str:
    return repr(v) if isinstance(v, str) else str(v).lower() if isinstance(v, bool) else str(v)


class _Eval:
    def __init__(self, metrics: Mapping[str, Any], who: str) -> None:
        self.metrics = metrics
        self.who = who
        self.values: dict[str, Any] = {}

    def value(self, o: Col | Lit) -> Any:
        if isinstance(o, Lit):
            return o.value
        v = _lookup(self.metrics, o.name)
        if v is _MISSING:
            known = ", ".join(sorted(self.metrics)) or "none"
            raise PromotionError(
                f"the criteria name metric {o.name!r}, which {self.who} did not record "
                f"(its metrics: {known}). Fix the name, or log it with run.log_metrics()."
            )
        self.values[o.name] = v
        return v

    def compare(self, c: Compare) -> bool:
        a = self.value(c.left)
        if c.op in ("in", "not in"):
            return is_in(a, c.right) == (c.op == "in")
        b = self.value(c.right)
        if c.op not in ("==", "!="):
            for side, v in ((c.left, a), (c.right, b)):
                if not _is_number(v):
                    name = side.name if isinstance(side, Col) else _fmt(v)
                    raise PromotionError(
                        f"criteria term `{c.text}`: {name} is {_fmt(v)} ({type(v).__name__}), "
                        "not a number, so it cannot be ordered. Compare it with == or !=."
                    )
        return compare(c.op, a, b)  # nan never passes an ordering; true is not 1

    def holds(self, node: Any) -> bool:
        if isinstance(node, Compare):
            return self.compare(node)
        if isinstance(node, Not):
            return not self.holds(node.item)
        results = [self.holds(x) for x in node.items]  # evaluate all: every value is recorded
        return all(results) if node.op == "and" else any(results)

    def why_not(self, node: Any) -> list[str]:
        """Why ``node`` is false (only called on false nodes)."""
        if isinstance(node, Compare):
            shown = ", ".join(f"{k} = {_fmt(self.values[k])}" for k in _metric_names(node))
            return [f"`{node.text}` does not hold ({shown})"]
        if isinstance(node, Not):
            shown = ", ".join(f"{k} = {_fmt(self.values[k])}" for k in _metric_names(node.item))
            return [f"`not {_text(node.item)}` does not hold ({shown})"]
        if node.op == "and":
            out: list[str] = []
            for x in node.items:
                if not self.holds(x):
                    out += self.why_not(x)
            return out
        return [" and ".join(r for x in node.items for r in self.why_not(x))]


def _metric_names(node: Any) -> list[str]:
    if isinstance(node, Compare):
        sides = (node.left,) if isinstance(node.right, tuple) else (node.left, node.right)
        return [s.name for s in sides if isinstance(s, Col)]
    if isinstance(node, Not):
        return _metric_names(node.item)
    return [n for x in node.items for n in _metric_names(x)]


def _text(node: Any) -> str:
    if isinstance(node, Compare):
        return node.text
    if isinstance(node, Not):
        return f"not {_text(node.item)}"
    return "(" + f" {node.op} ".join(_text(x) for x in node.items) + ")"


def evaluate(text: str, metrics: Mapping[str, Any], who: str = "the run") -> Outcome:
    """Evaluate criteria against metrics. ``Outcome.failed`` lists each term that did not hold,
    with the recorded values; a missing metric or a non-number raises ``PromotionError``."""
    tree = parse(text)
    ev = _Eval(metrics, who)
    ok = ev.holds(tree)
    return Outcome(ok=ok, values=dict(ev.values), failed=[] if ok else ev.why_not(tree))
