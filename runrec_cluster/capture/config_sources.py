"""Config from files and declared environment variables, read at submit, with provenance.

``ConfigFile(path)`` (``runrec submit --config FILE``): a YAML (``.yaml``/``.yml``), TOML
(``.toml``) or JSON (``.json``) file whose top level is a mapping. The file is hashed as an
input (an ``InputRef`` with ``role="config"``, like a dataset) and each of its keys becomes a
config entry with source ``file:<absolute path>``; nested tables are flattened with dots
(``[model] depth = 3`` -> ``model.depth``), lists stay values.

``ConfigEnv("LR", key="lr", type=float)`` (``runrec submit --config-env lr=LR``): the value of
an environment variable of the submitting process, source ``env:LR``; redacted like any config
value (by the key's name, the variable's name and the value's shape).

Every source of a config value, lowest precedence first (a higher one replaces a lower one's
entry for the same key; later files win over earlier ones)::

    default  <  file:<path>  <  env:<NAME>  <  given

``default``: a function's signature; ``given``: arguments passed at submit (or ``--key value``
on a command line). ``generated`` (``run.log_config`` in the job) and ``argv`` (a Python
command's parsed argparse options, job/argparse_capture.py) are written by the job later.

A function run receives the file and env values whose top-level key names one of its parameters
(any key, when it takes ``**kwargs``) and that the call does not pass itself; the other keys are
recorded only (the function reads the file itself, or ``current_run().record.config``). A
command reads its config file itself: runrec records what the file says.
"""

from __future__ import annotations

import hashlib
import inspect
import json
import os
import re
import tomllib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import blake3
import msgspec.structs

from runrec_cluster.capture import config as cfg
from runrec_cluster.capture.data import Dataset
from runrec_cluster.capture.inputs import hash_input
from runrec_cluster.capture.redact import active_rules, redact_value
from runrec_cluster.errors import ConfigError
from runrec_cluster.record import ConfigEntry, InputRef

FORMATS = {".yaml": "yaml", ".yml": "yaml", ".toml": "toml", ".json": "json"}
MAX_CONFIG_BYTES = 16 << 20  # a config file larger than this is refused (it is read into memory)
_UNSET: Any = object()


class ConfigFile:
    """A config file (YAML, TOML or JSON, by extension) whose keys join the run's config, marked
    ``file:<path>``; the file is hashed as an input of the run."""

    kind = "config-file"

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = os.fspath(path)

    def __repr__(self) -> str:
        return f"ConfigFile({self.path!r})"


class ConfigEnv:
    """A config value read from environment variable ``name`` at submit, marked ``env:<name>``.

    ``key``: the config key (default: ``name`` in lower case); ``type``: applied to the string
    (``int``, ``float``, any callable; default: typed like a command-line value, int, float,
    true/false or the string); ``default``: used (and marked ``default``) when the variable is
    not set; without one an unset variable is an error."""

    kind = "config-env"

    def __init__(
        self,
        name: str,
        key: str | None = None,
        type: Callable[[str], Any] | None = None,  # noqa: A002 (the word users expect)
        default: Any = _UNSET,
    ) -> None:
        if not isinstance(name, str) or not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", name):
            raise ConfigError(
                f"ConfigEnv({name!r}): not an environment variable name (letters, digits, _)."
            )
        self.name = name
        self.key = key or name.lower()
        self.type = type
        self.default = default

    def __repr__(self) -> str:
        return f"ConfigEnv({self.name!r}, key={self.key!r})"


@dataclass
class ResolvedConfig:
    """What the config sources of a submit say: ``values`` (nested, as parsed, env values set at
    their dotted key: what a function's call receives), ``entries`` (flattened keys with their
    provenance, redacted) and ``inputs`` (the config files, hashed)."""

    values: dict[str, Any] = field(default_factory=dict)
    entries: dict[str, ConfigEntry] = field(default_factory=dict)
    inputs: list[InputRef] = field(default_factory=list)

    def command_config(self, given: Mapping[str, ConfigEntry]) -> dict[str, ConfigEntry]:
        """A command's config: these entries under the ``given`` ones (its ``--key value``)."""
        return {**self.entries, **given}

    def bind(
        self, fn: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> tuple[dict[str, Any], dict[str, ConfigEntry]]:
        """A function call's keyword arguments with the values it does not pass itself joined
        (those its signature accepts), and the call's config entries with provenance."""
        if not self.entries:
            return kwargs, cfg.function_config(fn, args, kwargs)
        try:
            sig: inspect.Signature | None = inspect.signature(fn)
        except (TypeError, ValueError):
            sig = None
        explicit: set[str] = set(kwargs)
        accepts: Callable[[str], bool] = lambda _k: False  # noqa: E731
        if sig is not None:
            try:
                bound = sig.bind_partial(*args, **kwargs)
            except TypeError:
                bound = None  # function_config below says what does not match
            if bound is not None:
                explicit = set(bound.arguments)
                params = sig.parameters
                varkw = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())

                def accepts(k: str) -> bool:
                    p = params.get(k)
                    if p is None:
                        return varkw
                    return p.kind in (
                        inspect.Parameter.POSITIONAL_OR_KEYWORD,
                        inspect.Parameter.KEYWORD_ONLY,
                    )

        joined = {k: v for k, v in self.values.items() if k not in explicit and accepts(k)}
        conf = cfg.function_config(fn, args, {**kwargs, **joined})
        out = {k: e for k, e in self.entries.items() if _top(k) not in explicit}
        out.update({k: e for k, e in conf.items() if k not in joined})
        return {**kwargs, **joined}, out


