"""The one expression language: ``runrec ls --where``, ``rr.query`` and promotion criteria.

    config.lr > 0.01 and state == "failed"
    metrics.acc >= 0.9 or (cause in ["timeout", "out_of_memory"] and not code_dirty)
    tags.team == 'vision' and metrics.loss != null
    `metrics.val/acc@5` > 0.7           backquotes for column names with other characters

Grammar (a hand-written tokenizer and recursive-descent parser; no ``eval``, no attribute
access, no calls, no arithmetic)::

    expr       := and_expr ("or" and_expr)*
    and_expr   := not_expr ("and" not_expr)*
    not_expr   := "not" not_expr | comparison
    comparison := operand [OP operand | ["not"] "in" list]      OP: == != < <= > >=
    operand    := literal | COLUMN | "(" expr ")"
    list       := "[" [literal ("," literal)*] "]"  (or the same in parentheses)
    literal    := NUMBER | "string" | 'string' | true | false | null

A COLUMN is a name of the flat run view (``docs/query.md``): letters, digits, ``_ - . / :``,
or anything between backquotes. A column alone (``code_dirty``) means ``code_dirty == true``.

Semantics: a missing value is ``null``. ``==`` and ``!=`` compare any two values (``1 == 1.0``;
a missing value equals only ``null``); ``< <= > >=`` hold only between two numbers or two
strings, never with ``null`` (a run without ``metrics.acc`` is not ``> 0.5``, and not ``<= 0.5``
either). Keywords are case-insensitive (``True``, ``NULL``, ``None`` work too).

Two evaluators share one parse: ``Expr.matches(row)`` on one dict (pure Python, used by
``runrec ls``) and ``Expr.mask(columns, n)`` on whole columns (numpy, used by the index).
Promotion criteria (``lineage/criteria.py``) parse with the same tokenizer and parser in the
``metric`` ``Dialect`` (every term a comparison, errors that say "metric") and evaluate the tree
against a run's metrics with an explanation per failed term.
"""

from __future__ import annotations

import math
import operator
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from types import ModuleType
from typing import Any

from runrec_cluster.errors import ConfigError, ExpressionError

MAX_LEN = 4000
MAX_DEPTH = 50  # levels of "(" and "not"
_OPS = ("==", "!=", "<=", ">=", "<", ">")
_ORDER = {"<": operator.lt, "<=": operator.le, ">": operator.gt, ">=": operator.ge}
_FLIPPED = {"<": ">", ">": "<", "<=": ">=", ">=": "<="}  # a < b is b > a
_KEYWORDS = {"and", "or", "not", "in", "true", "false", "null", "none"}
_NAME_START = set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ_")
_NAME_CHARS = _NAME_START | set("0123456789.-/:@")


def _numpy() -> ModuleType:  # the one lazy import of this module
    import numpy  # optional heavy dependency: numpy (runrec-cluster[query]), for Expr.mask only

    return numpy


@dataclass(frozen=True)
class Dialect:
    """What differs between the uses of the one language: the word for a name in messages
    (``column`` for ``--where``, ``metric`` for criteria), whether every term must be a
    comparison (criteria: ``val_acc`` alone is refused rather than read as ``== true``), and
    the ``ExpressionError`` subclass raised for a syntax error."""

    noun: str = "column"
    comparisons_only: bool = False
    error: type[ExpressionError] = ExpressionError


WHERE = Dialect()


# ---------------------------------------------------------------------------------------------
# Tokens
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Token:
    kind: str  # "num", "str", "name", "op", "kw", "(", ")", "[", "]", ",", "end"
    value: Any
    pos: int
    text: str


