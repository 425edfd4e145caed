"""TODO-DOC"""

from __future__ import annotations

import os

from runrec_cluster.errors import LineageError, RunrecError
from runrec_cluster.record import Retirement, RunRecord, fold
from runrec_cluster.store import Store, codec, fs
from runrec_cluster.store import layout as ll


def load_records(store: Store, problems: list[str] | None = None) -> list[RunRecord]:
    """Every run that folds, read-only (no backend is asked anything)."""
    from runrec_cluster.store import ReadProblem

    out = []
    for run_id in store.run_ids():
        probs: list[ReadProblem] = []
        vs = store.versions(run_id, probs)
        if problems is not None:
            problems += [f"skipped unreadable record file {p.path}: {p.message}" for p in probs]
        if not vs:
            continue
        try:
            out.append(fold(vs))
        except Exception as exc:  # a version that decodes but does not fold
            if problems is not None:
                problems.append(f"run {run_id} does not fold into a record ({exc})")
    return out


def list_retirements(store: Store, problems: list[str] | None = None) -> list[Retirement]:
    """Every readable retirement record, oldest first. Unreadable files go to ``problems``."""
    d = ll.retirements_dir(store.root, LineageError)
    try:
        names = sorted(os.listdir(d))
    except FileNotFoundError:
        return []
    out = []
    for n in names:
        if not ll.RETIREMENT_FILE_RE.match(n):
            continue
        path = os.path.join(d, n)
        try:
            out.append(codec.decode(fs.read_bytes(path), Retirement, path))
        except (RunrecError, OSError) as exc:
            if problems is not None:
                problems.append(f"skipped unreadable retirement record {path}: {exc}")
    return out
