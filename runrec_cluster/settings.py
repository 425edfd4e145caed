"""The one reader of runrec's settings: ``[tool.runrec]`` in ``pyproject.toml``, ``runrec.toml``
and the ``RUNREC_*`` variables, for the store location, hardware classes, redaction rules, the
directory of withheld secrets and the size limit of kept artifact copies.

The rules, the same for every setting:

- **Which files.** Walking up from a start directory (the current one, or the Executor's
  ``cwd``), the nearest directory holding a ``runrec.toml`` or a ``pyproject.toml`` decides:
  its files are read, nothing above it. The walk goes up to the file system's root.
- **Which tables.** In ``pyproject.toml`` a setting lives under ``[tool.runrec]``
  (``[tool.runrec.hardware.a100]``, ``[tool.runrec] store = "..."``); in ``runrec.toml`` it may
  also be written without the prefix (``[hardware.a100]``, ``store = "..."``).
- **Precedence.** ``runrec.toml`` wins over ``pyproject.toml`` where both set the same thing (a
  hardware class of the same name, ``store``); redaction rules of both files add up. An
  environment variable wins over both files (``RUNREC_STORE``), or adds to them
  (``RUNREC_REDACT_*``).
- **Errors.** A file that is not valid TOML, a table that is not a table, a value of the wrong
  type: ``ConfigError`` naming the file (or the variable) and what to fix. A broken file is
  never skipped silently, also when only the store location is looked up: a ``store = ...`` it
  may hold must not be replaced by ``./runrec-store`` without a word.

Lowest layer: imports only ``runrec_cluster.errors`` and the standard library.
"""

from __future__ import annotations

import json
import os
import tomllib
from collections.abc import Mapping
from typing import Any

from runrec_cluster.errors import ConfigError

CONFIG_FILES = ("runrec.toml", "pyproject.toml")  # in precedence order: runrec.toml wins
STORE_VAR = "RUNREC_STORE"
REDACT_KEYS = ("secret_names", "secret_values", "not_secret")
# the variable of each redaction key; not_secret also takes comma-separated names
REDACT_VARS = {
    "secret_names": "RUNREC_REDACT_NAMES",
    "secret_values": "RUNREC_REDACT_VALUES",
    "not_secret": "RUNREC_REDACT_NOT_SECRET",
}


# -- the files ----------------------------------------------------------------------------------


def find_config_files(start: str) -> list[str]:
    """runrec.toml and pyproject.toml (in that order: precedence) of the nearest directory,
    walking up from ``start``, that has either; [] when none has."""
    d = os.path.abspath(start)
    while True:
        found = [os.path.join(d, n) for n in CONFIG_FILES if os.path.isfile(os.path.join(d, n))]
        if found:
            return found
        parent = os.path.dirname(d)
        if parent == d:
            return []
        d = parent


def config_section(path: str, key: str, what: str) -> Any:
    """``[tool.runrec.<key>]`` of a pyproject.toml, or ``[<key>]`` of a runrec.toml (None when
    absent or the file is gone); ConfigError naming the file when it is not valid TOML."""
    try:
        with open(path, "rb") as f:
            data = tomllib.load(f)
    except FileNotFoundError:
        return None
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError(f"cannot read {what} from {path}: {exc}. Fix the TOML.") from exc
    t = data.get("tool", {}).get("runrec", {}).get(key)
    if t is None and os.path.basename(path) == "runrec.toml":
        t = data.get(key)
    return t


def config_tables(start: str, key: str, what: str) -> list[tuple[str, dict[str, Any]]]:
    """(file, table) of every config file of ``start`` that has the ``key`` table, runrec.toml
    first; ConfigError when the setting is there but is not a table."""
    out: list[tuple[str, dict[str, Any]]] = []
    for path in find_config_files(start):
        t = config_section(path, key, what)
        if t is None:
            continue
        if not isinstance(t, dict):
            raise ConfigError(f"[tool.runrec.{key}] in {path} must be a table.")
        out.append((path, t))
    return out


def string_list(items: Any, where: str, what: str) -> list[str]:
    """``items`` as a list of non-empty strings (one string is a list of one)."""
    if isinstance(items, str):
        items = [items]
    if not isinstance(items, list) or not all(isinstance(i, str) and i for i in items):
        raise ConfigError(f"{what} in {where} must be a list of non-empty strings, got {items!r}.")
    return items


# -- the store location -------------------------------------------------------------------------


