"""The drop-in's job errors: submitit's classes and runrec's at once.

    submitit.core.utils.FailedJobError (RuntimeError)  +  runrec JobFailed
    └── FailedJobError        the function raised (or a command exited non-zero)
    submitit.core.utils.UncompletedJobError (RuntimeError)  +  runrec JobFailed
    └── UncompletedJobError   the job ended without a result: time limit, cancel, out of memory,
                              preemption without requeue, a killed process, a node failure

``except submitit.core.utils.FailedJobError`` (code that still imports submitit's own module)
and ``except rr.JobFailed`` both catch them; ``.run_id`` and ``.failure`` say which run and why.
"""

from __future__ import annotations

from submitit.core import utils as submitit_utils

from runrec_cluster.errors import JobFailed


class FailedJobError(submitit_utils.FailedJobError, JobFailed):
    """The job's function raised; the message holds the traceback recorded in the job."""

    def __init__(self, message: str, *, run_id: str, failure: object | None = None) -> None:
        JobFailed.__init__(self, message, run_id=run_id, failure=failure)


class UncompletedJobError(submitit_utils.UncompletedJobError, JobFailed):
    """The job ended without a result (the record says how: state and cause)."""

    def __init__(self, message: str, *, run_id: str, failure: object | None = None) -> None:
        JobFailed.__init__(self, message, run_id=run_id, failure=failure)
