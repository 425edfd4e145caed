"""The job side of a rerun of a function run: ``RerunCall``, what the rerun's job calls.

It travels pickled by reference to this module (older pickles name
``runrec_cluster.rerun.RerunCall``, which the package re-exports).
"""

from __future__ import annotations

import importlib
import os
import sys
from collections.abc import Mapping
from typing import Any

import cloudpickle

from runrec_cluster.rerun.overrides import apply_overrides


class RerunCall:
    """What the job of a rerun of a function run calls (it travels pickled by reference to
    this module): the function imported by name from the materialized code (or the one in the
    original's pickled call), called with the recorded arguments and the config overrides."""

    def __init__(
        self,
        call: bytes,
        function: str,
        load: str,
        path: str | None,
        cwd: str | None,
        overrides: Mapping[str, Any],
    ) -> None:
        self.call = call  # the original's pickled (fn, args, kwargs), unopened until the job
        self.function = function
        self.load = load
        self.path = path
        self.cwd = cwd
        self.overrides = dict(overrides)

    def __repr__(self) -> str:
        return f"RerunCall({self.function!r}, load={self.load!r})"

    def __call__(self) -> Any:
        saved_cwd, saved_path = os.getcwd(), list(sys.path)
        top = self.function.partition(":")[0].split(".")[0]
        swapped: dict[str, Any] = {}
        try:
            if self.cwd and os.path.isdir(self.cwd):
                os.chdir(self.cwd)
            if self.load == "name" and self.path:
                # a reused worker (Ray) may hold another version of the module: set it aside
                swapped = {
                    k: sys.modules.pop(k)
                    for k in list(sys.modules)
                    if k == top or k.startswith(top + ".")
                }
                sys.path.insert(0, self.path)
                mod_name, _, qual = self.function.partition(":")
                fn: Any = importlib.import_module(mod_name)
                for part in qual.split("."):
                    fn = getattr(fn, part)
                _, args, kwargs = cloudpickle.loads(self.call)
            else:
                fn, args, kwargs = cloudpickle.loads(self.call)
            args, kwargs = apply_overrides(fn, tuple(args), dict(kwargs), self.overrides)
            return fn(*args, **kwargs)
        finally:
            try:
                os.chdir(saved_cwd)
            except OSError:
                pass
            sys.path[:] = saved_path
            if self.load == "name":
                for k in [k for k in sys.modules if k == top or k.startswith(top + ".")]:
                    del sys.modules[k]
                sys.modules.update(swapped)
