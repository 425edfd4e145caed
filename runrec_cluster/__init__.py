"""runrec-cluster: record every R&D run while it happens, on local, Slurm and Ray.

The public API is this module's ``__all__`` (guarded by a test): submitting (``Executor``,
``RunHandle``, ``Dataset``, ``Artifact``, ``ConfigFile``, ``ConfigEnv``), reading (``Store``,
``load``, ``query``), the run's own side (``current_run``, ``Run``), reruns (``rerun``,
``rerun_sweep``), lineage and trust (``lineage``, ``annotate``, ``promote``, ``verify``,
``retire``) and every error these raise.
The CLI uses the library through these same functions.
"""

from runrec_cluster.api import Executor, RunHandle, load
from runrec_cluster.capture.config_sources import ConfigEnv, ConfigFile
from runrec_cluster.capture.data import Dataset
from runrec_cluster.capture.inputs import Artifact
from runrec_cluster.errors import (
    AmbiguousRunId,
    BackendError,
    ConfigError,
    CorruptRecord,
    CriteriaSyntaxError,
    DatasetError,
    ExpressionError,
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
from runrec_cluster.lineage.annotate import annotate
from runrec_cluster.lineage.promote import promote, verify
from runrec_cluster.lineage.retire import retire
from runrec_cluster.lineage.walk import Lineage, lineage
from runrec_cluster.query.select import query
from runrec_cluster.record import SCHEMA_VERSION, FailureCause, RunRecord, RunState
from runrec_cluster.rerun.core import rerun, rerun_sweep
from runrec_cluster.store import Store
from runrec_cluster.version import __version__

__all__ = [
    "verify",
    "retire",
    "rerun_sweep",
    "promote",
    "lineage",
    "annotate",
    "Lineage",
    "ExpressionError",
    "CriteriaSyntaxError",
    "SCHEMA_VERSION",
    "AmbiguousRunId",
    "Artifact",
    "BackendError",
    "ConfigEnv",
    "ConfigError",
    "ConfigFile",
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
