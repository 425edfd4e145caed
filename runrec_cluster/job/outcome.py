"""The end of a run, written by the job: the result (``encode_result``), the failure
(``record_failure``), and the end version itself (``write_end``).

When the store refuses the end of a run (disk full, read-only), the end record and the result
are saved in a rescue directory laid out like a store (``rescue_dirs``: under the job's log
directory, else ``~``, else ``$TMPDIR``: ``runrec-rescue/<run_id>/``), and the error says where
and how to copy them in (``cp -rn``).
"""

from __future__ import annotations

import os
import reprlib
import secrets
import shlex
import socket
import traceback
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import cloudpickle
import msgspec

from runrec_cluster.capture.redact import redact_text
from runrec_cluster.errors import SecretsUnavailable, StoreError
from runrec_cluster.record import (
    SCHEMA_VERSION,
    Failure,
    FailureCause,
    RecordVersion,
    ResultRef,
    RunState,
    Writer,
    end_patch,
)
from runrec_cluster.store import Store, codec, fs, layout

RESCUE_DIR = "runrec-rescue"


def now() -> datetime:
    return datetime.now(UTC)


def _summary(value: Any) -> str:
    """A short repr of a result, never built whole (a 1 GB bytes result has a 4 GB repr)."""
    r = reprlib.Repr()
    r.maxstring = r.maxother = 200
    r.maxlong = 60
    try:
        if isinstance(value, (bytes, bytearray, memoryview)):
            summary = f"<{type(value).__name__} of {len(value):,} bytes: {bytes(value[:60])!r}>"
        else:
            summary = r.repr(value)
    except Exception as exc:  # a __repr__ that raises: the result is still kept
        summary = f"<{type(value).__name__}: repr failed: {exc}>"
    return summary if len(summary) <= 200 else summary[:197] + "..."


def encode_result(store: Store, value: Any) -> ResultRef:
    """Store a function's result as a blob: msgpack when it can be, else a pickle."""
    tname = f"{type(value).__module__}.{type(value).__qualname__}"
    summary = _summary(value)
    try:
        blob = store.put_blob(codec.encode_raw(value))
        return ResultRef(blob=blob, format="msgpack", type=tname, summary=summary)
    except (TypeError, msgspec.EncodeError, OverflowError):
        blob = store.put_blob(cloudpickle.dumps(value))
        return ResultRef(blob=blob, format="pickle", type=tname, summary=summary)


def record_failure(
    store: Store,
    run_id: str,
    rank: int,
    exc: BaseException,
    log_dir: str | None = None,
    extra: dict[str, Any] | None = None,
) -> None:
    """Record that the function raised ``exc``: the end of the run on rank 0 (its cause from the
    exception's type, the message and traceback redacted), a warning on another rank; ``extra``
    goes into the same version (the loaded libraries: ``job.libs``)."""
    if isinstance(exc, KeyboardInterrupt):
        cause, state = FailureCause.CANCELLED, RunState.CANCELLED
    elif isinstance(exc, MemoryError):
        cause, state = FailureCause.OUT_OF_MEMORY, RunState.FAILED
    elif isinstance(exc, SecretsUnavailable):  # the withheld values are not on this node
        cause, state = FailureCause.INFRASTRUCTURE, RunState.FAILED
    elif isinstance(exc, (FileNotFoundError, UnicodeDecodeError)) or type(exc).__name__ in (
        "ParserError",
        "EmptyDataError",
    ):
        cause, state = FailureCause.DATA_PROBLEM, RunState.FAILED
    else:
        cause, state = FailureCause.CODE_ERROR, RunState.FAILED
    failure = Failure(
        cause=cause,
        type=f"{type(exc).__module__}.{type(exc).__qualname__}".removeprefix("builtins."),
        message=redact_text(str(exc)),  # a database URL in an error message...
        traceback=redact_text("".join(traceback.format_exception(exc))),
        source="job",
    )
    if rank != 0:
        store.write_version(
            run_id,
            "rank-failure",
            {
                **(extra or {}),
                "warnings": [f"rank {rank} failed: {failure.type}: {failure.message}"],
            },
            role="job",
        )
        return
    patch = {**(extra or {}), **end_patch(failure, source="job", state=state)}
    write_end(store, run_id, log_dir, lambda _s: patch)


# -- when the store cannot take the end of a run (disk full, read-only, gone) ------------------


