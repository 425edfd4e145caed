"""A Python command's parsed options, recorded without changes to the script.

Before a command job starts its command, ``prepare`` makes a private directory (mode 0700)
holding ``sitecustomize.py`` (a copy of ``job/argparse_site.py``) and puts it first on the
command's ``PYTHONPATH``. If the command's process is a Python interpreter that parses its
command line with ``argparse``, that file writes the parsed options to a JSON file in the same
directory (see ``argparse_site`` for how, and for what it chains to). The job turns them into
config entries:

- ``argv``: the option was given on the command line (its value as argparse parsed it);
- ``default``: argparse's default was used; unless the launch record already holds the same
  value for that key from a config file or an environment variable (``file:`` / ``env:``): the
  script took its default from there, and that provenance is kept.

An entry replaces the launch record's entry of the same key (``--lr 0.1`` recorded ``given`` at
submit becomes ``argv``; a file's ``epochs = 3`` that the script did not read becomes the
``default`` the script used). Keys are the options' first long names without dashes
(``--batch-size`` -> ``batch-size``, as ``--key value`` is recorded at submit and as ``runrec
rerun --set`` writes it back); positionals and short-only options use their destination. Values
go through the redaction rules like every config value.

The job looks at the file every ``POLL_S`` while the command runs and records what is new at
once (a ``config`` version), so a run killed later (time limit, cancel) keeps its options; the
end version carries what arrived last. The file is removed once read, the directory when the
command ended (a job killed with SIGKILL, or stopped by runrec's own time limit, leaves the
directory behind in the node's temporary directory, mode 0700, holding only the copy of
``sitecustomize.py``, or the options of a parse less than ``POLL_S`` old).

Off: ``runrec submit --no-capture-args``, ``submit_command(..., capture_args=False)``, or
``RUNREC_CAPTURE_ARGPARSE=0`` in the environment of the submit or of the job.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import threading
import weakref
from collections.abc import Mapping
from typing import Any

from runrec_cluster.capture import config as cfg
from runrec_cluster.capture.redact import active_rules
from runrec_cluster.job import argparse_site
from runrec_cluster.record import ConfigEntry, RunRecord, to_patch
from runrec_cluster.store import Store

ENV_OFF = "RUNREC_CAPTURE_ARGPARSE"  # "0": no argparse capture
SITE_SOURCE = argparse_site.__file__
MAX_CAPTURE_BYTES = 4 << 20  # a larger capture file is ignored (not the script's options)
POLL_S = 0.2  # how often the job looks at the capture file while the command runs


def enabled(flag: bool | None = None, environ: Mapping[str, str] | None = None) -> bool:
    """Whether to capture: not when ``RUNREC_CAPTURE_ARGPARSE=0``, else ``flag`` (default on)."""
    env = os.environ if environ is None else environ
    if env.get(ENV_OFF, "").strip().lower() in ("0", "false", "no", "off"):
        return False
    return True if flag is None else bool(flag)


def read_capture(path: str) -> dict[str, Any] | None:
    """The capture a command wrote, or None (not Python, no argparse, unreadable)."""
    try:
        if os.path.getsize(path) > MAX_CAPTURE_BYTES:
            return None
        with open(path, encoding="utf-8") as f:
            doc = json.load(f)
    except (OSError, ValueError):
        return None
    return doc if isinstance(doc, dict) and isinstance(doc.get("options"), list) else None


def entries_from(doc: Mapping[str, Any], launch: Mapping[str, ConfigEntry]) -> dict[str, Any]:
    """Config entries from a capture document (``read_capture``), given the launch config."""
    rules = active_rules()
    out: dict[str, ConfigEntry] = {}
    for opt in doc.get("options", []):
        if not isinstance(opt, dict) or not isinstance(opt.get("key"), str) or not opt["key"]:
            continue
        key = opt["key"]
        try:
            value = cfg.plain(key, opt.get("value"), rules)
        except Exception:  # not storable after all: its text
            value = cfg.plain(key, repr(opt.get("value")), rules)
        if opt.get("given"):
            out[key] = ConfigEntry(value=value, source="argv")
            continue
        before = launch.get(key)
        if before is not None and before.source.startswith(("file:", "env:")):
            if before.value == value:
                continue  # the script's default came from that file or variable
        out[key] = ConfigEntry(value=value, source="default")
    return out


class ArgvCapture:
    """One command's capture: its private directory and the thread that records the options
    as they arrive (``_Watch``)."""

    def __init__(self, store: Store, rec: RunRecord) -> None:
        self.dir = tempfile.mkdtemp(prefix="runrec-argv-")  # mode 0700
        self.path = os.path.join(self.dir, "argv.json")
        self.watch = _Watch(self.path, store, rec.run_id, dict(rec.config))
        self._finalizer = weakref.finalize(self, _close, self.watch.stop, self.dir)
        shutil.copyfile(SITE_SOURCE, os.path.join(self.dir, "sitecustomize.py"))

    def finish(self) -> dict[str, ConfigEntry]:
        """Stop watching; the entries not recorded yet; the directory is removed."""
        try:
            return self.watch.finish()
        finally:
            self._finalizer()


def _close(stop: threading.Event, folder: str) -> None:
    stop.set()
    shutil.rmtree(folder, ignore_errors=True)


class _Watch:
    """Looks at the capture file every ``POLL_S`` and writes what changed as a ``config``
    version; ``finish`` returns what is left for the end version."""

    def __init__(self, path: str, store: Store, run_id: str, launch: dict[str, Any]) -> None:
        self.path, self.store, self.run_id, self.launch = path, store, run_id, launch
        self.recorded: dict[str, ConfigEntry] = {}
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._loop, name="runrec-argv", daemon=True)

    def _changed(self) -> dict[str, ConfigEntry]:
        """The entries that differ from what is recorded, from the file if the command wrote
        it since the last look. The file is taken (renamed) before it is read and removed
        after: a later write is a new file, and no option value stays on the node."""
        taken = self.path + ".taken"
        try:
            os.replace(self.path, taken)
        except OSError:
            return {}
        doc = read_capture(taken)
        try:
            os.unlink(taken)
        except OSError:
            pass
        found = entries_from(doc, self.launch) if doc else {}
        return {k: e for k, e in found.items() if self.recorded.get(k) != e}

    def _loop(self) -> None:
        while not self.stop.wait(POLL_S):
            new = self._changed()
            if not new:
                continue
            try:
                self.store.write_version(self.run_id, "config", to_patch(config=new), role="job")
                self.recorded.update(new)
            except Exception:  # the end version carries them instead
                pass

    def finish(self) -> dict[str, ConfigEntry]:
        self.stop.set()
        if self.thread.is_alive():
            self.thread.join()
        return self._changed()


def prepare(env: dict[str, str], rec: RunRecord, store: Store) -> ArgvCapture | None:
    """Set up the capture for the command of ``rec`` in ``env`` (its environment) and start
    watching for it, or None when it is off (``Entrypoint.capture_args``,
    ``RUNREC_CAPTURE_ARGPARSE=0``), on a rank other than 0, or cannot be set up (no writable
    temporary directory: the run goes on without it)."""
    ep = rec.entrypoint
    if ep is None or not ep.capture_args or not enabled(None, env):
        return None
    if env.get("RUNREC_RANK", "0") not in ("", "0"):
        return None
    try:
        cap = ArgvCapture(store, rec)
    except OSError:
        return None
    old = env.get("PYTHONPATH")
    env["PYTHONPATH"] = cap.dir + (os.pathsep + old if old else "")
    env[argparse_site.ENV_PATH] = cap.path
    env[argparse_site.ENV_PPID] = str(os.getpid())
    cap.watch.thread.start()
    return cap


def collect(cap: ArgvCapture | None) -> dict[str, Any]:
    """The end patch's part for the command's parsed options (``{"config": ...}``; ``{}`` when
    nothing was captured or ``config`` versions hold it all already)."""
    if cap is None:
        return {}
    found = cap.finish()
    return to_patch(config=found) if found else {}
