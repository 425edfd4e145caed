"""Every exception runrec-cluster raises on purpose.

    RunrecError                 root: catch this to catch everything below
    ├── ConfigError             bad input from the user: arguments, config values, settings
    │   ├── DatasetError        a dataset or artifact path that cannot be read or hashed
    │   ├── ExpressionError     a query expression that does not parse (points at the token)
    │   └── SecretsUnavailable  a job cannot read the argument values withheld from the store
    ├── StoreError              the store cannot be opened, read or written
    │   ├── RecordNotFound      no run matches the id or prefix
    │   ├── AmbiguousRunId      a prefix matches several runs
    │   └── CorruptRecord       a record or blob file does not decode or match its hash
    ├── BackendError            a scheduler or execution backend refused or failed
    │   └── JobTimeout          wait(timeout=...) ran out before the run ended
    ├── LineageError            a lineage target, artifact reference or retirement is refused
    ├── PromotionError          a promotion is refused, or a promoted copy is not intact
    │   └── CriteriaSyntaxError promotion criteria that do not parse (also an ExpressionError)
    ├── RerunError              a rerun is refused: code not materializable, input changed, bad override
    ├── MirrorError             an outside tracking server (MLflow) cannot be reached or refuses a write
    ├── CaptureError            a probe of the code failed (a git command); recorded, not raised
    └── JobFailed               the run itself failed; result() raises this

Every message says what failed, with which input, and what to do next.
Errors from libraries are translated at the boundary (``raise StoreError(...) from exc``).
"""

from __future__ import annotations


class RunrecError(Exception):
    """Root of every error raised on purpose by runrec-cluster."""


class ConfigError(RunrecError):
    """Bad input: an argument, a config value, a setting."""


class DatasetError(ConfigError):
    """A dataset or artifact path that cannot be read or hashed."""


class ExpressionError(ConfigError):
    """A query expression that does not parse; the message points at the bad token."""

    def __init__(self, message: str, text: str, pos: int) -> None:
        caret = f"\n  {text}\n  {' ' * pos}^"
        super().__init__(f"bad expression: {message} (character {pos + 1}):{caret}")
        self.text = text
        self.pos = pos


class SecretsUnavailable(ConfigError):
    """A job cannot read the argument values its submit withheld from the store (the secrets
    file is missing on the node, unreadable, or lacks a value): docs/security.md."""


class StoreError(RunrecError):
    """The store cannot be opened, read or written."""


class RecordNotFound(StoreError):
    """No run matches the given id or prefix."""


class AmbiguousRunId(StoreError):
    """A run id prefix matches more than one run."""


class CorruptRecord(StoreError):
    """A record or blob file does not decode, or does not match its hash."""

    def __init__(self, message: str, path: str | None = None) -> None:
        super().__init__(message)
        self.path = path


class BackendError(RunrecError):
    """An execution backend (local, slurm, ray) refused or failed."""


class JobTimeout(BackendError):
    """wait(timeout=...) ran out before the run reached a terminal state."""


class LineageError(RunrecError):
    """A lineage target (run, dataset, artifact, promoted version) that matches nothing or more
    than one thing, an artifact reference that does not resolve, or a refused retirement."""


class PromotionError(RunrecError):
    """A promotion refused (criteria unmet, artifact changed, run failed or retired, bad name),
    or a promoted version that is missing or no longer intact."""


class CriteriaSyntaxError(ExpressionError, PromotionError):
    """Criteria that do not parse: a usage error like a bad ``--where`` (exit 2), and still a
    ``PromotionError`` for callers of ``promote``. The message points at the bad token."""

    EXAMPLE = "Write terms like `val_acc >= 0.9`, joined by and / or / not (see docs/promotion.md)."

    def __init__(self, message: str, text: str, pos: int) -> None:
        super().__init__(message, text, pos)
        caret = f"\n  {text}\n  {' ' * pos}^"
        self.args = (
            f"cannot read the criteria: {message} (character {pos + 1}):{caret}\n{self.EXAMPLE}",
        )


class RerunError(RunrecError):
    """A rerun refused: the recorded code cannot be materialized (commit unreachable, patch does
    not apply), a recorded input changed, or an override names an unknown key or a bad value."""


class MirrorError(RunrecError):
    """Mirroring runs into an outside tracking server failed: the server (``runrec mlflow-sync
    --tracking-uri``) cannot be reached, refuses the experiment, or refuses a write."""


class CaptureError(RunrecError):
    """Capturing the code failed (a git command exited non-zero). ``capture_code`` records it in
    the run (``CodeInfo.error``) instead of raising it: a capture problem never stops a run."""


class JobFailed(RunrecError):
    """The run failed; carries the recorded failure (type, message, traceback text)."""

    def __init__(self, message: str, *, run_id: str, failure: object | None = None) -> None:
        super().__init__(message)
        self.run_id = run_id
        self.failure = failure
