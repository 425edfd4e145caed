"""runrec's own time limit, for backends without one (local, Ray): a timer that kills the
command's process group, records TIMEOUT and ends the job process."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
from collections.abc import Callable
from typing import Any

from runrec_cluster.record import Failure, FailureCause, end_patch
from runrec_cluster.store import Store

TIMEOUT_EXIT = 124  # the job process's exit code when the watchdog stopped it (as timeout(1))


class Watchdog:
    """Our own time limit (backends without one: local, ray). Records TIMEOUT, then exits."""

    def __init__(
        self, store: Store, run_id: str, timeout_s: float, child: list[subprocess.Popen[bytes]]
    ) -> None:
        self.store, self.run_id, self.timeout_s, self.child = store, run_id, timeout_s, child
        # more fields for the end version, asked before the kill (the loaded libraries: a last
        # sample of the tree while it still lives; ``job.libs``)
        self.end_fields: Callable[[], dict[str, Any]] | None = None
        self.timer = threading.Timer(timeout_s, self._fire)
        self.timer.daemon = True

    def start(self) -> None:
        self.timer.start()

    def cancel(self) -> None:
        self.timer.cancel()

    def _fire(self) -> None:
        extra: dict[str, Any] = {}
        if self.end_fields is not None:
            try:
                extra = self.end_fields()
            except Exception:  # the time limit is enforced whatever happens here
                extra = {}
        for p in self.child:
            try:
                os.killpg(p.pid, signal.SIGKILL)
            except OSError:
                pass
        failure = Failure(
            cause=FailureCause.TIMEOUT,
            type="Timeout",
            message=f"the run exceeded its time limit of {self.timeout_s:g} s (timeout_min) and was stopped by runrec",
            source="job",
        )
        try:
            self.store.write_version(
                self.run_id,
                "end",
                {**extra, **end_patch(failure, source="job")},
                role="job",
            )
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(TIMEOUT_EXIT)
