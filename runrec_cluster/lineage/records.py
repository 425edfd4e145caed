"""What lineage reads from the store: every run record (``load_records``, over
``Store.load_all``) and every retirement record (``list_retirements``), read-only, with what
could not be read reported as text in ``problems``."""

from __future__ import annotations

import os

from runrec_cluster.errors import LineageError, RunrecError
from runrec_cluster.record import Retirement, RunRecord
from runrec_cluster.store import ReadProblem, Store, codec, fs
from runrec_cluster.store import layout as ll


def load_records(store: Store, problems: list[str] | None = None) -> list[RunRecord]:
    """Every run that folds, read-only (no backend is asked anything): ``Store.load_all``, its
    problems given as text (an unreadable record file, or a run that does not fold)."""
    found: list[ReadProblem] | None = [] if problems is not None else None
    out = store.load_all(found)
    if problems is not None and found:
        problems += [problem_text(p) for p in found]
    return out


def problem_text(p: ReadProblem) -> str:
    """A ``ReadProblem`` of ``Store.load_all`` as one line for a warning."""
    if p.run_id and p.message.startswith(f"run {p.run_id} does not fold"):
        return p.message  # the run itself: the message names it
    return f"skipped unreadable record file {p.path}: {p.message}"


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
