"""runrec's argparse capture: this file is copied into a job's private temporary directory as
``sitecustomize.py``, and that directory is put first on a command's ``PYTHONPATH``
(``job/argparse_capture.py``). Python imports ``sitecustomize`` at start-up (``site``), so a
Python command records its parsed options without any change to the script.

Standard library only: it runs inside the command's own interpreter, which need not have
runrec installed (nor the same Python version: 3.8 or newer). It does, in the interpreter
whose parent process is the job (``RUNREC_ARGV_CAPTURE_PPID``; a program the command starts
in turn is not captured):

1. wrap ``argparse.ArgumentParser.parse_known_args`` (``parse_args`` goes through it) and
   ``parse_known_intermixed_args``; each parse of the process's own command line (``args``
   None or equal to ``sys.argv[1:]``; a parse inside another, a sub-parser's, is part of it)
   writes to the JSON file named by ``RUNREC_ARGV_CAPTURE`` (replaced atomically) every
   destination of the parsed namespace: its value (JSON, or a readable text when not
   JSON-able), its key (the option's first long name without dashes, as runrec records
   ``--key value``; else the destination) and whether it was given on the command line (seen
   by argparse: ``ArgumentParser._get_values`` is called for each option and positional it
   consumed) or left at its default. Options of several parses are merged, a later parse's
   replacing an earlier one's of the same key (the two-stage pattern: a first
   ``parse_known_args`` for ``--config``, then the full parser with defaults from that file);
2. take its directory off ``sys.path`` and ``PYTHONPATH`` (the command's own children do not
   load it), then run the ``sitecustomize`` that was next on ``sys.path``, if any.

A failure here never reaches the user's program: the job then records no ``argv`` entries.
Nothing happens when the module is imported under another name (runrec's own imports).
"""

import argparse
import importlib.machinery
import json
import os
import sys

ENV_PATH = "RUNREC_ARGV_CAPTURE"  # the JSON file to write
ENV_PPID = "RUNREC_ARGV_CAPTURE_PPID"  # the job's pid: only its direct child captures
FORMAT_VERSION = 1

_state = {"depth": 0, "seen": set(), "options": {}, "parses": 0, "tracked": False}


def _key_of(action, prefix_chars):
    for s in action.option_strings:
        if len(s) > 2 and s[0] == s[1] and s[0] in prefix_chars:
            return s[2:]
    return action.dest


def _plain(value):
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    try:
        json.dumps(value)
        return value
    except (TypeError, ValueError, OverflowError):
        pass
    name = getattr(value, "name", None)
    if isinstance(name, str) and hasattr(value, "mode"):  # argparse.FileType: an open file
        return name
    if callable(value) and hasattr(value, "__qualname__"):  # set_defaults(func=train)
        return f"<{type(value).__name__} {value.__module__}.{value.__qualname__}>"
    return repr(value)


def _actions(parser):
    """Every action of ``parser`` and of its sub-parsers."""
    out = []
    stack = [parser]
    done = set()
    while stack:
        p = stack.pop()
        if id(p) in done:
            continue
        done.add(id(p))
        for a in p._actions:
            out.append((a, p.prefix_chars))
            choices = a.choices if isinstance(a, argparse._SubParsersAction) else None
            if isinstance(choices, dict):
                stack.extend(v for v in choices.values() if isinstance(v, argparse.ArgumentParser))
    return out


def _write(parser, namespace):
    by_dest = {}
    for a, prefix in _actions(parser):
        by_dest.setdefault(a.dest, []).append((a, prefix))
    options = {}
    for dest, value in sorted(vars(namespace).items()):
        acts = by_dest.get(dest, [])
        seen = [(a, pc) for a, pc in acts if id(a) in _state["seen"]]
        pick = (seen or acts or [(None, "-")])[0]
        key = _key_of(pick[0], pick[1]) if pick[0] is not None else dest
        if key in options and options[key]["dest"] != dest:
            key = dest
        if _state["tracked"]:
            given = bool(seen)
        else:  # no _get_values to watch: compare with the defaults
            given = all(value != a.default for a, _ in acts) if acts else False
        options[key] = {"key": key, "dest": dest, "value": _plain(value), "given": given}
    _state["options"].update(options)
    _state["parses"] += 1
    doc = {
        "version": FORMAT_VERSION,
        "prog": parser.prog,
        "parses": _state["parses"],
        "method": "seen" if _state["tracked"] else "compared with defaults",
        "options": list(_state["options"].values()),
    }
    path = os.environ[ENV_PATH]
    tmp = path + ".tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        json.dump(doc, f)
    os.replace(tmp, path)


def _wrap_parse(name):
    original = getattr(argparse.ArgumentParser, name, None)
    if original is None:
        return

    def parse(self, args=None, namespace=None):
        outermost = _state["depth"] == 0
        if outermost:
            _state["seen"] = set()
        _state["depth"] += 1
        try:
            result = original(self, args, namespace)
        finally:
            _state["depth"] -= 1
        if outermost and (
            args is None or isinstance(args, (list, tuple)) and list(args) == sys.argv[1:]
        ):
            try:
                _write(self, result[0])
            except Exception:
                pass  # never the user's problem
        return result

    parse.__wrapped__ = original
    parse.__doc__ = original.__doc__
    setattr(argparse.ArgumentParser, name, parse)


def _install():
    get_values = getattr(argparse.ArgumentParser, "_get_values", None)
    if get_values is not None:

        def _get_values(self, action, arg_strings):
            if _state["depth"] and (action.option_strings or arg_strings):
                _state["seen"].add(id(action))
            return get_values(self, action, arg_strings)

        argparse.ArgumentParser._get_values = _get_values
        _state["tracked"] = True
    _wrap_parse("parse_known_args")
    _wrap_parse("parse_known_intermixed_args")


def _leave_path():
    """Take this file's directory off sys.path and PYTHONPATH; return it."""
    here = os.path.dirname(os.path.abspath(__file__))
    sys.path[:] = [p for p in sys.path if os.path.abspath(p or os.curdir) != here]
    parts = os.environ.get("PYTHONPATH", "").split(os.pathsep)
    if parts and os.path.abspath(parts[0] or os.curdir) == here:
        rest = os.pathsep.join(parts[1:])
        if rest:
            os.environ["PYTHONPATH"] = rest
        else:
            os.environ.pop("PYTHONPATH", None)
    return here


def _chain():
    """Run the sitecustomize that this one hides, as Python would have."""
    spec = importlib.machinery.PathFinder.find_spec("sitecustomize", sys.path)
    if spec is None or spec.loader is None:
        return
    mod = type(sys)(spec.name)  # as importlib.util.module_from_spec (not imported: slow)
    mod.__spec__, mod.__loader__, mod.__file__ = spec, spec.loader, spec.origin
    sys.modules["sitecustomize"] = mod
    spec.loader.exec_module(mod)


if __name__ == "sitecustomize":
    try:
        if os.environ.get(ENV_PATH) and os.environ.get(ENV_PPID) == str(os.getppid()):
            _install()
    except Exception:
        pass
    try:
        _leave_path()
    except Exception:
        pass
    _chain()  # its errors are reported by site, as without runrec