def _top(key: str) -> str:
    return key.split(".", 1)[0]


def flatten(mapping: Mapping[str, Any], where: str, prefix: str = "") -> dict[str, Any]:
    """Nested mappings as dotted keys (``{"model": {"depth": 3}}`` -> ``model.depth``); an
    empty mapping stays a value. ``where`` names the file in errors."""
    out: dict[str, Any] = {}
    for k, v in mapping.items():
        if not isinstance(k, str):
            raise ConfigError(
                f"config file {where}: key {prefix}{k!r} is not a string. Quote it in the file."
            )
        name = prefix + k
        items = flatten(v, where, name + ".") if isinstance(v, Mapping) and v else {name: v}
        for key, value in items.items():
            if key in out:
                raise ConfigError(
                    f"config file {where}: key {key!r} is set twice (once with dots in its "
                    "name, once as a nested table). Keep one."
                )
            out[key] = value
    return out


def _line_of(exc: Exception, fmt: str) -> int | None:
    if fmt == "json":
        return getattr(exc, "lineno", None)
    if fmt == "yaml":
        mark = getattr(exc, "problem_mark", None) or getattr(exc, "context_mark", None)
        return mark.line + 1 if mark is not None else None
    m = re.search(r"at line (\d+)", str(exc))
    return int(m.group(1)) if m else None


def _yaml_load(text: str) -> Any:
    try:  # optional: only YAML config files need PyYAML
        import yaml
    except ImportError:
        raise ConfigError(
            "reading a YAML config file needs PyYAML, which is not installed: "
            "pip install 'runrec-cluster[yaml]' (or pip install PyYAML), or give the file as "
            "TOML or JSON."
        ) from None
    return yaml.safe_load(text)


def parse_config(data: bytes, path: str) -> dict[str, Any]:
    """The mapping a config file's bytes hold; ConfigError naming the file (and the line, when
    the parser says) when the format is unknown, the text does not parse or the top level is
    not a mapping."""
    ext = os.path.splitext(path)[1].lower()
    fmt = FORMATS.get(ext)
    if fmt is None:
        raise ConfigError(
            f"config file {path}: unknown extension {ext or '(none)'!r}; runrec reads .yaml/.yml "
            "(YAML), .toml (TOML) and .json (JSON). Rename the file to say its format."
        )
    try:
        text = data.decode("utf-8")
        if fmt == "json":
            doc = json.loads(text)
        elif fmt == "toml":
            doc = tomllib.loads(text)
        else:
            doc = _yaml_load(text)
    except ConfigError:
        raise
    except Exception as exc:  # each parser has its own error types
        line = _line_of(exc, fmt)
        at = f" at line {line}" if line else ""
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        if getattr(exc, "problem", None):  # YAML: what is wrong, then where it was reading
            ctx = getattr(exc, "context", None)
            first = exc.problem + (f" ({ctx})" if ctx else "")  # type: ignore[attr-defined]
        raise ConfigError(
            f"config file {path} is not valid {fmt.upper()}{at}: {first}. Fix the file, or "
            "check it with a " + fmt.upper() + " parser."
        ) from None
    if not isinstance(doc, Mapping):
        got = "empty" if doc is None else f"a {type(doc).__name__}"
        raise ConfigError(
            f"config file {path}: the top level is {got}, not a mapping of keys to values. "
            'Write it as `key: value` (YAML), `key = value` (TOML) or {"key": value} (JSON).'
        )
    return dict(doc)


def read_config_file(path: str) -> tuple[bytes, dict[str, Any]]:
    """A config file's bytes and its parsed mapping; ConfigError naming the file when it is
    missing, unreadable or too large (then ``parse_config``'s errors)."""
    try:
        with open(path, "rb") as f:
            data = f.read(MAX_CONFIG_BYTES + 1)
    except FileNotFoundError:
        raise ConfigError(
            f"config file {path} does not exist (working directory {os.getcwd()}). "
            "Check the path given to rr.ConfigFile / --config."
        ) from None
    except OSError as exc:
        raise ConfigError(f"cannot read config file {path}: {exc.strerror or exc}.") from None
    if len(data) > MAX_CONFIG_BYTES:
        raise ConfigError(
            f"config file {path} is larger than {MAX_CONFIG_BYTES >> 20} MiB: that is data, not "
            "config. Pass it as an input (rr.Dataset / --input) instead."
        )
    return data, parse_config(data, path)