class _Tokenizer:
    """One pass over the text; each ``read_*`` consumes one token starting at ``self.i``."""

    def __init__(self, text: str, dialect: Dialect) -> None:
        self.text, self.n, self.i = text, len(text), 0
        self.d = dialect
        self.out: list[Token] = []

    def fail(self, message: str, pos: int) -> ExpressionError:
        return self.d.error(message, self.text, pos)

    def run(self) -> list[Token]:
        text = self.text
        while self.i < self.n:
            c = text[self.i]
            if c in " \t\r\n":
                self.i += 1
            elif c in "()[],":
                self.out.append(Token(c, c, self.i, c))
                self.i += 1
            elif c in "=!<>":
                self.read_op(c)
            elif c in "\"'":
                self.read_string(c)
            elif c == "`":
                self.read_backquoted()
            elif c.isdigit() or (
                c in "+-."
                and self.i + 1 < self.n
                and (text[self.i + 1].isdigit() or text[self.i + 1] == ".")
            ):
                self.read_number()
            elif c in _NAME_START:
                self.read_word()
            else:
                hint = f"quote strings, backquote odd {self.d.noun} names"
                raise self.fail(f"unexpected character {c!r} ({hint})", self.i)
        self.out.append(Token("end", None, self.n, ""))
        return self.out

    def read_op(self, c: str) -> None:
        two = self.text[self.i : self.i + 2]
        if two in _OPS:
            self.out.append(Token("op", two, self.i, two))
            self.i += 2
        elif c in "<>":
            self.out.append(Token("op", c, self.i, c))
            self.i += 1
        else:
            hint = "use == to compare" if c == "=" else "use != for 'not equal'"
            raise self.fail(f"unknown operator {c!r} ({hint})", self.i)

    def read_string(self, quote: str) -> None:
        text, start = self.text, self.i
        i = start + 1
        buf = []
        while True:
            if i >= self.n:
                raise self.fail("string not closed", start)
            ch = text[i]
            if ch == "\\" and i + 1 < self.n:
                buf.append({"n": "\n", "t": "\t"}.get(text[i + 1], text[i + 1]))
                i += 2
                continue
            i += 1
            if ch == quote:
                break
            buf.append(ch)
        self.out.append(Token("str", "".join(buf), start, text[start:i]))
        self.i = i

    def read_backquoted(self) -> None:
        start = self.i
        end = self.text.find("`", start + 1)
        if end < 0:
            raise self.fail(f"backquoted {self.d.noun} name not closed", start)
        name = self.text[start + 1 : end]
        if not name:
            raise self.fail(f"empty {self.d.noun} name", start)
        self.i = end + 1
        self.out.append(Token("name", name, start, self.text[start : self.i]))

    def read_number(self) -> None:
        text, i = self.text, self.i
        j = i + 1
        while j < self.n and (text[j].isalnum() or text[j] in ".+-_"):
            if text[j] in "+-" and text[j - 1] not in "eE":
                break
            j += 1
        raw = text[i:j]
        try:
            val: Any = int(raw.replace("_", ""))
        except ValueError:
            try:
                val = float(raw.replace("_", ""))
            except ValueError:
                raise self.fail(f"{raw!r} is not a number", i) from None
        self.out.append(Token("num", val, i, raw))
        self.i = j

    def read_word(self) -> None:
        text, i = self.text, self.i
        j = i + 1
        while j < self.n and text[j] in _NAME_CHARS:
            j += 1
        word = text[i:j]
        if word.lower() in _KEYWORDS and "." not in word:
            self.out.append(Token("kw", word.lower(), i, word))
        else:
            if word.endswith("."):
                raise self.fail(f"{self.d.noun} name {word!r} ends with '.'", j - 1)
            self.out.append(Token("name", word, i, word))
        self.i = j


def tokenize(text: str, dialect: Dialect = WHERE) -> list[Token]:
    """Tokens of ``text``, ending with an ``end`` token; ``ExpressionError`` (the dialect's) at a
    bad character."""
    if len(text) > MAX_LEN:
        raise dialect.error(f"expression longer than {MAX_LEN} characters", text[:60], 0)
    return _Tokenizer(text, dialect).run()


# ---------------------------------------------------------------------------------------------
# The tree
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Col:
    name: str


@dataclass(frozen=True)
class Lit:
    value: Any


@dataclass(frozen=True)
class Compare:
    op: str  # one of _OPS, "in", "not in"
    left: Any
    right: Any  # a node, or a tuple of literal values for "in"
    text: str = field(default="", compare=False)  # as written, for explanations (criteria)


@dataclass(frozen=True)
class BoolOp:
    op: str  # "and", "or"
    items: tuple[Any, ...]


@dataclass(frozen=True)
class Not:
    item: Any


_COMPARISON_HINT = "expected a comparison (== != < <= > >= in)"


