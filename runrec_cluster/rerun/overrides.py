"""A rerun's config: ``--set key=value`` overrides checked against the recorded config and coerced
to the recorded type (``check_overrides``, ``coerce``), applied to a function's arguments
(``apply_overrides``, in the job) or a command line (``rewrite_argv``), the generated values
a rerun pins (``rerun_config``), and the values a run's call or command line withheld from the
store, given again (``withheld_values``)."""

from __future__ import annotations

import inspect
import json
import re
from collections.abc import Callable, Mapping
from typing import Any

from runrec_cluster.capture import withhold
from runrec_cluster.capture.config import plain
from runrec_cluster.errors import RerunError
from runrec_cluster.record import ConfigEntry, Difference, RunRecord

_ARGN = re.compile(r"^arg(\d+)$")
_TRUE = {"true", "1", "yes", "on"}
_FALSE = {"false", "0", "no", "off"}


def apply_overrides(
    fn: Callable[..., Any],
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
    overrides: Mapping[str, Any],
) -> tuple[tuple[Any, ...], dict[str, Any]]:
    """The call's arguments with ``overrides`` (config key -> value) applied."""
    if not overrides:
        return args, kwargs
    try:
        sig = inspect.signature(fn)
    except (TypeError, ValueError):
        sig = None
    if sig is None:  # the config keys were arg0, arg1, ... and the keyword names
        pos = list(args)
        for k, v in overrides.items():
            m = _ARGN.match(k)
            if m and int(m.group(1)) < len(pos):
                pos[int(m.group(1))] = v
            else:
                kwargs[k] = v
        return tuple(pos), kwargs
    bound = sig.bind(*args, **kwargs)
    varkw = next(
        (p.name for p in sig.parameters.values() if p.kind is inspect.Parameter.VAR_KEYWORD), None
    )
    for k, v in overrides.items():
        p = sig.parameters.get(k)
        if p is not None and p.kind is not inspect.Parameter.VAR_KEYWORD:
            bound.arguments[k] = tuple(v) if p.kind is inspect.Parameter.VAR_POSITIONAL else v
        elif varkw is not None:
            extra = dict(bound.arguments.get(varkw, {}))
            extra[k] = v
            bound.arguments[varkw] = extra
        else:
            raise RerunError(
                f"rerun override {k!r} is not a parameter of {fn!r}{sig}: the function the "
                "rerun calls no longer takes it. Rerun without --set "
                f"{k}=..., or with code whose function has that parameter."
            )
    return tuple(bound.args), dict(bound.kwargs)


def coerce(key: str, raw: Any, recorded: Any) -> Any:
    """``raw`` (a ``--set`` string) as the type of the recorded value."""
    if not isinstance(raw, str):
        return raw
    kind = type(recorded).__name__
    try:
        if isinstance(recorded, bool):
            if raw.lower() in _TRUE | _FALSE:
                return raw.lower() in _TRUE
            raise ValueError(raw)
        if isinstance(recorded, int):
            return int(raw)
        if isinstance(recorded, float):
            return float(raw)
    except ValueError:
        raise RerunError(
            f"--set {key}={raw!r}: the recorded value {recorded!r} is a {kind}, and {raw!r} is "
            f"not one. Give a {kind} (e.g. --set {key}={recorded!r})."
        ) from None
    if isinstance(recorded, str):
        return raw
    try:  # None, lists, dicts: JSON; a bare word stays a string
        return json.loads(raw)
    except ValueError:
        return raw


def check_overrides(rec: RunRecord, overrides: Mapping[str, Any]) -> dict[str, Any]:
    """Typed overrides for ``rec``; RerunError naming the known keys for an unknown one."""
    bad = [k for k in overrides if k not in rec.config]
    if bad:
        known = ", ".join(sorted(rec.config)) or "none: it recorded no config"
        raise RerunError(
            f"cannot rerun {rec.run_id} with {', '.join(f'--set {k}=...' for k in sorted(bad))}: "
            f"not a config key of the run (its keys: {known})."
        )
    return {k: coerce(k, v, rec.config[k].value) for k, v in overrides.items()}


def rerun_config(
    rec: RunRecord, typed: Mapping[str, Any]
) -> tuple[dict[str, ConfigEntry], dict[str, Any], dict[str, Any], list[Difference]]:
    """The rerun's config from ``rec``'s and the ``typed`` overrides (``check_overrides``):
    (the config entries, the pinned generated values, the overrides of the call's arguments,
    the intended differences). An overridden default becomes ``given``; a generated key is
    pinned (``run.log_config`` returns it) instead of changing the call."""
    config: dict[str, ConfigEntry] = {}
    pinned: dict[str, Any] = {}
    call_ov: dict[str, Any] = {}
    diffs: list[Difference] = []
    for k, e in rec.config.items():
        if k in typed:
            v = plain(k, typed[k])
            src = e.source if e.source == "generated" else "given"  # an override is given
            config[k] = ConfigEntry(value=v, source=src)
            diffs.append(Difference(what=f"config.{k}", before=e.value, after=v))
            if e.source != "generated":
                call_ov[k] = typed[k]
        else:
            config[k] = e
        if e.source == "generated":
            pinned[k] = config[k].value
    return config, pinned, call_ov, diffs


