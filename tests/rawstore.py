"""Read a run's record files the way an outside tool would: zstd + msgpack, no runrec code.

The unattended tests (a submitter that exits or is killed right after submit) must prove that
the verdict is *in the files* without any runrec command having been run. This module decodes
the documented layout (docs/store-layout.md) with ``zstandard`` and ``msgspec.msgpack`` only:

    STORE/runs/<first 5 chars of run id>/<run id>/v<seq>-<writer>.msgpack.zst
    STORE/packs/<first 5 chars of run id>/<pack id>.pack   (launch packs, `runrec pack`)

A pack (docs/store-layout.md, *Packs*): the magic ``RRPACK1\n``, zstd frames of msgpack
``{run_id: [[file name, version msgpack], ...]}``, an index frame ``{"format": 1, "chunks":
[[offset, length], ...], "runs": {run_id: [chunk, highest seq]}}``, then the index's offset and
length (two little-endian uint64) and the magic again. A version lying both loose and in a pack
(same file name) is one version.

``raw_verdict`` is what a dashboard reading those files concludes, by the documented rule
(docs/record-schema.md): versions in (seq, written_at) order; the newest attempt; among its
terminal versions a specific cause (out of memory, timeout, cancelled, preempted, node failure)
wins over a bare ``killed``; otherwise the last terminal version.
"""

import datetime as _dt
import glob
import os
import struct

import msgspec
import zstandard

MAGIC = b"RRPACK1\n"

TERMINAL = ("succeeded", "failed", "cancelled")
SPECIFIC = ("out_of_memory", "timeout", "node_failure", "preempted", "cancelled")


def _unzstd(data: bytes) -> bytes:
    return zstandard.ZstdDecompressor().decompress(data, max_output_size=1 << 28)


def raw_pack(path: str) -> dict[str, list[tuple[str, bytes]]]:
    """Every run of one pack file: run id -> [(version file name, version msgpack bytes)]."""
    with open(path, "rb") as f:
        data = f.read()
    if data[: len(MAGIC)] != MAGIC or data[-len(MAGIC) :] != MAGIC:
        raise ValueError(f"{path} is not a whole pack")
    off, length = struct.unpack("<QQ", data[-len(MAGIC) - 16 : -len(MAGIC)])
    index = msgspec.msgpack.decode(_unzstd(data[off : off + length]))
    out: dict[str, list[tuple[str, bytes]]] = {}
    for c_off, c_len in index["chunks"]:
        for rid, entries in msgspec.msgpack.decode(_unzstd(data[c_off : c_off + c_len])).items():
            out.setdefault(rid, []).extend((name, raw) for name, raw in entries)
    return out


def raw_packs(store: str, shard: str) -> list[str]:
    """The pack files of one shard (paths)."""
    return sorted(glob.glob(os.path.join(str(store), "packs", shard, "*.pack")))


def raw_versions(store: str, run_id: str) -> list[dict]:
    """Every version of the run, loose files first, then packs (a version in both once),
    decoded, in (seq, written_at) order."""
    d = os.path.join(str(store), "runs", run_id[:5], run_id)
    out = []
    seen = set()
    for path in glob.glob(os.path.join(d, "v*.msgpack.zst")):
        try:
            with open(path, "rb") as f:
                raw = _unzstd(f.read())
        except FileNotFoundError:
            continue  # packed meanwhile: found in its pack below
        v = msgspec.msgpack.decode(raw)
        v["_path"] = path
        seen.add(os.path.basename(path))
        out.append(v)
    for pack in raw_packs(store, run_id[:5]):
        for name, raw in raw_pack(pack).get(run_id, []):
            if name not in seen:
                seen.add(name)
                v = msgspec.msgpack.decode(raw)
                v["_path"] = f"{pack}#{run_id}/{name}"
                out.append(v)
    out.sort(key=lambda v: (v["seq"], str(v["written_at"])))
    return out


def raw_run_ids(store: str) -> set[str]:
    """Every run id of the store: loose run directories and the runs of every pack."""
    out = {os.path.basename(d) for d in glob.glob(os.path.join(str(store), "runs", "*", "*"))}
    for pack in glob.glob(os.path.join(str(store), "packs", "*", "*.pack")):
        out |= set(raw_pack(pack))
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