def store_location(cwd: str | None = None) -> str | None:
    """``$RUNREC_STORE``, else ``store`` of the config files of ``cwd`` (relative to the file
    that sets it), as an absolute path; None when neither is set."""
    return _directory_setting(
        STORE_VAR, "store", "the store location", "path/to/store", "relative to that file", cwd
    )


def _directory_setting(
    var: str, key: str, what: str, example: str, hint: str, cwd: str | None
) -> str | None:
    """``$var``, else ``key`` of the config files of ``cwd`` (runrec.toml first: it wins),
    relative to the file that sets it; an absolute path, or None when neither is set."""
    env = os.environ.get(var)
    if env:
        return os.path.abspath(os.path.expanduser(env))
    for path in find_config_files(cwd or os.getcwd()):
        value = config_section(path, key, what)
        if value is None:
            continue
        if not isinstance(value, str) or not value:
            raise ConfigError(
                f"{key} = {value!r} in {path} is not a directory path. Write "
                f'`{key} = "{example}"` ({hint}), or remove it.'
            )
        return os.path.abspath(os.path.join(os.path.dirname(path), os.path.expanduser(value)))
    return None


# -- where withheld secrets wait for their job -----------------------------------------------------

SECRETS_DIR_VAR = "RUNREC_SECRETS_DIR"


def secrets_dir(cwd: str | None = None) -> str:
    """Where a submit puts the argument values it withholds from the store (docs/security.md):
    ``$RUNREC_SECRETS_DIR``, else ``secrets_dir`` of the config files of ``cwd`` (relative to
    the file), else ``$XDG_CACHE_HOME/runrec/secrets`` or ``~/.cache/runrec/secrets``; absolute."""
    found = _directory_setting(
        SECRETS_DIR_VAR,
        "secrets_dir",
        "the secrets directory",
        "~/.cache/runrec/secrets",
        "a directory the nodes share",
        cwd,
    )
    if found:
        return found
    cache = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.abspath(os.path.join(cache, "runrec", "secrets"))


# -- redaction rules ----------------------------------------------------------------------------


def redact_sources(
    start: str, environ: Mapping[str, str] | None = None
) -> list[tuple[str, dict[str, list[str]]]]:
    """(where, {key: patterns}) of every source of redaction rules: the config files of
    ``start`` (runrec.toml, pyproject.toml), then the ``RUNREC_REDACT_*`` variables. Keys are
    ``REDACT_KEYS``; a source that sets none of them is left out."""
    env = os.environ if environ is None else environ
    out: list[tuple[str, dict[str, list[str]]]] = []
    for path, t in config_tables(start, "redact", "redaction rules"):
        unknown = sorted(set(t) - set(REDACT_KEYS))
        if unknown:
            raise ConfigError(
                f"[tool.runrec.redact] in {path} has unknown keys {unknown}; "
                f"use {', '.join(REDACT_KEYS)}."
            )
        if t:
            out.append(
                (path, {k: string_list(v, path, f"redaction rule {k}") for k, v in t.items()})
            )
    for key, var in REDACT_VARS.items():
        items = _env_list(env, var, commas=key == "not_secret")
        if items:
            out.append((f"${var}", {key: items}))
    return out


def _env_list(environ: Mapping[str, str], var: str, commas: bool) -> list[str]:
    """One pattern, a JSON list of them, or (``commas``) comma-separated names."""
    raw = environ.get(var, "").strip()
    if not raw:
        return []
    if raw.startswith("["):
        try:
            items = json.loads(raw)
        except json.JSONDecodeError as exc:
            raise ConfigError(
                f"${var} starts with '[' but is not a JSON list of strings ({exc}). "
                'Give one pattern, or a JSON list like ["a", "b"].'
            ) from None
        return string_list(items, f"${var}", f"redaction rule {var}")
    if commas:
        return [s.strip() for s in raw.split(",") if s.strip()]
    return [raw]


# -- kept copies of artifacts ---------------------------------------------------------------------

KEEP_MAX_VAR = "RUNREC_KEEP_ARTIFACTS_MAX_MB"
KEEP_MAX_KEY = "keep_artifacts_max_mb"
KEEP_MAX_DEFAULT_MB = 100.0  # MiB; an artifact (a directory: all its files) up to this is kept


