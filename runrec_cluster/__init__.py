"""runrec-cluster: record every R&D run while it happens, on local, Slurm and Ray."""

from .api import Executor, RunHandle, load
from .capture.data import Artifact, Dataset
from .errors import (
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
from .query import query
from .record import SCHEMA_VERSION, FailureCause, RunRecord, RunState
from .rerun import rerun
from .run import Run, current_run
from .store import Store

__version__ = "0.1.0"

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