def _argv_text(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (list, dict)) or v is None:
        return json.dumps(v)
    return str(v)


def rewrite_argv(argv: list[str], overrides: Mapping[str, Any]) -> list[str]:
    """A command line with ``--key value`` / ``--key=value`` / ``--flag`` set to the overrides
    (as ``capture.config.command_config`` reads them); a key not on the command line (an
    argparse default the job recorded, job/argparse_capture.py) is added at its end."""
    out = list(argv)
    for key, val in overrides.items():
        i = 0
        while i < len(out):
            a = out[i]
            if a == f"--{key}":
                has_value = i + 1 < len(out) and not out[i + 1].startswith("--")
                if has_value:
                    out[i + 1] = _argv_text(val)
                elif val is False:
                    del out[i]
                elif val is not True:
                    out.insert(i + 1, _argv_text(val))
                break
            if a.startswith(f"--{key}="):
                out[i] = f"--{key}={_argv_text(val)}"
                break
            i += 1
        else:  # not on the command line
            if val is True:
                out.append(f"--{key}")
            elif val is not False:
                out += [f"--{key}", _argv_text(val)]
    return out


def argv_keys(argv: list[str]) -> dict[int, str]:
    """Which command line items a ``--set KEY`` rewrites (``rewrite_argv``): index -> KEY, for
    the value of the first ``--KEY VALUE`` and the first ``--KEY=VALUE`` item of each key, read
    as ``capture.config.command_config`` reads them."""
    out: dict[int, str] = {}
    seen: set[str] = set()
    i = 0
    while i < len(argv):
        a = argv[i]
        if a.startswith("--") and len(a) > 2:
            key, eq, _ = a[2:].partition("=")
            first = key not in seen
            seen.add(key)
            if eq:
                if first:
                    out[i] = key
            elif i + 1 < len(argv) and not argv[i + 1].startswith("--"):
                if first:
                    out[i + 1] = key
                i += 1
        i += 1
    return out


def withheld_values(
    rec: RunRecord, overrides: Mapping[str, Any], environ: Mapping[str, str]
) -> tuple[dict[str, Any], list[str]]:
    """The values a rerun of ``rec`` gives back for what its call or command line withheld from
    the store (``Entrypoint.withheld``): a ``--set`` of the path's config key replaces the whole
    argument (the placeholder then stands for nothing: None), else ``$RUNREC_SECRET_<PATH>``
    (for a command line item ``argv[i]``: ``$RUNREC_SECRET_ARGV_<i>``, the whole item; the
    ``--set`` of the option it belongs to, when it is the first of that option). Returns (path
    -> value, one note per path saying where it came from); RerunError naming every missing one
    and the ways to give it. Never reruns with a placeholder."""
    ep = rec.entrypoint
    if ep is None or not ep.withheld:
        return {}, []
    command = ep.kind == "command"
    keys = argv_keys(list(ep.argv)) if command else {}
    values: dict[str, Any] = {}
    notes: list[str] = []
    missing: list[str] = []
    for path in ep.withheld:
        var = withhold.env_var(path)
        i: int | None = None
        key: str | None = withhold.top_key(path)
        if path.removeprefix(withhold.SET_PREFIX) in rec.config:  # a config key itself (Hydra)
            key = path.removeprefix(withhold.SET_PREFIX)
        if command:  # a command line item: the option it is the first value of, if any
            i = withhold.argv_index(path)
            key = keys.get(i) if i is not None else None
        if key is not None and key in overrides:
            values[path] = None
            notes.append(f"{path} from --set {key}")
        elif var in environ:
            values[path] = environ[var]
            notes.append(f"{path} from ${var}")
        elif command:
            shown = ep.argv[i] if i is not None and i < len(ep.argv) else "?"
            by_set = f"--set {key}=VALUE or " if key is not None else ""
            missing.append(f"{path} ({shown}): {by_set}${var} (the whole argument)")
        else:
            whole = "" if key == path.removeprefix(withhold.SET_PREFIX) else " (the whole value)"
            missing.append(f"{path}: --set {key}=VALUE{whole} or ${var}")
    if missing:
        what = "command line" if command else "call"
        raise RerunError(
            f"cannot rerun {rec.run_id}: its {what} held values that were kept out of the store "
            f"(secrets) and are gone with its run; give each again: {'; '.join(missing)}. "
            "Nothing was submitted."
        )
    return values, notes