class _Parser:
    def __init__(self, text: str, dialect: Dialect) -> None:
        self.text = text
        self.d = dialect
        self.toks = tokenize(text, dialect)
        self.i = 0
        self.depth = 0

    @property
    def tok(self) -> Token:
        return self.toks[self.i]

    def fail(self, message: str, pos: int) -> ExpressionError:
        return self.d.error(message, self.text, pos)

    def err(self, what: str, tok: Token | None = None) -> ExpressionError:
        t = tok or self.tok
        found = "the end of the expression" if t.kind == "end" else repr(t.text)
        return self.fail(f"{what}, found {found}", t.pos)

    def kw(self, word: str) -> bool:
        return self.tok.kind == "kw" and self.tok.value == word

    def deeper(self) -> None:
        self.depth += 1
        if self.depth > MAX_DEPTH:
            raise self.fail(
                f"nested too deeply: more than {MAX_DEPTH} levels of '(' and 'not'; write the "
                "too deeply nested part flatter",
                self.tok.pos,
            )

    def source(self, start: Token) -> str:
        """The text from ``start`` to the end of the last token read."""
        last = self.toks[self.i - 1]
        return self.text[start.pos : last.pos + len(last.text)]

    def parse(self) -> Any:
        if self.tok.kind == "end":
            raise self.fail("the expression is empty", 0)
        node = self.expr()
        if self.tok.kind != "end":
            raise self.fail(
                f"unexpected {self.tok.text!r}: expected 'and', 'or' or the end", self.tok.pos
            )
        return node

    def expr(self) -> Any:
        self.deeper()
        items = [self.and_expr()]
        while self.kw("or"):
            self.i += 1
            items.append(self.and_expr())
        self.depth -= 1
        return items[0] if len(items) == 1 else BoolOp("or", tuple(items))

    def and_expr(self) -> Any:
        items = [self.not_expr()]
        while self.kw("and"):
            self.i += 1
            items.append(self.not_expr())
        return items[0] if len(items) == 1 else BoolOp("and", tuple(items))

    def not_expr(self) -> Any:
        if self.kw("not"):
            self.i += 1
            self.deeper()
            node = Not(self.not_expr())
            self.depth -= 1
            return node
        return self.comparison()

    def comparison(self) -> Any:
        start = self.tok
        left = self.operand()
        t = self.tok
        if t.kind == "op":
            self.i += 1
            right = self.operand()
            if self.tok.kind == "op":
                raise self.err("chained comparisons are not supported; join two with 'and'")
            self.check_sides(left, right, start)
            return Compare(t.value, left, right, self.source(start))
        after = self.toks[self.i + 1] if self.kw("not") else None
        negate = after is not None and after.kind == "kw" and after.value == "in"
        if negate:
            self.i += 1
        if self.kw("in"):
            self.i += 1
            values = self.list_literal()
            if not isinstance(left, Col) and (isinstance(left, Lit) or self.d.comparisons_only):
                raise self.err(f"'in' needs a {self.d.noun} on its left", start)
            return Compare("not in" if negate else "in", left, values, self.source(start))
        if isinstance(left, Lit):
            if not self.d.comparisons_only and (left.value is True or left.value is False):
                return left
            raise self.err(f"{_COMPARISON_HINT} after a value", t)
        if isinstance(left, Col) and self.d.comparisons_only:
            raise self.err(f"{_COMPARISON_HINT} after {left.name!r}", t)
        return left  # a column alone (``== true``), or a parenthesized expression

    def check_sides(self, left: Any, right: Any, start: Token) -> None:
        noun = self.d.noun
        if isinstance(left, Lit) and isinstance(right, Lit):
            raise self.fail(
                f"{self.source(start)!r} compares two constants: a comparison needs a {noun} on "
                "one side",
                start.pos,
            )
        if self.d.comparisons_only and not all(isinstance(x, Col | Lit) for x in (left, right)):
            raise self.fail(
                f"{self.source(start)!r}: a comparison compares a {noun} with a value or another "
                f"{noun}, not a parenthesized expression",
                start.pos,
            )

    def operand(self) -> Any:
        t = self.tok
        if t.kind == "(":
            self.i += 1
            node = self.expr()
            if self.tok.kind != ")":
                raise self.err("missing ')': expected ')'")
            self.i += 1
            return node
        if t.kind == "name":
            self.i += 1
            return Col(t.value)
        if t.kind in ("num", "str"):
            self.i += 1
            return Lit(t.value)
        if t.kind == "kw" and t.value in ("true", "false", "null", "none"):
            self.i += 1
            return Lit({"true": True, "false": False}.get(t.value))
        raise self.err(f"expected a {self.d.noun} name or a value")

    def list_literal(self) -> tuple[Any, ...]:
        t = self.tok
        close = {"[": "]", "(": ")"}.get(t.kind)
        if close is None:
            raise self.err('expected a list like ["a", "b"] after \'in\'')
        self.i += 1
        values: list[Any] = []
        while self.tok.kind != close:
            lit = self.operand()
            if not isinstance(lit, Lit):
                raise self.err("a list after 'in' holds values only", self.toks[self.i - 1])
            values.append(lit.value)
            if self.tok.kind == ",":
                self.i += 1
            elif self.tok.kind != close:
                raise self.err(f"expected ',' or '{close}'")
        self.i += 1
        return tuple(values)


