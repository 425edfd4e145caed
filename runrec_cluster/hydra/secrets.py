"""Secrets given as Hydra overrides, kept out of the store (docs/adopting.md, "Secrets").

A job's call holds its Hydra job pickled (``job.HydraJob``): without care, an override such as
``db.password=hunter2`` would sit in it as text, in the multirun's config (``hydra.overrides``,
``override_dirname``, the value itself) and in Hydra's singletons. So the launcher:

- splits every override of a job (``hydra.overrides.hydra`` and the job's own) with the
  redaction rules of the config view (``split``): a value override whose key the rules name
  (``password``, ``token``...) or whose value holds a credential's shape or a URL with a
  password is replaced, in the pickled job, by a placeholder line, and its value text (as
  written after ``=``) becomes a keyword argument of ``run_hydra_job`` named by its key;
- pickles no config that holds the values: the job carries the multirun's config name, its
  resolver cache (``${now:...}``) and the overrides, never the composed multirun config, and
  Hydra's singletons without ``HydraConfig`` (``node_singletons``);
- lets runrec's own withholding (``capture.withhold``) keep those keyword arguments out of the
  pickled call: the values wait in the owner-only secrets file, the record names the keys
  (``entrypoint.withheld``), and a rerun asks for them again (``--set KEY=VALUE`` or
  ``$RUNREC_SECRET_<KEY>``), as for any function run;
- checks, before anything is written, that neither the pickled job nor the call holds a value
  it withheld (``check_kept_out``): a ``ConfigError`` naming the override, never a leak.

On the node, ``fill`` puts the values back where they were, so Hydra composes exactly the
overrides the user typed.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from hydra.core.hydra_config import HydraConfig
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.singleton import Singleton

from runrec_cluster.capture import withhold
from runrec_cluster.capture.redact import Rules, flags, redact_value
from runrec_cluster.errors import ConfigError, SecretsUnavailable

PLACEHOLDER = "<withheld from the store>"


def split(
    overrides: list[str], choices: Mapping[str, Any], rules: Rules
) -> tuple[list[str], dict[int, tuple[str, str]], dict[str, str]]:
    """``(safe, withheld, values)`` for a job's overrides: ``safe`` is ``overrides`` with each
    secret line replaced by ``<head>`` + ``PLACEHOLDER``; ``withheld`` maps its index to (its
    head, e.g. ``+db.password=``, and the keyword it travels under); ``values`` maps each
    keyword to the value text. Group choices (``db=prod``) and deletions are never secret."""
    parsed = OverridesParser.create().parse_overrides(list(overrides))
    safe = list(overrides)
    withheld: dict[int, tuple[str, str]] = {}
    values: dict[str, str] = {}
    for i, o in enumerate(parsed):
        key = o.key_or_group
        if o.is_delete() or o.package is not None or key in choices:
            continue
        line = o.input_line or overrides[i]
        head, _, text = line.partition("=")
        if not _secret(key, text, o, rules):
            continue
        name = key if key not in values else f"{key}#{i}"
        withheld[i] = (head + "=", name)
        values[name] = text
        safe[i] = head + "=" + PLACEHOLDER
    return safe, withheld, values


def _secret(key: str, text: str, o: Any, rules: Rules) -> bool:
    if flags(key, text, rules):
        return True
    try:
        value = o.value()
    except Exception:  # noqa: BLE001 (a value Hydra cannot evaluate here): the text decides
        return False
    return redact_value(key, value, rules) != value


def fill(
    safe: list[str], withheld: Mapping[int, tuple[str, str]], values: Mapping[str, Any]
) -> list[str]:
    """The overrides as the user gave them: each withheld line rebuilt from ``values``
    (keyword -> value text). ``SecretsUnavailable`` naming a missing one."""
    out = list(safe)
    for i, (head, name) in withheld.items():
        v = values.get(name)
        if v is None:
            raise SecretsUnavailable(
                f"the Hydra override {head}... was kept out of the store and the job was not "
                f"given its value. Rerun with --set {name}=VALUE or "
                f"${withhold.env_var(name)}."
            )
        out[i] = head + str(v)
    return out


def node_singletons() -> dict[str, Any]:
    """Hydra's singletons for the node (``Singleton.get_state()``, a deep copy) without
    ``HydraConfig``, which holds the whole multirun config (the job sets its own)."""
    state = Singleton.get_state()
    state["instances"].pop(HydraConfig, None)
    return state


def check_kept_out(what: str, blob: bytes, values: Mapping[str, str]) -> None:
    """ConfigError when ``blob`` (a pickled job) holds a withheld value (of 6 characters or
    more: a shorter one could match by chance), or when runrec's withholding would not take
    one of ``values`` (the keyword arguments of the call): nothing is written."""
    for name, text in values.items():
        needles = {n for n in (text, text.strip("'\"")) if len(n) >= 6}
        if any(n.encode() in blob for n in needles):
            raise ConfigError(
                f"the Hydra override of {name} holds a secret (by runrec's redaction rules) "
                f"that the launcher could not keep out of {what}; nothing was submitted. Pass it "
                "through an environment variable read by the task (oc.env), or report this."
            )
    kw = withhold.withhold_call(_kwargs_only, (), dict(values))[1]
    loose = [k for k, v in kw.items() if not isinstance(v, withhold.Withheld)]
    if loose:
        raise ConfigError(
            f"the Hydra override(s) of {', '.join(loose)} look secret but would not be withheld "
            "from the store; nothing was submitted. Pass them through environment variables "
            "read by the task (oc.env)."
        )


def _kwargs_only(**values: Any) -> None:
    """A stand-in with ``run_hydra_job``'s keyword arguments, for ``check_kept_out``."""
