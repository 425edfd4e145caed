"""Negative results: what a person concluded about a run, kept in the run's own history.

A failed run is a record, not a gap: its failure kind (``Failure.cause``: code error, out of
memory, timeout, node failure, cancelled, data problem...) comes from what was recorded.
``annotate`` adds what a person concluded (an invalid configuration, an unstable dependency, a
bad hypothesis) as a new version of the run (event ``annotate``, writer role ``cli``); the fold
appends it to ``RunRecord.annotations``. Earlier versions are never rewritten.

``is_negative`` is the one rule of a negative result (also the ``negative`` query column): the
latest verdict is ``negative``, or the run failed and nobody has given a verdict yet.
``negatives`` lists them.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime

from runrec_cluster.capture.proc import current_user
from runrec_cluster.errors import ConfigError
from runrec_cluster.record import Annotation, RunRecord, RunState, to_patch
from runrec_cluster.store import Store, layout

VERDICTS = ("negative", "positive", "inconclusive")
BLOCKS = ("run", "future-work")
MAX_NOTE = 4000


def annotate(
    store: Store,
    run: str,
    *,
    verdict: str,
    note: str,
    blocks: str | None = None,
    by: str | None = None,
) -> tuple[str, Annotation]:
    """Append a verdict to a run (id or unique prefix); returns (run id, annotation)."""
    if verdict not in VERDICTS:
        raise ConfigError(f"verdict {verdict!r} is not one of {', '.join(VERDICTS)}.")
    if blocks is not None and blocks not in BLOCKS:
        raise ConfigError(f"--blocks {blocks!r} is not one of {', '.join(BLOCKS)}.")
    if not isinstance(note, str) or not note.strip():
        raise ConfigError(
            "an annotation needs a note (--note TEXT): what you concluded, e.g. 'lr 0.4 diverges "
            "with batch 32; do not retry without warmup'."
        )
    if len(note) > MAX_NOTE:
        raise ConfigError(f"the note is longer than {MAX_NOTE} characters; shorten it.")
    rid = store.resolve(run)
    a = Annotation(
        id=layout.new_id(),
        verdict=verdict,  # type: ignore[arg-type]
        blocks=blocks,  # type: ignore[arg-type]
        note=note.strip(),
        by=by or current_user(),
        at=datetime.now(UTC),
    )
    store.write_version(rid, "annotate", to_patch(annotations=[a]), role="cli")
    return rid, a


def latest_verdict(rec: RunRecord) -> Annotation | None:
    """The last annotation in the run's history (the fold keeps them in version order)."""
    return rec.annotations[-1] if rec.annotations else None


@dataclass
class Negative:
    record: RunRecord
    verdict: Annotation | None  # None: failed, no verdict given yet

    @property
    def notes(self) -> list[Annotation]:
        return list(self.record.annotations)


def is_negative(rec: RunRecord) -> bool:
    """A negative result: the latest verdict is negative, or it failed with no verdict."""
    v = latest_verdict(rec)
    return v.verdict == "negative" if v is not None else rec.state == RunState.FAILED


def negatives(records: list[RunRecord]) -> list[Negative]:
    """Runs whose latest verdict is negative, and failed runs without a verdict."""
    return [Negative(r, latest_verdict(r)) for r in records if is_negative(r)]
