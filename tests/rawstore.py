"""Read a run's record files the way an outside tool would: zstd + msgpack, no runrec code.

The unattended tests (a submitter that exits or is killed right after submit) must prove that
the verdict is *in the files* without any runrec command having been run. This module decodes
the documented layout (docs/store-layout.md) with ``zstandard`` and ``msgspec.msgpack`` only:

    STORE/runs/<first 5 chars of run id>/<run id>/v<seq>-<writer>.msgpack.zst

``raw_verdict`` is what a dashboard reading those files concludes, by the documented rule
(docs/record-schema.md): versions in (seq, written_at) order; the newest attempt; among its
terminal versions a specific cause (out of memory, timeout, cancelled, preempted, node failure)
wins over a bare ``killed``; otherwise the last terminal version.
"""

import datetime as _dt
import glob
import os

import msgspec
import zstandard

TERMINAL = ("succeeded", "failed", "cancelled")
SPECIFIC = ("out_of_memory", "timeout", "node_failure", "preempted", "cancelled")


def raw_versions(store: str, run_id: str) -> list[dict]:
    """Every version file of the run, decoded, in (seq, written_at) order."""
    d = os.path.join(str(store), "runs", run_id[:5], run_id)
    out = []
    for path in glob.glob(os.path.join(d, "v*.msgpack.zst")):
        with open(path, "rb") as f:
            raw = zstandard.ZstdDecompressor().decompress(f.read(), max_output_size=1 << 28)
        v = msgspec.msgpack.decode(raw)
        v["_path"] = path
        out.append(v)
    out.sort(key=lambda v: (v["seq"], str(v["written_at"])))
    return out


def _when(v) -> _dt.datetime:
    w = v["written_at"]
    if isinstance(w, str):
        w = _dt.datetime.fromisoformat(w.replace("Z", "+00:00"))
    return w if w.tzinfo else w.replace(tzinfo=_dt.UTC)


def raw_verdict(store: str, run_id: str) -> dict | None:
    """The verdict in the files, or None while there is none:
    ``{"state", "cause", "source", "attempt", "written_at" (aware datetime), "failure", "version"}``."""
    vs = raw_versions(store, run_id)
    if not vs:
        return None
    attempt = (
        max(int(v["patch"].get("attempt", 1)) for v in vs if "state" in v["patch"])
        if any("state" in v["patch"] for v in vs)
        else 1
    )
    ends = [
        v
        for v in vs
        if v["patch"].get("state") in TERMINAL
        and int(v["patch"].get("attempt", attempt)) == attempt
    ]
    if not ends:
        return None
    specific = [v for v in ends if (v["patch"].get("failure") or {}).get("cause") in SPECIFIC]
    v = (specific or ends)[-1]
    p = v["patch"]
    failure = p.get("failure") or {}
    return {
        "state": p["state"],
        "cause": failure.get("cause"),
        "source": p.get("state_source"),
        "attempt": attempt,
        "written_at": _when(v),
        "failure": failure,
        "version": v,
    }


def raw_attempts(store: str, run_id: str) -> list[int]:
    """The attempt numbers that appear in the run's state versions, in order of first sight."""
    seen: list[int] = []
    for v in raw_versions(store, run_id):
        if "state" in v["patch"]:
            a = int(v["patch"].get("attempt", 1))
            if a not in seen:
                seen.append(a)
    return seen
