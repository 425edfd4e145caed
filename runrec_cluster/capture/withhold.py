"""Secrets kept out of the store's pickled calls (docs/security.md, "Secrets in arguments").

A function run's call ``(fn, args, kwargs)`` is pickled into the store, where its job finds it.
Before that, ``withhold_call`` walks the arguments (nested dicts, lists, tuples, and the
``__dict__`` of plain objects) with the rules of the config view's redaction
(``redact.flags``: the name says secret, a credential's shape, a URL with a password). Every
flagged value is replaced in the pickled call by a ``Withheld`` placeholder naming its argument
path (``dsn``, ``conn.password``, ``hosts[1]``, ``opts.token``), and the real values go to an
owner-only file outside the store, ``<secrets dir>/<run id>.msgpack`` (directory 0700, file
0600; ``settings.secrets_dir``: ``$RUNREC_SECRETS_DIR``, ``secrets_dir`` in the config files,
else ``~/.cache/runrec/secrets``, which a cluster's nodes share with the login node through
``$HOME``). The record names the paths (``Entrypoint.withheld``) and the directory
(``Entrypoint.secrets_dir``), never a value.

In the job, ``provided(values)`` makes the placeholders turn into their values *while the call
is unpickled* (``Withheld.__reduce__`` names ``resolve``): a placeholder deep inside any object
comes back as its value, and a rerun's call (which unpickles the original call inside the job)
gets them the same way. Outside ``provided`` a placeholder unpickles as itself, so reading a
call never needs the secrets. The job removes the file when the run ends (``discard``); so
does whoever records the end of a run whose job never got there (a cancel, a reconcile).

A command run (``submit_command``) keeps no pickled command line at all: ``withhold_argv``
records ``redact_argv(argv)`` as ``Entrypoint.argv`` and puts every item that redaction
changed, whole, in the same file under ``argv[i]``; the job puts them back (``provide_argv``)
before it starts the command, and removes the file the same way.
"""

from __future__ import annotations

import contextlib
import copy
import inspect
import os
import re
import types
from collections.abc import Callable, Iterator, Mapping
from typing import Any

import cloudpickle
import msgspec

from runrec_cluster.capture.redact import Rules, active_rules, flags, redact_argv
from runrec_cluster.errors import ConfigError, SecretsUnavailable
from runrec_cluster.record import Entrypoint

SUFFIX = ".msgpack"
ENV_PREFIX = "RUNREC_SECRET_"
SET_PREFIX = "--set "  # the path of a withheld ``--set`` value of a rerun: "--set dsn"
_ARGV_PATH = re.compile(r"argv\[(\d+)\]\Z")  # a command line item: "argv[3]"
_MAX_NODES = 200_000  # values looked at per call; beyond, the rest is pickled as it is
_MAX_DEPTH = 32
_NOT_WALKED = (
    type,
    types.ModuleType,
    types.FunctionType,
    types.BuiltinFunctionType,
    types.MethodType,
)


class Withheld:
    """What the store's pickled call holds where a secret was: the argument path it stands
    for. Unpickled inside ``provided`` it becomes the value; elsewhere it stays a placeholder."""

    __slots__ = ("path",)

    def __init__(self, path: str) -> None:
        self.path = path

    def __repr__(self) -> str:
        return f"<withheld from the store: {self.path}>"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Withheld) and other.path == self.path

    def __hash__(self) -> int:
        return hash(("withheld", self.path))

    def __reduce__(self) -> tuple[Any, tuple[str]]:
        return resolve, (self.path,)


_provided: dict[str, Any] | None = None  # the values of the job being run (``provided``)


def resolve(path: str) -> Any:
    """The value withheld at ``path`` (inside ``provided``), else a ``Withheld`` placeholder."""
    if _provided is None:
        return Withheld(path)
    if path not in _provided:
        raise SecretsUnavailable(
            f"the call holds a value withheld from the store at {path!r}, and the job was not "
            f"given it (it has: {', '.join(sorted(_provided)) or 'none'}). Submit the run again; "
            f"a rerun takes it with --set or ${env_var(path)}."
        )
    return _provided[path]


