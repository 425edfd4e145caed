"""The effective config: bound arguments with defaults applied, plus generated values.

Every key carries its provenance: ``default`` (from the signature), ``given`` (passed at
submit, or on the command line), ``generated`` (logged inside the job with ``run.log_config``);
``file:<path>`` / ``env:<NAME>`` come from ``config_sources`` and ``argv`` from the job's
argparse capture (``job/argparse_capture.py``); docs/config.md has them all.
A value that cannot be stored is refused at submit, naming the key, before anything runs.
"""

from __future__ import annotations

import inspect
import os
from collections.abc import Callable, Mapping
from datetime import date, datetime
from typing import Any

import msgspec

from runrec_cluster.capture.redact import Rules, active_rules, redact_value
from runrec_cluster.errors import ConfigError
from runrec_cluster.record import ConfigEntry


def _hook(obj: Any) -> Any:
    if isinstance(obj, os.PathLike):
        return os.fspath(obj)
    item = getattr(obj, "item", None)  # numpy scalars
    if callable(item) and getattr(obj, "shape", None) == ():
        return item()
    raise NotImplementedError


def plain(key: str, value: Any, rules: Any = None) -> Any:
    """A storable (msgpack) form of a config value, or ConfigError naming the key. ``rules``:
    the redaction rules, when the caller has them already (``entries`` looks them up once)."""
    try:
        t = type(value)
        if value is None or t is bool or t is float or (t is int and -(2**63) <= value < 2**64):
            out = value  # the common case, already plain
        elif t is str:
            value.encode()  # a lone surrogate cannot be stored
            out = value
        else:
            out = msgspec.to_builtins(value, builtin_types=(datetime, date), enc_hook=_hook)
            msgspec.msgpack.encode(out)
    except (
        TypeError,
        NotImplementedError,
        msgspec.EncodeError,
        OverflowError,
        UnicodeEncodeError,  # a lone surrogate: a path made of bytes that are not UTF-8
    ) as exc:
        raise ConfigError(
            f"config value {key!r} of type {type(value).__name__} cannot be recorded ({exc}). "
            "Pass plain values (numbers, strings, booleans, lists, dicts, paths), or build the "
            "object inside the job and record its settings with run.log_config()."
        ) from None
    return redact_value(key, out, rules)


_INT_MIN, _INT_END = -(2**63), 2**64  # the ints msgpack stores


def entries(
    values: Mapping[str, Any], source: str, rules: Rules | None = None
) -> dict[str, ConfigEntry]:
    """``{key: ConfigEntry(value=plain(key, value), source=source)}``. ``rules``: the
    redaction rules, when the caller has them already (else looked up once for all)."""
    r = rules or active_rules()
    kinds = r.kinds
    out = {}
    for k, v in values.items():
        if not isinstance(k, str):
            raise ConfigError(f"config key {k!r} is not a string; use string keys.")
        t = type(v)
        # what plain() does, inline for the common values: a number, boolean or None under a
        # name that is no secret is stored as it is; a string under such a name is redacted
        # text (remembered per text: Rules.text); anything else goes through plain()
        if kinds[k] is not None:
            value = plain(k, v, r)
        elif v is None or t is bool or t is float or (t is int and _INT_MIN <= v < _INT_END):
            value = v
        elif t is str and v.isascii():  # ASCII: no lone surrogate, storable as it is
            value = r.text(v)
        else:
            value = plain(k, v, r)
        out[k] = ConfigEntry(value=value, source=source)
    return out


def function_config(
    fn: Callable[..., Any], args: tuple[Any, ...], kwargs: Mapping[str, Any]
) -> dict[str, ConfigEntry]:
    try:
        sig = inspect.signature(fn)
    except (TypeError, ValueError):
        return entries({f"arg{i}": a for i, a in enumerate(args)} | dict(kwargs), "given")
    try:
        bound = sig.bind(*args, **kwargs)
    except TypeError as exc:
        name = getattr(fn, "__qualname__", repr(fn))
        raise ConfigError(
            f"the arguments do not match {name}{sig}: {exc}. Fix the call to submit()/map_array()."
        ) from None
    rules = active_rules()  # once for every parameter
    out: dict[str, ConfigEntry] = {}
    for pname, param in sig.parameters.items():
        if pname in bound.arguments:
            value = bound.arguments[pname]
            if param.kind is inspect.Parameter.VAR_KEYWORD:
                out.update(entries(value, "given", rules))
            else:
                out.update(
                    entries(
                        {
                            pname: list(value)
                            if param.kind is inspect.Parameter.VAR_POSITIONAL
                            else value
                        },
                        "given",
                        rules,
                    )
                )
        elif param.default is not inspect.Parameter.empty:
            out.update(entries({pname: param.default}, "default", rules))
    return out


def parse_scalar(s: str) -> Any:
    """A command-line string as int, float or bool when it is one, else the string."""
    for conv in (int, float):
        try:
            return conv(s)
        except ValueError:
            pass
    if s.lower() in ("true", "false"):
        return s.lower() == "true"
    return s


def command_config(argv: list[str]) -> dict[str, ConfigEntry]:
    """``--key value`` and ``--key=value`` pairs of a command line, as given config."""
    values: dict[str, Any] = {}
    i = 0
    while i < len(argv):
        a = argv[i]
        if a.startswith("--") and len(a) > 2:
            key, eq, val = a[2:].partition("=")
            if eq:
                values[key] = parse_scalar(val)
            elif i + 1 < len(argv) and not argv[i + 1].startswith("--"):
                values[key] = parse_scalar(argv[i + 1])
                i += 1
            else:
                values[key] = True
        i += 1
    return entries(values, "given")