def keep_artifacts_max_mb(cwd: str | None = None) -> float:
    """Up to how many MiB (2**20 bytes) ``log_artifact`` keeps a copy of an artifact in the
    store: ``$RUNREC_KEEP_ARTIFACTS_MAX_MB``, else ``keep_artifacts_max_mb`` of the config files
    of ``cwd``, else ``KEEP_MAX_DEFAULT_MB``; 0 keeps none. ConfigError when it is not a number
    >= 0, naming where it was set."""
    raw = os.environ.get(KEEP_MAX_VAR, "").strip()
    if raw:
        try:
            value: Any = float(raw)
        except ValueError:
            value = raw
        return _check_mb(value, f"${KEEP_MAX_VAR}")
    for path in find_config_files(cwd or os.getcwd()):
        value = config_section(path, KEEP_MAX_KEY, "the artifact copy limit")
        if value is not None:
            return _check_mb(value, path)
    return KEEP_MAX_DEFAULT_MB


def _check_mb(value: Any, where: str) -> float:
    ok = isinstance(value, (int, float)) and not isinstance(value, bool)
    if not ok or not value >= 0 or value == float("inf"):
        raise ConfigError(
            f"{KEEP_MAX_KEY} = {value!r} in {where} is not a size in MiB. Write a number >= 0 "
            f"(e.g. `{KEEP_MAX_KEY} = 100`; 0 keeps no copies), or remove it."
        )
    return float(value)


# -- recreated environments (runrec rerun --env recorded) -------------------------------------------

ENVS_DIR_VAR = "RUNREC_ENVS_DIR"
PACKAGE_INDEX_VAR = "RUNREC_PACKAGE_INDEX"


def envs_dir(store_root: str, cwd: str | None = None) -> str:
    """Where recreated environments are cached, one directory per package-set hash:
    ``$RUNREC_ENVS_DIR``, else ``envs_dir`` of the config files of ``cwd`` (relative to the
    file), else ``STORE/envs``. It must be where the compute nodes see it (shared storage)."""
    found = _directory_setting(
        ENVS_DIR_VAR, "envs_dir", "the environment cache", "/shared/runrec-envs",
        "a directory the nodes share", cwd,
    )  # fmt: skip
    return found or os.path.join(store_root, "envs")


def package_index(cwd: str | None = None) -> tuple[str | None, str]:
    """The package index a recreated environment installs from, and where that was said:
    ``$RUNREC_PACKAGE_INDEX``, else ``package_index`` of the config files of ``cwd``, else
    ``$UV_INDEX_URL``, else ``$PIP_INDEX_URL``; (None, "uv's default (PyPI)") when none is set."""
    env = os.environ.get(PACKAGE_INDEX_VAR, "").strip()
    if env:
        return env, f"${PACKAGE_INDEX_VAR}"
    for path in find_config_files(cwd or os.getcwd()):
        value = config_section(path, "package_index", "the package index")
        if value is None:
            continue
        if not isinstance(value, str) or not value.strip():
            raise ConfigError(
                f"package_index = {value!r} in {path} is not a URL. Write "
                '`package_index = "https://pypi.org/simple"` (a PEP 503 index), or remove it.'
            )
        return value.strip(), path
    for var in ("UV_INDEX_URL", "PIP_INDEX_URL"):
        v = os.environ.get(var, "").strip()
        if v:
            return v, f"${var}"
    return None, "uv's default (PyPI)"


# -- how the Slurm backend asks the scheduler -------------------------------------------------------

SLURM_API_VAR = "RUNREC_SLURM_API"
SLURM_APIS = ("auto", "cli", "pyslurm")


def slurm_api() -> str:
    """How the Slurm backend reads job state and accounting: ``$RUNREC_SLURM_API``, one of
    ``auto`` (the default: pyslurm where it is importable and built for the Slurm on PATH, else
    the command line), ``cli`` (sacct, squeue, scontrol) or ``pyslurm`` (required: an error when
    it cannot be used). A variable only, so the batch script's end trap (which inherits the
    submitter's environment) reads the same. ConfigError for any other value."""
    raw = os.environ.get(SLURM_API_VAR, "").strip().lower() or "auto"
    if raw not in SLURM_APIS:
        raise ConfigError(
            f"${SLURM_API_VAR} = {raw!r} is not one of {', '.join(SLURM_APIS)}. Set "
            f"{SLURM_API_VAR}=auto (pyslurm where it matches the cluster, else sacct), cli or "
            "pyslurm, or unset it."
        )
    return raw
