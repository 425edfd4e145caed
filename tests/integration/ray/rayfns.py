"""Job functions only the Ray tests submit (pickled by value, see conftest)."""

from __future__ import annotations

import os
import time


def crash(code=1):
    """The worker process dies without finishing the record (as a segfault or kill would)."""
    os._exit(code)


def crash_on_first_attempt(marker):
    if not os.path.exists(marker):
        with open(marker, "w") as f:
            f.write("first attempt")
        os._exit(1)
    return "second attempt"


def hog_memory():
    """Allocate (and touch) memory until the node's memory monitor kills the worker."""
    blocks = []
    while True:
        b = bytearray(200 * 2**20)
        for i in range(0, len(b), 4096):
            b[i] = 1
        blocks.append(b)
        time.sleep(0.05)


def cwd():
    return os.getcwd()


def case(kind):
    """One unattended-test case by name: "ok" returns, "raise" raises, "crash" kills the
    worker, anything else sleeps (until cancelled)."""
    if kind == "ok":
        return 5
    if kind == "raise":
        raise ValueError("bad value, on purpose")
    if kind == "crash":
        os._exit(1)
    time.sleep(300)
