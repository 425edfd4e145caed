"""``runrec fsck``: check a store's integrity, and with ``repair`` set aside what is damaged.

``check(store)`` reads the whole store and changes nothing (``fsck/check.py``); ``repair(store)``
moves what is damaged to ``STORE/quarantine/``, records the losses in the runs, rebuilds the
query index and checks again (``fsck/repair.py``). Both return an ``FsckReport``
(``fsck/findings.py``); ``verify_blob`` and ``blob_refs`` are in ``fsck/blobs.py``.

Findings come in three severities. A *problem* makes fsck fail (exit 1). A *leftover* is
harmless and expected after a crash: temporary files (``.tmp-*``) of writers killed mid-write,
run directories a submitter created but never wrote its launch into, promoted version
directories without a record (an interrupted promotion); readers ignore all of them and fsck
does not fail on them. A *note* is information (a record written by a newer schema, a loss
already recorded by an earlier repair, a file runrec does not know). docs/fsck.md describes
every kind of finding and its repair.
"""

from __future__ import annotations

from runrec_cluster.fsck.blobs import blob_refs, verify_blob
from runrec_cluster.fsck.check import check
from runrec_cluster.fsck.findings import (
    FSCK_EVENT,
    HINTS,
    Action,
    Counts,
    Finding,
    FsckReport,
    RepairResult,
    Severity,
)
from runrec_cluster.fsck.repair import DEFAULT_MIN_AGE_S, repair
from runrec_cluster.store.layout import QUARANTINE_DIR, REPAIR_LOG

__all__ = [
    "DEFAULT_MIN_AGE_S",
    "FSCK_EVENT",
    "HINTS",
    "QUARANTINE_DIR",
    "REPAIR_LOG",
    "Action",
    "Counts",
    "Finding",
    "FsckReport",
    "RepairResult",
    "Severity",
    "blob_refs",
    "check",
    "repair",
    "verify_blob",
]