@contextlib.contextmanager
def provided(values: Mapping[str, Any]) -> Iterator[None]:
    """While inside, unpickling a call turns its placeholders into ``values`` (path -> value)."""
    global _provided
    saved = _provided
    _provided = dict(values)
    try:
        yield
    finally:
        _provided = saved


# -- finding the secrets in a call -------------------------------------------------------------


def withhold_call(
    fn: Callable[..., Any],
    args: tuple[Any, ...],
    kwargs: Mapping[str, Any],
    rules: Rules | None = None,
) -> tuple[tuple[Any, ...], dict[str, Any], dict[str, Any]]:
    """``(args, kwargs, values)``: the call's arguments with every flagged value replaced by a
    placeholder (the originals are never changed; containers are copied where needed), and the
    withheld values by path. Argument names come from ``fn``'s signature, as in the config view
    (``arg0``, ``arg1``... without one; ``args[i]`` for ``*args``)."""
    w = _Walk(rules or active_rules())
    try:
        params = list(inspect.signature(fn).parameters.values())
    except (TypeError, ValueError):
        params = []
    positional = [
        p.name
        for p in params
        if p.kind in (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
    ]
    var = next((p.name for p in params if p.kind is inspect.Parameter.VAR_POSITIONAL), None)
    new_args = []
    for i, a in enumerate(args):
        if i < len(positional):
            name = path = positional[i]
        elif var is not None:
            name, path = var, f"{var}[{i - len(positional)}]"
        else:
            name = path = f"arg{i}"
        new_args.append(w.value(name, path, a, 0))
    new_kwargs = {k: w.value(str(k), str(k), v, 0) for k, v in kwargs.items()}
    return tuple(new_args), new_kwargs, w.values


def withhold_mapping(
    prefix: str, values: Mapping[str, Any], rules: Rules | None = None
) -> tuple[dict[str, Any], dict[str, Any]]:
    """``values`` (name -> value, e.g. a rerun's ``--set`` overrides) with flagged values
    replaced by placeholders at ``prefix + name``, and the withheld values by path."""
    w = _Walk(rules or active_rules())
    out = {k: w.value(k, prefix + k, v, 0) for k, v in values.items()}
    return out, w.values


def withhold_argv(argv: list[str], rules: Rules | None = None) -> tuple[list[str], dict[str, str]]:
    """A command line as the store keeps it, and what it keeps out: ``(shown, values)``, where
    ``shown`` is ``redact_argv(argv)`` (the record's argv, item for item) and ``values`` holds
    every item that redaction changed, whole, under the path ``argv[i]`` (``--password X``:
    the ``X``; ``--db=postgresql://u:p@h/x`` and ``PASSWORD=x``: the whole item)."""
    shown = redact_argv(argv, rules or active_rules())
    values = {f"argv[{i}]": a for i, (a, s) in enumerate(zip(argv, shown, strict=True)) if a != s}
    return shown, values


def argv_index(path: str) -> int | None:
    """``argv[3]`` -> 3; None for a path that is not a command line item."""
    m = _ARGV_PATH.match(path)
    return int(m.group(1)) if m else None


def provide_argv(shown: list[str], values: Mapping[str, Any]) -> list[str]:
    """The command line to run: ``shown`` (the recorded argv) with each ``argv[i]`` of
    ``values`` put back (others, and None values, are left as recorded)."""
    out = list(shown)
    for path, v in values.items():
        i = argv_index(path)
        if i is not None and i < len(out) and v is not None:
            out[i] = str(v)
    return out


class _Walk:
    """One walk over a call's arguments: the values withheld so far, by path."""

    def __init__(self, rules: Rules) -> None:
        self.rules = rules
        self.values: dict[str, Any] = {}
        self.nodes = 0
        self.active: set[int] = set()  # containers on the current path (cycles)

    def value(self, name: str, path: str, v: Any, depth: int) -> Any:
        """``v``, or a copy with its flagged parts replaced (``v`` itself when none is)."""
        self.nodes += 1
        if self.nodes > _MAX_NODES or depth > _MAX_DEPTH or id(v) in self.active:
            return v
        if isinstance(v, (str, bytes, int, float)) or v is None:
            return self._withhold(path, v) if flags(name, v, self.rules) else v
        if isinstance(v, Withheld):
            return v
        self.active.add(id(v))
        try:
            if isinstance(v, dict):
                return self._dict(path, v, depth)
            if isinstance(v, (list, tuple)):
                return self._seq(name, path, v, depth)
            if isinstance(v, (set, frozenset)):
                hit = any(self.value(name, path, x, depth + 1) is not x for x in v)
                return self._whole(path, v) if hit else v
            if flags(name, v, self.rules):  # any object under a name such as "password"
                return self._withhold(path, v)
            return self._object(path, v, depth)
        finally:
            self.active.discard(id(v))

    def _withhold(self, path: str, v: Any) -> Withheld:
        self.values[path] = v
        return Withheld(path)

    def _whole(self, path: str, v: Any) -> Withheld:
        """The whole container at ``path`` (it cannot be copied with placeholders inside)."""
        for p in [p for p in self.values if p.startswith((path + ".", path + "["))]:
            del self.values[p]
        return self._withhold(path, v)

    def _dict(self, path: str, v: dict[Any, Any], depth: int) -> Any:
        changed = {}
        for k, x in v.items():
            y = self.value(str(k), _key_path(path, k), x, depth + 1)
            if y is not x:
                changed[k] = y
        if not changed:
            return v
        try:
            out = dict(v) if type(v) is dict else copy.copy(v)
            out.update(changed)
            return out
        except Exception:
            return self._whole(path, v)

    def _seq(self, name: str, path: str, v: list[Any] | tuple[Any, ...], depth: int) -> Any:
        items: list[Any] | None = None
        numbers_ok = self.rules.kind(name) is None  # a number is flagged by its name only
        for i, x in enumerate(v):
            if numbers_ok and (type(x) is float or type(x) is int or type(x) is bool):
                continue  # the common long list: values of a curve, ids
            y = self.value(name, f"{path}[{i}]", x, depth + 1)
            if y is not x:
                if items is None:
                    items = list(v)
                items[i] = y
        if items is None:
            return v
        try:
            if type(v) is list or type(v) is tuple:
                return type(v)(items)
            if isinstance(v, tuple) and hasattr(v, "_make"):  # a namedtuple
                return v._make(items)
            if isinstance(v, list):
                out = copy.copy(v)
                out[:] = items
                return out
        except Exception:
            pass
        return self._whole(path, v)

    def _object(self, path: str, v: Any, depth: int) -> Any:
        """A plain object's attributes (dataclasses, simple classes), as the config view
        flattens them; anything else is left as it is."""
        attrs = getattr(v, "__dict__", None)
        if type(attrs) is not dict or isinstance(v, _NOT_WALKED) or not attrs:
            return v
        changed = {}
        for k, x in list(attrs.items()):
            y = self.value(str(k), f"{path}.{k}", x, depth + 1)
            if y is not x:
                changed[k] = y
        if not changed:
            return v
        try:
            out = copy.copy(v)
            if out is v or getattr(out, "__dict__", None) is attrs:
                raise TypeError("not copied")
            out.__dict__.update(changed)
            return out
        except Exception:
            return self._whole(path, v)


def _key_path(path: str, k: Any) -> str:
    return f"{path}.{k}" if isinstance(k, str) and k.isidentifier() else f"{path}[{k!r}]"


# -- names for people --------------------------------------------------------------------------


def top_key(path: str) -> str:
    """The config key a withheld path belongs to: ``conn.password`` -> ``conn``."""
    p = path.removeprefix(SET_PREFIX)
    return re.split(r"[.\[]", p, maxsplit=1)[0]


def env_var(path: str) -> str:
    """The environment variable a rerun reads a withheld value from: ``conn.password`` ->
    ``RUNREC_SECRET_CONN_PASSWORD``."""
    p = path.removeprefix(SET_PREFIX)
    return ENV_PREFIX + re.sub(r"[^A-Za-z0-9]+", "_", p).strip("_").upper()


# -- the secrets file --------------------------------------------------------------------------


class _File(msgspec.Struct, kw_only=True):
    run_id: str
    plain: dict[str, Any] = {}  # str, bytes, numbers, booleans, None
    pickled: dict[str, bytes] = {}  # everything else (an object under a name like "password")


def secrets_path(directory: str, run_id: str) -> str:
    return os.path.join(directory, run_id + SUFFIX)


def check_dir(directory: str, store_root: str) -> str:
    """``directory`` as an absolute path; ConfigError when it lies inside the store."""
    d = os.path.realpath(directory)
    root = os.path.realpath(store_root)
    if d == root or d.startswith(root.rstrip(os.sep) + os.sep):
        raise ConfigError(
            f"the secrets directory {directory} is inside the store {store_root}, where every "
            "file is shared; set RUNREC_SECRETS_DIR (or secrets_dir in [tool.runrec]) to a "
            "private directory outside it, e.g. ~/.cache/runrec/secrets."
        )
    return os.path.abspath(directory)


def write_secrets(directory: str, run_id: str, values: Mapping[str, Any]) -> str:
    """Write ``values`` (path -> value) for run ``run_id`` owner-only; returns the file's path.
    ConfigError naming the directory when it cannot be written."""
    plain: dict[str, Any] = {}
    pickled: dict[str, bytes] = {}
    for k, v in values.items():
        if (
            v is None
            or type(v) in (str, bytes, bool, float)
            or (type(v) is int and -(2**63) <= v < 2**64)
        ):
            plain[k] = v
        else:
            pickled[k] = cloudpickle.dumps(v)
    data = msgspec.msgpack.encode(_File(run_id=run_id, plain=plain, pickled=pickled))
    path = secrets_path(directory, run_id)
    tmp = f"{path}.{os.getpid()}.tmp"
    try:
        os.makedirs(directory, mode=0o700, exist_ok=True)
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            os.fchmod(fd, 0o600)  # whatever the umask
            os.write(fd, data)
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except OSError as exc:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise ConfigError(
            f"cannot write the secrets of run {run_id} to {directory} ({exc.strerror or exc}); "
            "their arguments hold values kept out of the store. Set RUNREC_SECRETS_DIR to a "
            "private directory you can write and the nodes can read."
        ) from exc
    return path


def read_secrets(run_id: str, directory: str, withheld: list[str]) -> dict[str, Any]:
    """The values withheld from run ``run_id``'s call; ``SecretsUnavailable`` saying what is
    missing, where it was expected and what to do."""
    path = secrets_path(directory, run_id)
    try:
        with open(path, "rb") as f:
            data = msgspec.msgpack.decode(f.read(), type=_File)
    except FileNotFoundError:
        raise SecretsUnavailable(
            f"run {run_id}: its call or command line holds values withheld from the store "
            f"({', '.join(withheld)}), and their file {path} is not on this node "
            f"({os.uname().nodename}): the submit host wrote it there, or the run already "
            "ended and it was removed. Set RUNREC_SECRETS_DIR (or secrets_dir in "
            "[tool.runrec]) to a directory that the submit host and the nodes share (e.g. "
            "under $HOME), and submit again; `runrec rerun` takes the values with --set."
        ) from None
    except (OSError, msgspec.DecodeError) as exc:
        raise SecretsUnavailable(
            f"run {run_id}: cannot read its withheld values from {path} ({exc}). Submit again."
        ) from None
    out: dict[str, Any] = dict(data.plain)
    for k, b in data.pickled.items():
        out[k] = cloudpickle.loads(b)  # written by this user's own submit, 0600
    missing = [p for p in withheld if p not in out]
    if missing:
        raise SecretsUnavailable(
            f"run {run_id}: {path} lacks the withheld values {', '.join(missing)}. Submit again."
        )
    return out


def discard(run_id: str, directory: str | None) -> bool:
    """Remove run ``run_id``'s secrets file; True when there was one."""
    if not directory:
        return False
    try:
        os.unlink(secrets_path(directory, run_id))
        return True
    except OSError:
        return False


def job_values(run_id: str, ep: Entrypoint) -> dict[str, Any]:
    """What the job of run ``run_id`` substitutes for the placeholders of its call ({} when
    nothing was withheld); ``SecretsUnavailable`` when the file cannot be read here."""
    if not ep.withheld:
        return {}
    if not ep.secrets_dir:
        raise SecretsUnavailable(
            f"run {run_id}: its call holds values withheld from the store ({', '.join(ep.withheld)}) "
            "but its record names no secrets directory (a damaged record). Submit again."
        )
    return read_secrets(run_id, ep.secrets_dir, list(ep.withheld))
