"""Promotion criteria: a small, safe expression language over a run's recorded metrics.

    val_acc >= 0.9 and loss < 1
    (f1 > 0.8 or recall >= 0.95) and not diverged == true
    `val/acc@5` >= 0.7            backquotes for metric names with other characters

Grammar (no ``eval``, no attribute access, no calls, no arithmetic)::

    expr       := and_expr ("or" and_expr)*
    and_expr   := not_expr ("and" not_expr)*
    not_expr   := "not" not_expr | "(" expr ")" | comparison
    comparison := operand OP operand            OP: >= <= > < == !=
    operand    := NUMBER | "string" | 'string' | true | false | METRIC | `METRIC`

A metric name is looked up in the run's metrics; ``a.b`` also reaches into a nested dict when no
metric is called ``a.b``. Ordering operators compare numbers only. Every failure names the term
that did not hold and the value the run recorded.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from runrec_cluster.errors import PromotionError

MAX_LEN = 2000
MAX_DEPTH = 50

_TOKEN = re.compile(
    r"""\s*(?:
      (?P<num>-?(?:\d+\.\d*|\.\d+|\d+)(?:[eE][-+]?\d+)?)(?![A-Za-z_])
    | (?P<op>>=|<=|==|!=|>|<)
    | (?P<lp>\() | (?P<rp>\))
    | (?P<str>"[^"\\\n]*"|'[^'\\\n]*')
    | (?P<quoted>`[^`\n]+`)
    | (?P<word>[A-Za-z_][A-Za-z0-9_.:/\[\]-]*)
    )""",
    re.VERBOSE,
)
_KEYWORDS = {"and", "or", "not", "true", "false"}


@dataclass(frozen=True)
class Metric:
    name: str


@dataclass(frozen=True)
class Const:
    value: Any


@dataclass(frozen=True)
class Compare:
    left: Metric | Const
    op: str
    right: Metric | Const
    text: str


@dataclass(frozen=True)
class BoolOp:
    op: str  # "and", "or"
    items: tuple[Any, ...]


@dataclass(frozen=True)
class Not:
    item: Any


@dataclass
class Outcome:
    """The verdict: ``ok``, the value of every metric named, and why it failed."""

    ok: bool
    values: dict[str, Any] = field(default_factory=dict)
    failed: list[str] = field(default_factory=list)


def _tokens(text: str) -> list[tuple[str, str, int]]:
    out = []
    pos = 0
    text = text.rstrip()
    while pos < len(text):
        m = _TOKEN.match(text, pos)
        if not m or m.end() == pos:
            raise PromotionError(
                f"criteria {text!r}: cannot read {text[pos:].strip()[:20]!r} at character "
                f"{pos + 1}. Write terms like `val_acc >= 0.9`, joined by and / or / not; "
                "quote odd metric names in backquotes."
            )
        kind = m.lastgroup or ""
        out.append((kind, m.group(kind), m.start(kind)))
        pos = m.end()
    return out


class _Parser:
    def __init__(self, text: str) -> None:
        self.text = text
        self.toks = _tokens(text)
        self.i = 0
        self.depth = 0

    def _err(self, what: str) -> PromotionError:
        where = (
            f"at character {self.toks[self.i][2] + 1}" if self.i < len(self.toks) else "at the end"
        )
        return PromotionError(
            f"criteria {self.text!r}: {what} {where}. Example: "
            '--criteria "val_acc >= 0.9 and loss < 1".'
        )

    def peek(self) -> tuple[str, str, int] | None:
        return self.toks[self.i] if self.i < len(self.toks) else None

    def word(self, w: str) -> bool:
        t = self.peek()
        return t is not None and t[0] == "word" and t[1] == w

    def parse(self) -> Any:
        if not self.toks:
            raise PromotionError(
                "the criteria are empty. Give terms like `val_acc >= 0.9`, or leave --criteria out."
            )
        node = self.expr()
        if self.i != len(self.toks):
            raise self._err(f"unexpected {self.toks[self.i][1]!r}")
        return node

    def expr(self) -> Any:
        self.depth += 1
        if self.depth > MAX_DEPTH:
            raise self._err("too deeply nested")
        items = [self.and_expr()]
        while self.word("or"):
            self.i += 1
            items.append(self.and_expr())
        self.depth -= 1
        return items[0] if len(items) == 1 else BoolOp("or", tuple(items))

    def and_expr(self) -> Any:
        items = [self.not_expr()]
        while self.word("and"):
            self.i += 1
            items.append(self.not_expr())
        return items[0] if len(items) == 1 else BoolOp("and", tuple(items))

    def not_expr(self) -> Any:
        if self.word("not"):
            self.i += 1
            self.depth += 1
            if self.depth > MAX_DEPTH:
                raise self._err("too deeply nested")
            node = Not(self.not_expr())
            self.depth -= 1
            return node
        t = self.peek()
        if t is not None and t[0] == "lp":
            self.i += 1
            node = self.expr()
            t = self.peek()
            if t is None or t[0] != "rp":
                raise self._err("missing ')'")
            self.i += 1
            return node
        return self.comparison()

    def comparison(self) -> Compare:
        start = self.peek()
        left = self.operand()
        t = self.peek()
        if t is None or t[0] != "op":
            raise self._err("expected a comparison (>=, <=, >, <, ==, !=)")
        self.i += 1
        right = self.operand()
        nxt = self.peek()
        if nxt is not None and nxt[0] == "op":
            raise self._err("chained comparisons are not supported; join two terms with 'and'")
        end = self.toks[self.i - 1]
        text = self.text[start[2] if start else 0 : end[2] + len(end[1])]
        if isinstance(left, Const) and isinstance(right, Const):
            raise PromotionError(
                f"criteria term `{text}` compares two constants; name a metric of the run."
            )
        return Compare(left, t[1], right, text)

    def operand(self) -> Metric | Const:
        t = self.peek()
        if t is None:
            raise self._err("expected a metric name or a value")
        kind, val, _ = t
        self.i += 1
        if kind == "num":
            return Const(float(val) if any(c in val for c in ".eE") else int(val))
        if kind == "str":
            return Const(val[1:-1])
        if kind == "quoted":
            return Metric(val[1:-1])
        if kind == "word":
            if val in ("true", "false"):
                return Const(val == "true")
            if val in _KEYWORDS:
                self.i -= 1
                raise self._err(f"expected a metric name or a value, not {val!r}")
            return Metric(val)
        self.i -= 1
        raise self._err(f"expected a metric name or a value, not {val!r}")


def parse(text: str) -> Any:
    """The syntax tree of a criteria expression; ``PromotionError`` saying where it is wrong."""
    if not isinstance(text, str):
        raise PromotionError(f"criteria must be text, got {type(text).__name__}.")
    if len(text) > MAX_LEN:
        raise PromotionError(f"criteria longer than {MAX_LEN} characters; shorten them.")
    return _Parser(text).parse()


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


def _is_nan(v: Any) -> bool:
    return isinstance(v, float) and math.isnan(v)


def _fmt(v: Any) -> str:
    return repr(v) if isinstance(v, str) else str(v).lower() if isinstance(v, bool) else str(v)


class _Eval:
    def __init__(self, metrics: Mapping[str, Any], who: str) -> None:
        self.metrics = metrics
        self.who = who
        self.values: dict[str, Any] = {}

    def value(self, o: Metric | Const) -> Any:
        if isinstance(o, Const):
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
        a, b = self.value(c.left), self.value(c.right)
        if c.op in ("==", "!="):
            same = a == b and isinstance(a, bool) == isinstance(b, bool)  # 1 is not true
            return same if c.op == "==" else not same
        for side, v in ((c.left, a), (c.right, b)):
            if not _is_number(v):
                name = side.name if isinstance(side, Metric) else _fmt(v)
                raise PromotionError(
                    f"criteria term `{c.text}`: {name} is {_fmt(v)} ({type(v).__name__}), not a "
                    "number, so it cannot be ordered. Compare it with == or !=."
                )
        if _is_nan(a) or _is_nan(b):  # not math.isnan: an int may be too large for a float
            return False
        return {">=": a >= b, "<=": a <= b, ">": a > b, "<": a < b}[c.op]

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
            shown = [
                f"{s.name} = {_fmt(self.values[s.name])}"
                for s in (node.left, node.right)
                if isinstance(s, Metric)
            ]
            return [f"`{node.text}` does not hold ({', '.join(shown)})"]
        if isinstance(node, Not):
            inner = _text(node.item)
            shown = ", ".join(f"{k} = {_fmt(self.values[k])}" for k in _metric_names(node.item))
            return [f"`not {inner}` does not hold ({shown})"]
        if node.op == "and":
            out: list[str] = []
            for x in node.items:
                if not self.holds(x):
                    out += self.why_not(x)
            return out
        return [" and ".join(r for x in node.items for r in self.why_not(x))]


def _metric_names(node: Any) -> list[str]:
    if isinstance(node, Compare):
        return [s.name for s in (node.left, node.right) if isinstance(s, Metric)]
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
