"""The user's code of every fidelity-matrix cell, the same for both entry kinds: a function
(``cell``, submitted with ``Executor.submit``, pickled by value) and a script (this file, copied
into the test repository as ``train.py`` and run as ``python3 train.py --facts ... --lr ...``).

It loads the fake CUDA libraries the test built (ctypes), writes the facts of the process that
runs it as the test's ground truth (``facts``), prints a marker line to stderr, then ends the
way the cell asks: ``succeeded`` returns / exits 0, ``raised`` raises ValueError / exits 3,
``killed`` and ``cancelled`` sleep until the scheduler, runrec's watchdog or the cancel ends it.

Only the standard library: the command runs under whatever ``python3`` the node's PATH gives."""

from __future__ import annotations

import argparse
import ctypes
import importlib.metadata
import json
import os
import platform
import shutil
import socket
import sys
import time

LIBS = ("libcudart.so.12.4.127", "libcudnn.so.9", "libnccl.so.2")
EXIT_RAISED = 3
_loaded: list[ctypes.CDLL] = []  # kept: the libraries stay mapped for the life of the process


def _version(dist: str) -> str | None:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None


def _mapped(names: tuple[str, ...]) -> list[str]:
    """The paths of ``names`` as this process's own /proc/self/maps shows them."""
    out: list[str] = []
    with open("/proc/self/maps", encoding="utf-8", errors="replace") as f:
        for line in f:
            parts = line.rstrip("\n").split(None, 5)
            if len(parts) == 6 and os.path.basename(parts[5]) in names and parts[5] not in out:
                out.append(parts[5])
    return out


def facts(path: str, libs_dir: str) -> dict:
    """Load the fake libraries, then write this process's facts to ``path`` (atomically)."""
    for name in LIBS:
        _loaded.append(ctypes.CDLL(os.path.join(libs_dir, name)))
    try:
        parent_exe = os.readlink(f"/proc/{os.getppid()}/exe")
    except OSError:
        parent_exe = None
    out = {
        "pid": os.getpid(),
        "executable": sys.executable,
        "python_version": platform.python_version(),
        "packages": {d: _version(d) for d in ("msgspec", "pip")},
        "hostname": socket.gethostname(),
        "cpu_count": os.cpu_count(),
        "cpus_allowed": len(os.sched_getaffinity(0)),
        "python3_on_path": shutil.which("python3"),
        "parent_exe": parent_exe,
        "maps": _mapped(LIBS),
    }
    tmp = f"{path}.tmp"
    with open(tmp, "w") as f:
        json.dump(out, f)
    os.replace(tmp, path)
    return out


def _finish(outcome: str, marker: str) -> None:
    print(marker, file=sys.stderr, flush=True)
    if outcome in ("killed", "cancelled"):
        time.sleep(600)


def cell(facts_path: str, outcome: str, marker: str, libs_dir: str, lr=0.1, epochs=3):
    """The function entry."""
    facts(facts_path, libs_dir)
    _finish(outcome, marker)
    if outcome == "raised":
        raise ValueError(marker)
    return {"lr": lr, "epochs": epochs, "marker": marker}


def main(argv: list[str] | None = None) -> int:
    """The command entry (argparse, as a training script has it)."""
    p = argparse.ArgumentParser()
    p.add_argument("--facts", required=True)
    p.add_argument("--outcome", required=True)
    p.add_argument("--marker", required=True)
    p.add_argument("--libs", required=True)
    p.add_argument("--lr", type=float, default=0.1)
    p.add_argument("--epochs", type=int, default=3)
    a = p.parse_args(argv)
    facts(a.facts, a.libs)
    _finish(a.outcome, a.marker)
    return EXIT_RAISED if a.outcome == "raised" else 0


if __name__ == "__main__":
    sys.exit(main())
