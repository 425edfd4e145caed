"""runrec's at-exit maps hook: this file is copied into a job's private temporary directory as
``sitecustomize.py``, and that directory is put on a command's ``PYTHONPATH`` (``job/libs.py``,
``RunLibs.prepare_command``). Python imports ``sitecustomize`` at start-up (``site``), so a Python
command, and every Python program it starts in turn, reports the CUDA-side libraries it had
mapped when it ended, without any change to the script: the job's sampler reads the process
tree every so often (``capture/maps.py``), and a short command may load its libraries and exit
between two samples.

Standard library only: it runs inside the command's own interpreter, which need not have
runrec installed (nor the same Python version: 3.8 or newer). It does, when
``RUNREC_MAPS_CAPTURE`` names a directory:

1. register an ``atexit`` function (it runs when the interpreter ends normally, by
   ``sys.exit``, or of an uncaught exception; not when the process is killed by a signal or
   leaves through ``os._exit``) that reads ``/proc/self/maps``, keeps one line per mapped file
   whose name starts with one of ``MARKERS`` (the same list as ``capture.maps.LIB_MARKERS``),
   and, when there is any, writes them to ``PID.maps`` in that directory (mode 0600, replaced
   atomically) under a header line ``runrec-maps 1 PID UNIX_TIME``; nothing is written for a
   process that mapped none, except the command's own (the job's direct child,
   ``RUNREC_MAPS_CAPTURE_PPID``): its file, empty or not, says that its end was seen;
2. take its directory off ``sys.path`` (the program's imports see the path they would have),
   keep it on ``PYTHONPATH`` (the programs it starts report too), then run the
   ``sitecustomize`` that was next on ``sys.path``, if any.

A failure here never reaches the user's program: the job then records the libraries its
samples saw, and says that the end of the command was not covered (``LibSampling.gap``).
Nothing happens when the module is imported under another name (runrec's own imports).
"""

import atexit
import importlib.machinery
import os
import sys
import time

ENV_DIR = "RUNREC_MAPS_CAPTURE"  # the directory to write PID.maps in
ENV_PPID = "RUNREC_MAPS_CAPTURE_PPID"  # the job's pid: its direct child writes even no lines
MARKERS = ("libcuda", "libcudnn", "libnccl", "libnvidia-ml")  # = capture.maps.LIB_MARKERS
HEADER = "runrec-maps 1"  # = capture.maps.EXIT_MAPS_HEADER
MAX_LINES = 1000


def cuda_lines(lines):
    """One maps line per mapped file whose name starts with one of ``MARKERS``."""
    out = {}
    for line in lines:
        parts = line.rstrip(b"\n").split(None, 5)
        if len(parts) < 6 or not parts[5].startswith(b"/") or parts[5] in out:
            continue
        name = parts[5].rsplit(b"/", 1)[-1].decode("utf-8", "replace")
        if name.startswith(MARKERS):
            out[parts[5]] = line if line.endswith(b"\n") else line + b"\n"
            if len(out) >= MAX_LINES:
                break
    return list(out.values())


def write_maps(folder, always=False):
    """Write this process's CUDA-side maps lines to ``folder/PID.maps`` (none: nothing, unless
    ``always``: the command's own process says that it mapped none)."""
    try:
        with open("/proc/self/maps", "rb") as f:
            lines = cuda_lines(f)
        if not lines and not always:
            return
        pid = os.getpid()
        path = os.path.join(folder, f"{pid}.maps")
        tmp = path + ".tmp"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(f"{HEADER} {pid} {time.time():.6f}\n".encode())
            f.writelines(lines)
        os.replace(tmp, path)
    except Exception:
        pass  # never the user's problem


def _leave_sys_path():
    """Take this file's directory off sys.path (PYTHONPATH keeps it, for child processes)."""
    here = os.path.dirname(os.path.abspath(__file__))
    sys.path[:] = [p for p in sys.path if os.path.abspath(p or os.curdir) != here]


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
        _folder = os.environ.get(ENV_DIR)
        if _folder and os.path.isdir(_folder):
            atexit.register(write_maps, _folder, os.environ.get(ENV_PPID) == str(os.getppid()))
    except Exception:
        pass
    try:
        _leave_sys_path()
    except Exception:
        pass
    _chain()  # its errors are reported by site, as without runrec
