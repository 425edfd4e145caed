"""The submitit drop-in: change one line, ``import submitit`` -> ``import runrec_cluster.submitit
as submitit``, and every job submitit would have run becomes a recorded runrec run.

    executors.py   AutoExecutor, SlurmExecutor, LocalExecutor, DebugExecutor over rr.Executor
    params.py      submitit's parameter names -> rr.Executor's, and the refusals (pure)
    jobs.py        Job (over RunHandle): job_id, state words, result/exception, logs; DebugJob
    resume.py      Checkpointable semantics: checkpoint on a stop signal, resumed by the next
                   attempt of the same run
    helpers.py     submitit.helpers: Checkpointable, DelayedSubmission, CommandFunction,
                   FunctionSequence
    jobenv.py      JobEnvironment inside a job
    errors.py      FailedJobError, UncompletedJobError (submitit's classes and rr.JobFailed)

What differs from submitit, and runrec's extras: docs/adopting.md, "From submitit".
"""

from runrec_cluster.submitit import helpers
from runrec_cluster.submitit.errors import FailedJobError, UncompletedJobError
from runrec_cluster.submitit.executors import (
    AutoExecutor,
    DebugExecutor,
    DelayedJob,
    Executor,
    LocalExecutor,
    SlurmExecutor,
)
from runrec_cluster.submitit.jobenv import JobEnvironment
from runrec_cluster.submitit.jobs import DebugJob, Job, JobPaths
from runrec_cluster.submitit.params import UnsupportedParameter

__all__ = [
    "AutoExecutor",
    "DebugExecutor",
    "DebugJob",
    "DelayedJob",
    "Executor",
    "FailedJobError",
    "Job",
    "JobEnvironment",
    "JobPaths",
    "LocalExecutor",
    "SlurmExecutor",
    "UncompletedJobError",
    "UnsupportedParameter",
    "helpers",
]
