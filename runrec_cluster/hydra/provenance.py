"""A Hydra job's composed config as runrec config entries, with provenance per key, and the config
files it was composed from.

Hydra says where each value comes from; this module asks it, it does not guess:

- the **defaults list** (``ConfigLoader.compute_defaults_list``): the configs merged, in merge
  order, each with its package and its source (``file://`` search path, ``pkg://``,
  ``structured://``). The last config that sets a key is where the key comes from.
- ``hydra.runtime.choices``: which defaults-list entries are config group choices
  (``model: small``, on the command line or in a defaults list).
- ``hydra.overrides.task``: the command-line overrides of this job (sweep values included), parsed
  with Hydra's own override parser. A value override (``lr=0.1``, ``+extra=1``) makes its key,
  and every key under it, ``given``.

Sources recorded (``ConfigEntry.source``; docs/config.md):

``given``                      a command-line override (``hydra.overrides.task``)
``group:<group>=<option>``     the config group option chosen (``group:model=small``)
``file:<absolute path>``       a named config file: the primary config, or a non-group default
``pkg:<module>/<path>``        a config file shipped in a Python package (``pkg://`` search path)
``structured:<name>``          a structured config from Hydra's ConfigStore
``default``                    none of these (a value Hydra added)
"""

from __future__ import annotations

import copy
import os
from collections.abc import Mapping
from typing import Any

from hydra.core.hydra_config import HydraConfig
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf, open_dict, read_write

from runrec_cluster.capture import config as cfg
from runrec_cluster.capture.redact import active_rules
from runrec_cluster.record import ConfigEntry


def task_config(sweep_config: DictConfig) -> DictConfig:
    """The task's config (what the task function receives): the job's config without ``hydra``."""
    task = copy.deepcopy(sweep_config)
    with read_write(task), open_dict(task):
        del task["hydra"]
    return task


def flat_values(task: DictConfig) -> dict[str, Any]:
    """The task config's keys, dotted, with values resolved where they resolve (an interpolation
    that cannot be resolved at launch, such as ``${hydra:runtime.output_dir}``, keeps its text)."""
    raw = OmegaConf.to_container(task, resolve=False)
    out: dict[str, Any] = {}
    for key, val in flatten(raw).items():
        if isinstance(val, str) and "${" in val:
            try:
                val = OmegaConf.to_container(
                    OmegaConf.create({"v": OmegaConf.select(task, key, throw_on_missing=False)}),
                    resolve=True,
                )["v"]
            except Exception:  # noqa: BLE001 (any resolver error): the text is what we know
                pass
        out[key] = val
    return out


def flatten(value: Any, prefix: str = "") -> dict[str, Any]:
    """Nested mappings as dotted keys; an empty mapping and every other value is a leaf."""
    if not isinstance(value, Mapping) or not value:
        return {prefix.rstrip("."): value} if prefix else {}
    out: dict[str, Any] = {}
    for k, v in value.items():
        out.update(flatten(v, f"{prefix}{k}."))
    return out


def _where(result: Any, config_path: str) -> tuple[str, str | None]:
    """(source, file path or None) of a loaded config: its search path's scheme and place."""
    scheme, _, base = str(result.path).partition("://")
    name = config_path if config_path.endswith((".yaml", ".yml")) else config_path + ".yaml"
    if scheme == "file":
        path = os.path.realpath(os.path.join(base, name))
        return f"file:{path}", path
    if scheme == "pkg":
        return f"pkg:{base}/{name}", None
    return f"structured:{config_path}", None


def _is_hydra(package: str | None, config_path: str) -> bool:
    pkg = package or ""
    return pkg == "hydra" or pkg.startswith("hydra.") or config_path.startswith("hydra/")


def key_sources(
    loader: Any, sweep_config: DictConfig, overrides: list[str]
) -> tuple[dict[str, str], list[str]]:
    """Per dotted key, the source that set it last (defaults list, then the task's value
    overrides), and the config files (absolute paths, merge order) the job was composed from."""
    dl = loader.compute_defaults_list(
        sweep_config.hydra.job.config_name, list(overrides), RunMode.RUN
    )
    choices = OmegaConf.to_container(sweep_config.hydra.runtime.choices)
    assert isinstance(choices, dict)
    sources: dict[str, str] = {}
    files: list[str] = []
    for d in dl.defaults:
        if d.config_path is None or _is_hydra(d.package, d.config_path):
            continue
        loaded = loader.repository.load_config(d.config_path)
        if loaded is None or not OmegaConf.is_dict(loaded.config):
            continue
        source, path = _where(loaded, d.config_path)
        if path is not None and path not in files:
            files.append(path)
        group = d.override_key or os.path.dirname(d.config_path)
        option = choices.get(group) if group else None
        if not d.primary and option is not None and d.config_path.endswith(f"/{option}"):
            source = f"group:{group}={option}"
        content = OmegaConf.to_container(loaded.config, resolve=False)
        assert isinstance(content, dict)
        content.pop("defaults", None)
        if d.primary:
            content.pop("hydra", None)
        prefix = f"{d.package}." if d.package else ""
        for key in flatten(content, prefix):
            sources[key] = source
    parsed = OverridesParser.create().parse_overrides(
        [str(o) for o in sweep_config.hydra.overrides.task]
    )
    for o in parsed:
        if o.is_delete() or o.package is not None or o.key_or_group in choices:
            continue  # a deletion, or a group choice: the group's source covers its keys
        key = o.key_or_group
        for k in list(sources):
            if k == key or k.startswith(key + "."):
                del sources[k]
        sources[key] = "given"
    return sources, files


def source_of(key: str, sources: Mapping[str, str]) -> str:
    """The source of ``key``: its own, else the nearest table above it that a source set."""
    k = key
    while True:
        if k in sources:
            return sources[k]
        if "." not in k:
            return "default"
        k = k.rsplit(".", 1)[0]


def job_config(
    loader: Any, sweep_config: DictConfig, overrides: list[str]
) -> tuple[dict[str, ConfigEntry], list[str]]:
    """A job's config entries (dotted keys of the task config, values resolved and redacted,
    sources as in the module docstring) and its config files. ``overrides``: everything the job
    was composed with (``hydra.overrides.hydra`` + the job's sweep overrides)."""
    previous = HydraConfig.instance().cfg
    # ${hydra:...} resolves as in the job (set_config makes its argument's hydra node read-only)
    HydraConfig.instance().set_config(copy.deepcopy(sweep_config))
    try:
        values = flat_values(task_config(sweep_config))
    finally:
        HydraConfig.instance().cfg = previous
    sources, files = key_sources(loader, sweep_config, overrides)
    rules = active_rules()
    entries = {
        k: ConfigEntry(value=cfg.plain(k, v, rules), source=source_of(k, sources))
        for k, v in values.items()
    }
    return entries, files