def _deep_update(base: dict[str, Any], new: Mapping[str, Any]) -> None:
    for k, v in new.items():
        if isinstance(v, Mapping) and v and isinstance(base.get(k), dict):
            _deep_update(base[k], v)
        else:
            base[k] = dict(v) if isinstance(v, Mapping) else v


def _set_dotted(target: dict[str, Any], key: str, value: Any) -> None:
    parts = key.split(".")
    for p in parts[:-1]:
        nxt = target.get(p)
        if not isinstance(nxt, dict):
            nxt = target[p] = {}
        target = nxt
    target[parts[-1]] = value


def _digest(data: bytes, algo: str) -> str:
    h = hashlib.sha256(data) if algo == "sha256" else blake3.blake3(data)
    return f"{algo}:{h.hexdigest()}"


def _env_value(src: ConfigEnv, environ: Mapping[str, str]) -> tuple[Any, str]:
    raw = environ.get(src.name)
    if raw is None:
        if src.default is _UNSET:
            raise ConfigError(
                f"environment variable {src.name} (declared for config key {src.key!r}) is not "
                f"set. Set it (export {src.name}=...), or give ConfigEnv({src.name!r}, "
                "default=...)."
            )
        return src.default, "default"
    if src.type is None:
        return cfg.parse_scalar(raw), f"env:{src.name}"
    try:
        return src.type(raw), f"env:{src.name}"
    except (TypeError, ValueError) as exc:
        tname = getattr(src.type, "__name__", repr(src.type))
        shown = redact_value(src.name, redact_value(src.key, raw))
        raise ConfigError(
            f"environment variable {src.name}={shown!r} (config key {src.key!r}) is not a "
            f"valid {tname}: {exc}. Fix the variable or the type= of its ConfigEnv."
        ) from None


def resolve(
    sources: Sequence[ConfigFile | ConfigEnv | str | os.PathLike[str]] | None,
    store: Any,
    progress: Any = None,
    environ: Mapping[str, str] | None = None,
) -> ResolvedConfig:
    """Read, hash and merge the config sources of a submit (a path stands for a ConfigFile):
    files in order (later files win), then environment variables."""
    out = ResolvedConfig()
    if not sources:
        return out
    if isinstance(sources, (str, os.PathLike, ConfigFile, ConfigEnv)):
        sources = [sources]
    files: list[ConfigFile] = []
    envs: list[ConfigEnv] = []
    for s in sources:
        if isinstance(s, (str, os.PathLike)):
            s = ConfigFile(s)
        if isinstance(s, ConfigFile):
            files.append(s)
        elif isinstance(s, ConfigEnv):
            envs.append(s)
        else:
            raise ConfigError(
                f"config sources are rr.ConfigFile(path), rr.ConfigEnv(NAME, key=...) or paths, "
                f"got {type(s).__name__}: {s!r}."
            )
    rules = active_rules()
    provenance: dict[str, str] = {}
    for f in files:
        data, doc = read_config_file(f.path)
        ref = hash_input(store, Dataset(f.path), progress=progress)
        if ref.digest != _digest(data, ref.digest.split(":", 1)[0]):
            raise ConfigError(
                f"config file {f.path} changed while it was being read; submit again once "
                "nothing writes it."
            )
        out.inputs.append(msgspec.structs.replace(ref, role="config"))
        src = f"file:{ref.path}"
        for k in flatten(doc, f.path):
            provenance[k] = src
        _deep_update(out.values, doc)
    flat = flatten(out.values, "the merged config files")
    for k in list(provenance):  # a later file's scalar replaced an earlier file's table
        if k not in flat:
            del provenance[k]
    for k, v in flat.items():
        out.entries[k] = ConfigEntry(value=cfg.plain(k, v, rules), source=provenance[k])
    env = os.environ if environ is None else environ
    for e in envs:
        value, src = _env_value(e, env)
        for k in [k for k in out.entries if _overlaps(k, e.key)]:
            del out.entries[k]  # the variable replaces what a file said at or under that key
        _set_dotted(out.values, e.key, value)
        shown = redact_value(e.name, cfg.plain(e.key, value, rules), rules)
        out.entries[e.key] = ConfigEntry(value=shown, source=src)
    return out


def _overlaps(a: str, b: str) -> bool:
    """Whether dotted keys ``a`` and ``b`` are the same or one is a table holding the other."""
    return a == b or a.startswith(b + ".") or b.startswith(a + ".")