def parse_tree(text: str, dialect: Dialect = WHERE) -> Any:
    """The syntax tree of ``text`` (``Col``, ``Lit``, ``Compare``, ``BoolOp``, ``Not`` nodes);
    the dialect's ``ExpressionError`` pointing at the bad token."""
    return _Parser(text, dialect).parse()


def _columns(node: Any, out: list[str]) -> None:
    if isinstance(node, Col):
        if node.name not in out:
            out.append(node.name)
    elif isinstance(node, Compare):
        _columns(node.left, out)
        if not isinstance(node.right, tuple):
            _columns(node.right, out)
    elif isinstance(node, BoolOp):
        for x in node.items:
            _columns(x, out)
    elif isinstance(node, Not):
        _columns(node.item, out)


# ---------------------------------------------------------------------------------------------
# Value semantics (shared by both evaluators)
# ---------------------------------------------------------------------------------------------


def _null(v: Any) -> bool:
    return v is None or (isinstance(v, float) and math.isnan(v))


def _num(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def compare(op: str, a: Any, b: Any) -> bool:
    """One comparison under the language's rules (see the module docstring)."""
    if op in ("==", "!="):
        if _null(a) or _null(b):
            eq = _null(a) and _null(b)
        elif isinstance(a, bool) or isinstance(b, bool):
            eq = a is b or (isinstance(a, bool) and isinstance(b, bool) and a == b)
        else:
            try:
                eq = bool(a == b)
            except Exception:
                eq = False
        return eq if op == "==" else not eq
    if _null(a) or _null(b):
        return False
    if not ((_num(a) and _num(b)) or (isinstance(a, str) and isinstance(b, str))):
        return False
    return bool(_ORDER[op](a, b))


def is_in(a: Any, values: tuple[Any, ...]) -> bool:
    """``a in [values]`` under the language's ``==``."""
    return any(compare("==", a, v) for v in values)


class Expr:
    """A parsed expression. ``columns`` lists the column names it reads, in order."""

    def __init__(self, text: str) -> None:
        self.text = text
        self.root = parse_tree(text)
        cols: list[str] = []
        _columns(self.root, cols)
        self.columns: tuple[str, ...] = tuple(cols)

    def __repr__(self) -> str:
        return f"Expr({self.text!r})"

    # -- one row -------------------------------------------------------------------------------

    def matches(self, row: Mapping[str, Any]) -> bool:
        return self._truth(self.root, row)  # a column alone means ``column == true``

    def _row(self, node: Any, row: Mapping[str, Any]) -> Any:
        if isinstance(node, Col):
            return row.get(node.name)
        if isinstance(node, Lit):
            return node.value
        if isinstance(node, BoolOp):
            if node.op == "and":
                return all(self._truth(x, row) for x in node.items)
            return any(self._truth(x, row) for x in node.items)
        if isinstance(node, Not):
            return not self._truth(node.item, row)
        if node.op == "in":
            return is_in(self._row(node.left, row), node.right)
        if node.op == "not in":
            return not is_in(self._row(node.left, row), node.right)
        return compare(node.op, self._row(node.left, row), self._row(node.right, row))

    def _truth(self, node: Any, row: Mapping[str, Any]) -> bool:
        v = self._row(node, row)
        return v is True if isinstance(node, Col | Lit) else bool(v)

    # -- whole columns -------------------------------------------------------------------------

    def mask(self, get: Callable[[str], Sequence[Any]], n: int) -> Any:
        """A numpy bool array of length ``n``: which rows match. ``get(name)`` returns a
        column as a numpy array (float64 with NaN for missing numbers, or object)."""
        np = _numpy()
        # a literal alone (``true``) evaluates to one bool: one per row
        return np.broadcast_to(np.asarray(self._cols(self.root, get, n), dtype=bool), (n,)).copy()

    def _cols(self, node: Any, get: Callable[[str], Any], n: int) -> Any:
        np = _numpy()
        if isinstance(node, Col | Lit):
            v = self._vals(node, get, n)
            return v is True if not isinstance(v, np.ndarray) else _is_true(v)
        if isinstance(node, BoolOp):
            out = self._cols(node.items[0], get, n)
            for x in node.items[1:]:
                nxt = self._cols(x, get, n)
                out = (out & nxt) if node.op == "and" else (out | nxt)
            return np.broadcast_to(np.asarray(out, dtype=bool), (n,))
        if isinstance(node, Not):
            return ~np.broadcast_to(np.asarray(self._cols(node.item, get, n), dtype=bool), (n,))
        left = self._vals(node.left, get, n)
        if node.op in ("in", "not in"):
            hit = np.zeros(n, dtype=bool)
            for v in node.right:
                hit |= _cmp_arrays("==", left, v, n)
            return ~hit if node.op == "not in" else hit
        return _cmp_arrays(node.op, left, self._vals(node.right, get, n), n)

    def _vals(self, node: Any, get: Callable[[str], Any], n: int) -> Any:
        if isinstance(node, Col):
            return get(node.name)
        if isinstance(node, Lit):
            return node.value
        return self._cols(node, get, n)


def _is_true(arr: Any) -> Any:
    np = _numpy()
    if arr.dtype == bool:
        return arr
    if arr.dtype == object:
        return np.fromiter((v is True for v in arr), dtype=bool, count=len(arr))
    return np.zeros(len(arr), dtype=bool)


def _cmp_arrays(op: str, a: Any, b: Any, n: int) -> Any:
    """Vectorized ``compare``: numpy for numbers, element by element otherwise."""
    np = _numpy()
    a_arr, b_arr = isinstance(a, np.ndarray), isinstance(b, np.ndarray)
    if (a_arr and _wide_int(b)) or (b_arr and _wide_int(a)):
        # an integer float64 cannot hold exactly (or at all: 1e400 as digits): compare the
        # Python values one by one, exactly as the row evaluator does
        av = a.tolist() if a_arr else [a] * n
        bv = b.tolist() if b_arr else [b] * n
        return np.fromiter((compare(op, x, y) for x, y in zip(av, bv, strict=True)), bool, n)
    a_num = a.dtype.kind in "iuf" if a_arr else _num(a)
    b_num = b.dtype.kind in "iuf" if b_arr else _num(b)
    if a_num and b_num:
        with np.errstate(invalid="ignore"):
            if op in ("==", "!="):
                # two missing values (NaN) are equal, as null == null
                na = np.isnan(a) if a_arr and a.dtype.kind == "f" else np.bool_(False)
                nb = np.isnan(b) if b_arr and b.dtype.kind == "f" else np.bool_(False)
                out = (a == b) | (na & nb)
                if op == "!=":
                    out = ~out
            else:
                out = _ORDER[op](a, b)
        return np.broadcast_to(np.asarray(out, dtype=bool), (n,))
    if a_arr and not b_arr and a.dtype.kind in "iuf" and _null(b) and op in ("==", "!="):
        out = np.isnan(a) if a.dtype.kind == "f" else np.zeros(n, dtype=bool)
        return out if op == "==" else ~out
    if a_arr and a.dtype.kind in "iuf" and not b_arr:
        return np.full(n, op == "!=", dtype=bool)  # a number column against a string/bool
    if b_arr and b.dtype.kind in "iuf" and not a_arr:
        return _cmp_arrays(_flip(op), b, a, n)
    # tolist(): Python values (a bool column's np.True_ is not ``True``)
    av = a.tolist() if a_arr else [a] * n
    bv = b.tolist() if b_arr else [b] * n
    return np.fromiter((compare(op, x, y) for x, y in zip(av, bv, strict=True)), bool, count=n)


def _wide_int(v: Any) -> bool:
    """An int beyond float64's exact range (2**53)."""
    return isinstance(v, int) and not isinstance(v, bool) and abs(v) > 2**53


def _flip(op: str) -> str:
    return _FLIPPED.get(op, op)


def parse(text: str) -> Expr:
    """Parse an expression; ``ExpressionError`` (a ``ConfigError``) points at the bad token."""
    if not isinstance(text, str):
        raise ConfigError(f"a query expression is text, not {type(text).__name__}.")
    return Expr(text)