def rescue_dirs(run_id: str, log_dir: str | None) -> list[str]:
    """Where a job saves its end record and result when the store refuses them, in the order
    tried: ``<base>/runrec-rescue/<run_id>`` for the job's log directory, the home directory
    (shared with the submit host on most clusters), then $TMPDIR (often node-local and wiped
    when the job ends: the last resort)."""
    bases = [log_dir] if log_dir else []
    bases += [os.path.expanduser("~"), os.environ.get("TMPDIR") or "/tmp"]
    out: list[str] = []
    for b in bases:
        d = os.path.join(b, RESCUE_DIR, run_id)
        if d not in out:
            out.append(d)
    return out


def rescue_message(store_root: str, run_id: str, where: str) -> str:
    """What the job saved in ``where`` and the command that copies it into the store."""
    src = shlex.quote(os.path.join(where, "store")) + "/."
    return (
        f"The job saved the end record and result of run {run_id} in {where} instead of the "
        f"store. Once the store has space (or is writable again), copy them in with "
        f"`cp -rn {src} {shlex.quote(store_root)}/` (see {os.path.join(where, 'README.txt')})"
    )


def find_rescue(store: Store, run_id: str) -> str | None:
    """The rescue directory a job of this run left on this machine (``rescue_dirs``), or None."""
    try:
        rec = store.load(run_id)
        log_dir = rec.execution.log_dir if rec.execution else None
    except Exception:
        log_dir = None
    for d in rescue_dirs(run_id, log_dir or store.log_dir(run_id)):
        if os.path.isfile(os.path.join(d, "README.txt")):
            return d
    return None


def write_end(
    store: Store, run_id: str, log_dir: str | None, make_patch: Callable[[Store], dict[str, Any]]
) -> None:
    """Write the end version; ``make_patch(s)`` builds its patch, putting blobs (the result) in
    ``s``. When the store refuses it (disk full, read-only), the same version and its blobs are
    saved under a rescue directory (``rescue_dirs``) laid out like a store, and the
    ``StoreError`` raised says where and how to copy them in."""
    try:
        store.write_version(run_id, "end", make_patch(store), role="job")
        return
    except StoreError as exc:
        failed = exc
    tried = []
    for d in rescue_dirs(run_id, log_dir):
        try:
            _save_rescue(store, run_id, d, make_patch, failed)
        except (OSError, StoreError) as exc:
            tried.append(f"{d}: {exc}")
            continue
        raise StoreError(
            f"cannot write the end of run {run_id} to the store {store.root}: {failed}. "
            + rescue_message(store.root, run_id, d)
            + "."
        ) from failed
    raise StoreError(
        f"cannot write the end of run {run_id} to the store {store.root}: {failed}; nor save it "
        f"anywhere else ({'; '.join(tried)}). Its outcome is lost: free space and run it again."
    ) from failed


def _save_rescue(
    store: Store,
    run_id: str,
    where: str,
    make_patch: Callable[[Store], dict[str, Any]],
    failed: StoreError,
) -> None:
    rescue = Store(os.path.join(where, "store"), fsync=store.fsync)
    patch = make_patch(rescue)  # the result blob lands in the rescue store
    seq = 1  # the number the store would have given it
    for path in store.version_files(run_id):
        m = layout.VERSION_RE.match(os.path.basename(path))
        if m:
            seq = max(seq, int(m.group(1)) + 1)
    version = RecordVersion(
        schema_version=SCHEMA_VERSION,
        run_id=run_id,
        seq=seq,
        written_at=now(),
        writer=Writer(host=socket.gethostname(), pid=os.getpid(), role="job"),
        event="end",
        patch=patch,
    )
    name = layout.version_name(seq, secrets.token_hex(6))
    fs.write_atomic(os.path.join(layout.run_dir(rescue.root, run_id), name), codec.encode(version))
    src = shlex.quote(rescue.root) + "/."
    readme = (
        f"runrec: the store {store.root} could not take the end of run {run_id}:\n"
        f"  {failed}\n\n"
        f"Its end record (state {patch.get('state', '?')}) and its result are saved here, laid "
        f"out like a store:\n  {rescue.root}\n"
        f"Once the store has space (or is writable again), copy them in (-n: nothing in the "
        f"store is overwritten):\n  cp -rn {src} {shlex.quote(store.root)}/\n"
        f"Then `runrec show {run_id}` shows the outcome and the result, `runrec index "
        f"--rebuild` updates the query index, and this directory can be deleted.\n"
    )
    fs.write_atomic(os.path.join(where, "README.txt"), readme.encode(), mode=0o644)
