"""runrec-cluster: record every R&D run while it happens, on local, Slurm and Ray."""

from runrec_cluster.api import Executor, RunHandle, load
from runrec_cluster.capture.data import Dataset
from runrec_cluster.capture.inputs import Artifact
from runrec_cluster.errors import (
    AmbiguousRunId,
    BackendError,
    ConfigError,
    CorruptRecord,
    DatasetError,
    JobFailed,
    JobTimeout,
    LineageError,
    PromotionError,
    RecordNotFound,
    RerunError,
    RunrecError,
    StoreError,
)
from runrec_cluster.job.run import Run, current_run
from runrec_cluster.query.select import query
from runrec_cluster.record import SCHEMA_VERSION, FailureCause, RunRecord, RunState
from runrec_cluster.rerun.core import rerun
from runrec_cluster.store import Store
from runrec_cluster.version import __version__

__all__ = [
    "SCHEMA_VERSION",
    "AmbiguousRunId",
    "Artifact",
    "BackendError",
    "ConfigError",
    "CorruptRecord",
    "Dataset",
    "DatasetError",
    "Executor",
    "FailureCause",
    "JobFailed",
    "JobTimeout",
    "LineageError",
    "PromotionError",
    "RecordNotFound",
    "RerunError",
    "Run",
    "RunHandle",
    "RunRecord",
    "RunState",
    "RunrecError",
    "Store",
    "StoreError",
    "__version__",
    "current_run",
    "load",
    "query",
    "rerun",
]
