"""Fuzzing of everything that reads bytes or text a person or another machine wrote.

- Record decoding (``codec.decode``, ``Store.versions`` / ``Store.load``, ``Store.get_blob`` /
  ``get_obj``) over random bytes and mutations of real files: bit flips, truncation, insertion,
  deletion, splices, msgpack mutated inside a valid zstd frame, random msgpack, valid frames
  holding values of the wrong types, forged zstd headers and decompression bombs. The only
  exceptions allowed are the documented ones (``CorruptRecord``, ``StoreError``).
- The query expression language (``expr.py``, ``runrec ls --where``) and the promotion
  criteria (``criteria.py``, ``promote --criteria``) over random strings, mutated valid
  expressions, deep nesting, huge numbers, odd unicode and NUL: only ``ExpressionError`` /
  ``ConfigError`` (resp. ``PromotionError``); an expression that parses evaluates without an
  exception, and the row evaluator (``runrec ls``) agrees with the column evaluator (the index).

Every case runs under an alarm (``CASE_SECONDS``): a case that does not finish is a hang and
fails the test. Cases come from fixed seeds (``random.Random``, hypothesis derandomized), so
CI runs the same cases every time. The counts go to
``$RUNREC_RELIABILITY_RESULTS/<test>.json``.
"""

from __future__ import annotations

import contextlib
import copy
import glob
import hashlib
import json
import math
import os
import random
import shutil
import signal
import struct
import subprocess
import sys
import textwrap
from collections import Counter
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from typing import Any

import msgspec
import numpy as np
import zstandard
from helpers import write_figures as _results
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import runrec_cluster as rr
from runrec_cluster import expr
from runrec_cluster.errors import (
    ConfigError,
    CorruptRecord,
    ExpressionError,
    PromotionError,
    StoreError,
)
from runrec_cluster.lineage import criteria
from runrec_cluster.record import (
    CONTEXT_KEY,
    Annotation,
    ArtifactRef,
    CodeInfo,
    ConfigEntry,
    Entrypoint,
    EnvInfo,
    Execution,
    Failure,
    FailureCause,
    GPUInfo,
    InputRef,
    NodeInfo,
    RecordVersion,
    Resources,
    RunState,
    RuntimeLibs,
    fold,
    to_patch,
)
from runrec_cluster.store import codec, layout

HERE = os.path.dirname(os.path.abspath(__file__))
FIXTURE_V1 = os.path.join(HERE, "..", "fixtures", "store-v1")
CASE_SECONDS = 10  # generous: a case takes microseconds; only a hang gets near it
SEED = 20240806


class Hang(Exception):
    """A case ran past CASE_SECONDS."""


@contextlib.contextmanager
def _deadline(case: Any) -> Iterator[None]:
    def on_alarm(signum: int, frame: Any) -> None:
        raise Hang(f"case did not finish in {CASE_SECONDS} s: {case!r}"[:2000])

    old = signal.signal(signal.SIGALRM, on_alarm)
    signal.setitimer(signal.ITIMER_REAL, CASE_SECONDS)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)


class Failures:
    """Unexpected exceptions, by kind; the first few of each are shown."""

    def __init__(self) -> None:
        self.seen: dict[tuple[str, str], list[str]] = {}

    def add(self, kind: str, exc: BaseException, case: Any) -> None:
        key = (kind, type(exc).__name__)
        self.seen.setdefault(key, [])
        if len(self.seen[key]) < 3:
            self.seen[key].append(f"{exc!r}"[:300] + f"\n      case: {case!r}"[:600])

    def check(self) -> None:
        if self.seen:
            lines = [f"{k}: {len(v)} shown\n    " + "\n    ".join(v) for k, v in self.seen.items()]
            raise AssertionError("undocumented exceptions:\n" + "\n".join(lines))


# ---------------------------------------------------------------------------------------------
# Seeds: real files written by the released v1 and by today's code
# ---------------------------------------------------------------------------------------------


def _rich_patches() -> list[tuple[str, dict[str, Any]]]:
    """A run's life with most of the record filled: launch, start, metrics, artifact, end,
    annotation."""
    now = datetime(2024, 5, 1, 12, 0, tzinfo=UTC)
    return [
        (
            "launch",
            to_patch(
                name="rich",
                tags={"team": "vision", "ünï": "☃"},
                created_at=now,
                code=CodeInfo(is_repo=True, commit="a" * 40, dirty=True, branch="main"),
                entrypoint=Entrypoint(kind="command", argv=["python", "-c", "print(1)"]),
                config={
                    "lr": ConfigEntry(value=0.01, source="given"),
                    "layers": ConfigEntry(value=[64, 64, {"act": "relu"}], source="default"),
                    "seed": ConfigEntry(value=2**63, source="generated"),
                },
                inputs=[InputRef(path="/data/x", digest="sha256:" + "b" * 64, size=4)],
                launch_env=EnvInfo(python_version="3.11", python_executable="/p", platform="l"),
                execution=Execution(backend="local", resources=Resources(cpus=2, mem_gb=1.5)),
                state=RunState.SUBMITTED,
                state_source="submitter",
            ),
        ),
        (
            "start",
            to_patch(
                state=RunState.RUNNING,
                state_source="job",
                started_at=now,
                nodes=[
                    NodeInfo(
                        hostname="n1",
                        gpus=[GPUInfo(index=0, name="H100", uuid="GPU-1", memory_total_mb=80)],
                        runtime=RuntimeLibs(cuda_runtime="12.4", frameworks={"torch": "2.3"}),
                        package_drift={"numpy": ["1.26", None]},
                    )
                ],
            ),
        ),
        ("metrics", {"metrics": {"acc": 0.93, "loss": float("nan"), "curve": [1, 2.5, None]}}),
        (
            "artifact",
            to_patch(
                artifacts=[ArtifactRef(name="m", path="/o/m", digest="sha256:" + "c" * 64, size=9)]
            ),
        ),
        (
            "end",
            to_patch(
                state=RunState.FAILED,
                state_source="job",
                ended_at=now,
                failure=Failure(cause=FailureCause.OUT_OF_MEMORY, message="oom", exit_code=137),
            ),
        ),
        (
            "annotate",
            to_patch(annotations=[Annotation(id=layout.new_id(), verdict="negative", note="n")]),
        ),
    ]


def _build_store(root: str) -> tuple[rr.Store, list[str]]:
    """The v1 fixture, a rich run written now, and a sweep run whose launch names a shared
    context blob (schema v2)."""
    shutil.copytree(FIXTURE_V1, root)
    store = rr.Store(root)
    store.ensure_writable()
    rich = layout.new_id()
    for event, patch in _rich_patches():
        store.write_version(rich, event, patch)
    ctx_run = layout.new_id()
    launch = dict(_rich_patches()[0][1])
    shared = {k: launch.pop(k) for k in ("code", "launch_env", "execution", "inputs")}
    store.write_version(ctx_run, "launch", {**launch, CONTEXT_KEY: store.put_context(shared)})
    store.write_version(ctx_run, "end", to_patch(state=RunState.SUCCEEDED, state_source="job"))
    return store, sorted(store.run_ids())


def _seed_files(store: rr.Store) -> list[bytes]:
    paths = sorted(glob.glob(os.path.join(store.root, "runs", "*", "*", "*.msgpack.zst")))
    return [open(p, "rb").read() for p in paths]


# ---------------------------------------------------------------------------------------------
# Mutators
# ---------------------------------------------------------------------------------------------

_INTERESTING = [0x00, 0xFF, 0x7F, 0x80, 0xC0, 0xC1, 0xC2, 0xC4, 0xC7, 0xCB, 0xCF, 0xD3, 0xD4]
_INTERESTING += [0xD7, 0xD9, 0xDB, 0xDC, 0xDD, 0xDE, 0xDF, 0xE0, 0x90, 0x9F, 0x8F, 0xA0, 0xBF]


def _mutate_bytes(rng: random.Random, data: bytes, donors: list[bytes]) -> bytes:
    b = bytearray(data)
    for _ in range(rng.randint(1, 4)):
        op = rng.randrange(8)
        i = rng.randrange(len(b) + 1)
        if op == 0 and b:  # bit flip
            b[min(i, len(b) - 1)] ^= 1 << rng.randrange(8)
        elif op == 1 and b:  # an interesting byte (msgpack type tags)
            b[min(i, len(b) - 1)] = rng.choice(_INTERESTING)
        elif op == 2:  # truncation
            del b[i:]
        elif op == 3:  # insertion of random bytes
            b[i:i] = rng.randbytes(rng.randint(1, 24))
        elif op == 4:  # deletion of a range
            del b[i : i + rng.randint(1, 24)]
        elif op == 5 and b:  # a chunk duplicated elsewhere
            j = rng.randrange(len(b))
            b[i:i] = b[j : j + rng.randint(1, 48)]
        elif op == 6:  # splice with another file
            other = rng.choice(donors)
            j = rng.randrange(len(other) + 1)
            b = b[:i] + bytearray(other[j:])
        elif op == 7 and len(b) >= 4:  # a 32-bit length field set to something large
            j = rng.randrange(len(b) - 3)
            b[j : j + 4] = struct.pack(">I", rng.choice([0xFFFFFFFF, 0x7FFFFFFF, 1 << 24, 65536]))
    return bytes(b)


_POOL: list[Any] = [
    None, True, False, 0, -1, 2**64 - 1, -(2**63), 1.5, float("nan"), float("-inf"), "", "x",
    "running", "succeeded", "failed", "killed", "out_of_memory", "2020-01-01T00:00:00",
    "2020-01-01T00:00:00Z", "not a date", "sha256:" + "0" * 64, "sha256:zz", b"\xff\x00",
    [], [1, "a"], [{}], {}, {"a": 1}, {"cause": "killed"}, {"state": "bogus"}, {"": None},
    datetime(2020, 1, 1, tzinfo=UTC), [[[[]]]], {"k": {"k": {"k": []}}},
]  # fmt: skip
_FIELDS = [
    "state", "attempt", "failure", "config", "metrics", "nodes", "inputs", "tags", "execution",
    "started_at", "ended_at", "annotations", "warnings", "artifacts", "result", "process", "code",
    "entrypoint", "launch_env", CONTEXT_KEY, "run_id", "seq", "writer", "written_at", "patch",
    "schema_version", "zz_future",
]  # fmt: skip


def _deep(rng: random.Random, n: int) -> Any:
    x: Any = None
    for _ in range(n):
        x = [x] if rng.random() < 0.5 else {"k": x}
    return x


def _walk_mutate(rng: random.Random, o: Any) -> None:
    """Replace, drop or add one value somewhere in a decoded record: wrong types, deep
    nesting, fields that do not exist."""
    if isinstance(o, dict) and o:
        k = rng.choice(list(o))
        r = rng.random()
        if r < 0.3:
            o[k] = rng.choice(_POOL) if rng.random() < 0.9 else _deep(rng, rng.choice([40, 400]))
        elif r < 0.4:
            del o[k]
        elif r < 0.55:
            o[rng.choice(_FIELDS)] = rng.choice(_POOL)
        else:
            _walk_mutate(rng, o[k])
    elif isinstance(o, list) and o:
        i = rng.randrange(len(o))
        if rng.random() < 0.4:
            o[i] = rng.choice(_POOL)
        else:
            _walk_mutate(rng, o[i])


def _random_obj(rng: random.Random, depth: int = 0) -> Any:
    r = rng.random()
    if depth > 4 or r < 0.4:
        return rng.choice(_POOL)
    if r < 0.7:
        return {
            rng.choice(_FIELDS + ["x", ""]): _random_obj(rng, depth + 1)
            for _ in range(rng.randint(0, 6))
        }
    return [_random_obj(rng, depth + 1) for _ in range(rng.randint(0, 5))]


def _pack(obj: Any) -> bytes | None:
    try:
        return codec.compress(msgspec.msgpack.encode(obj))
    except (TypeError, ValueError, OverflowError, RecursionError, msgspec.EncodeError):
        return None


def _unpack(data: bytes) -> Any:
    """A file's msgpack content, or None (it is itself a fuzz case)."""
    try:
        return msgspec.msgpack.decode(zstandard.ZstdDecompressor().decompress(data))
    except (zstandard.ZstdError, msgspec.DecodeError, UnicodeDecodeError, RecursionError):
        return None


def _forge_size(frame: bytes, size: int) -> bytes:
    """The frame with its header replaced by one claiming ``size`` bytes of content."""
    header = b"\x28\xb5\x2f\xfd" + bytes([0b11100000]) + struct.pack("<Q", size)
    return header + frame[zstandard.frame_header_size(frame) :]


def _record_cases(rng: random.Random, seeds: list[bytes]) -> Iterator[tuple[str, bytes]]:
    raws = [zstandard.ZstdDecompressor().decompress(s) for s in seeds]
    objs = [msgspec.msgpack.decode(r) for r in raws]
    kinds: list[tuple[str, Callable[[], bytes | None]]] = [
        ("file bytes mutated", lambda: _mutate_bytes(rng, rng.choice(seeds), seeds)),
        (
            "msgpack mutated in a valid frame",
            lambda: codec.compress(_mutate_bytes(rng, rng.choice(raws), raws)),
        ),
        ("values of the wrong type", lambda: _pack(_wrong_types(rng, objs))),
        ("random msgpack", lambda: _pack(_random_obj(rng))),
        ("random bytes", lambda: rng.randbytes(rng.randint(0, 300))),
        ("zstd frame of random bytes", lambda: codec.compress(rng.randbytes(rng.randint(0, 300)))),
        ("deeply nested msgpack", lambda: _nested(rng, objs)),
        (
            "forged content size",
            lambda: _forge_size(
                rng.choice(seeds), rng.choice([0, 1, 2**20, 2**31, 2**40, 2**62, 2**64 - 1])
            ),
        ),
    ]
    while True:
        kind, make = rng.choice(kinds)
        data = make()
        if data is not None:
            yield kind, data


def _nested(rng: random.Random, objs: list[Any]) -> bytes:
    """A version whose patch holds arrays or maps nested thousands deep (msgpack can say it in
    one byte a level; msgspec cannot write it)."""
    v = copy.deepcopy(rng.choice([o for o in objs if isinstance(o, dict) and "patch" in o]))
    v["patch"][rng.choice(["metrics", "config", "execution", "zz"])] = "@@DEEP@@"
    depth = rng.choice([100, 900, 5000, 100_000])
    level = rng.choice([b"\x91", b"\x81\xa1k"])
    raw = msgspec.msgpack.encode(v).replace(
        msgspec.msgpack.encode("@@DEEP@@"), level * depth + b"\xc0"
    )
    return codec.compress(raw)


def _wrong_types(rng: random.Random, objs: list[Any]) -> Any:
    o = copy.deepcopy(rng.choice(objs))
    for _ in range(rng.randint(1, 3)):
        _walk_mutate(rng, o)
    return o


# ---------------------------------------------------------------------------------------------
# Record decoding
# ---------------------------------------------------------------------------------------------

RECORD_CASES = 24_000


def test_record_decoding_fuzz(tmp_path):
    store, run_ids = _build_store(str(tmp_path / "store"))
    seeds = _seed_files(store)
    base = store.versions(run_ids[0])[0]
    rng = random.Random(SEED)
    failures = Failures()
    outcomes: Counter[str] = Counter()
    by_kind: Counter[str] = Counter()
    cases = _record_cases(rng, seeds)
    for n in range(RECORD_CASES):
        kind, data = next(cases)
        by_kind[kind] += 1
        try:
            with _deadline((kind, data[:200])):
                try:
                    v = codec.decode(data, RecordVersion, "case")
                except CorruptRecord:
                    outcomes["refused by decode"] += 1
                else:
                    try:
                        fold([base, v])
                        outcomes["decoded and folded"] += 1
                    except CorruptRecord:
                        outcomes["refused by fold"] += 1
                if n % 4 == 0:  # the same bytes as a schema-less record (the store file)
                    with contextlib.suppress(CorruptRecord):
                        codec.decode(data, Any, "case")
        except Exception as exc:
            failures.add(kind, exc, data[:200])
    failures.check()
    assert outcomes["decoded and folded"] > 1000  # the mutations reach the fold
    assert outcomes["refused by fold"] > 50  # ... and values of the wrong type get there
    _results(
        "test_record_decoding_fuzz",
        "Random and mutated record files (the v1 fixture's and today's versions) through "
        "codec.decode and the fold: only CorruptRecord, no hang.",
        cases=RECORD_CASES,
        seed_files=len(seeds),
        by_kind=dict(by_kind),
        outcomes=dict(outcomes),
        undocumented_exceptions=0,
    )


STORE_TRIALS = 300


def _replace(path: str, data: bytes) -> None:
    tmp = os.path.join(os.path.dirname(path), f"{layout.TMP_PREFIX}fuzz")
    with open(tmp, "wb") as f:
        f.write(data)
    os.replace(tmp, path)


def test_store_reads_run_directories_of_mutated_files(tmp_path):
    store, run_ids = _build_store(str(tmp_path / "store"))
    seeds = _seed_files(store)
    rng = random.Random(SEED + 1)
    gen = _record_cases(rng, seeds)
    failures = Failures()
    outcomes: Counter[str] = Counter()
    files_mutated = 0
    # digests that are not a context: a list, a blob that is not msgpack, one not there
    contexts = [store.put_obj([1, 2]), store.put_blob(b"\xc1"), "sha256:" + "9" * 64]

    def saved_or(path: str) -> bytes:
        return saved.get(os.path.basename(path)) or open(path, "rb").read()

    for _ in range(STORE_TRIALS):
        rid = rng.choice(run_ids)
        d = layout.run_dir(store.root, rid)
        saved = {n: open(os.path.join(d, n), "rb").read() for n in os.listdir(d)}
        ops = []
        for _ in range(rng.randint(1, 3)):
            names = sorted(n for n in os.listdir(d) if layout.VERSION_RE.match(n))
            op = rng.randrange(7)
            if op == 6 and names:  # a version naming a shared context that is not one
                path = os.path.join(d, rng.choice(names))
                v = _unpack(saved_or(path))
                if isinstance(v, dict) and isinstance(v.get("patch"), dict):
                    v["patch"][CONTEXT_KEY] = rng.choice(_POOL + contexts)
                    _replace(path, _pack(v) or b"")
            elif op <= 2 and names:  # a file's bytes replaced by a fuzz case
                _, data = next(gen)
                _replace(os.path.join(d, rng.choice(names)), data)
            elif op == 3:  # a new version file that is a fuzz case
                _, data = next(gen)
                name = layout.version_name(rng.randint(1, 9), rng.randbytes(6).hex())
                _replace(os.path.join(d, name), data)
            elif op == 4 and names:  # a version removed
                os.unlink(os.path.join(d, rng.choice(names)))
            else:  # a version of another run, or an empty file
                other = rng.choice(seeds) if rng.random() < 0.5 else b""
                _replace(os.path.join(d, layout.version_name(7, "0" * 12)), other)
            ops.append(op)
            files_mutated += 1
        try:
            with _deadline((rid, ops)):
                problems: list[Any] = []
                store.versions(rid, problems)
                outcomes["versions() with problems listed"] += 1
                try:
                    store.load(rid)
                    outcomes["load() read"] += 1
                except StoreError:
                    outcomes["load() refused (StoreError)"] += 1
                try:
                    store.load(rid[:12], problems=[])
                    outcomes["load(problems) read"] += 1
                except StoreError:
                    outcomes["load(problems) refused"] += 1
        except Exception as exc:
            failures.add(f"ops {ops}", exc, rid)
        for n in os.listdir(d):
            if n not in saved:
                os.unlink(os.path.join(d, n))
        for n, data in saved.items():
            _replace(os.path.join(d, n), data)
    failures.check()
    assert outcomes["load() read"] > 0 and outcomes["load() refused (StoreError)"] > 0
    # the real binary on a store with one damaged file in every run
    for i, rid in enumerate(run_ids):
        d = layout.run_dir(store.root, rid)
        first = os.path.join(d, sorted(os.listdir(d))[0])
        v = _unpack(open(first, "rb").read())
        if i == 0:
            _replace(first, open(first, "rb").read()[:40])  # truncated
        else:  # a shared context that is not there / a value of the wrong type
            v["patch"].update({CONTEXT_KEY: "sha256:" + "9" * 64} if i == 1 else {"tags": 5})
            _replace(first, _pack(v) or b"")
    cli = []
    for args in (["ls"], ["show", run_ids[1]], ["show", run_ids[2]]):
        r = subprocess.run(
            [*_cli(), *args, "--store", store.root], capture_output=True, text=True, timeout=120
        )
        assert r.returncode in (0, 1) and "Traceback" not in r.stderr, (args, r.stderr)
        assert "fsck" in r.stderr, (args, r.stderr)  # the damage is named, with what to do
        cli.append(r.returncode)
    _results(
        "test_store_reads_run_directories_of_mutated_files",
        "Run directories (v1 fixture, a rich run, a sweep run with a shared context) with 1-3 "
        "version files mutated, added, emptied or removed per trial, read by Store.versions "
        "and Store.load: only StoreError / CorruptRecord, no hang. Then `runrec ls` and "
        "`runrec show` on a store with a damaged file in every run: no traceback.",
        trials=STORE_TRIALS,
        files_mutated=files_mutated,
        outcomes=dict(outcomes),
        cli_exit_codes=cli,
        undocumented_exceptions=0,
    )


BLOB_CASES = 3000


def test_blob_fuzz(tmp_path):
    store, _ = _build_store(str(tmp_path / "store"))
    rng = random.Random(SEED + 2)
    contents = [rng.randbytes(3000), b"\0" * 300_000, b"", b"text " * 100]
    digests = [store.put_blob(c) for c in contents]
    objs = [store.put_obj({"numpy": "2.0", "torch": "2.3"}), store.put_obj([1, 2, None])]
    raw = store.put_blob(b"\xc1 not msgpack")  # a sound blob that is not msgpack
    all_digests = digests + objs + [raw]
    originals = {dg: open(layout.blob_path(store.root, dg), "rb").read() for dg in all_digests}
    donors = list(originals.values())
    failures = Failures()
    outcomes: Counter[str] = Counter()
    for _ in range(BLOB_CASES):
        dg = rng.choice(all_digests)
        path = layout.blob_path(store.root, dg)
        r = rng.random()
        if r < 0.7:
            data = _mutate_bytes(rng, originals[dg], donors)
        elif r < 0.85:
            data = _forge_size(originals[dg], rng.choice([2**30, 2**40, 2**62]))
        else:
            data = rng.randbytes(rng.randint(0, 200))
        _replace(path, data)
        try:
            with _deadline((dg, data[:100])):
                try:
                    got = store.get_blob(dg)
                    # a change the frame ignores (after its end) still gives the content
                    assert "sha256:" + hashlib.sha256(got).hexdigest() == dg
                    outcomes["read, content verified"] += 1
                except CorruptRecord:
                    outcomes["refused (CorruptRecord)"] += 1
                if dg in objs or dg == raw:
                    with contextlib.suppress(CorruptRecord):
                        store.get_obj(dg, dict[str, str])
        except Exception as exc:
            failures.add("blob", exc, (dg, data[:100]))
        _replace(path, originals[dg])
    with _deadline("not msgpack"):
        try:
            store.get_obj(raw)
        except CorruptRecord as exc:
            assert layout.blob_path(store.root, raw) in str(exc)
        else:
            raise AssertionError("a blob that is not msgpack decoded")
    failures.check()
    assert outcomes["refused (CorruptRecord)"] > BLOB_CASES // 2
    _results(
        "test_blob_fuzz",
        "Content-addressed blobs (random, highly compressible, empty, msgpack) with their "
        "files mutated, forged or replaced: Store.get_blob returns exactly the content its "
        "digest names or raises CorruptRecord; get_obj likewise. No hang.",
        cases=BLOB_CASES,
        outcomes=dict(outcomes),
        undocumented_exceptions=0,
    )


_BOMBS = textwrap.dedent(
    """
    import json, os, resource, struct, sys, zstandard
    from runrec_cluster.errors import CorruptRecord, StoreError
    from runrec_cluster.store import codec

    MIB = 2**20

    def forged(size):
        frame = codec.compress(b"\\0" * 1000)
        head = b"\\x28\\xb5\\x2f\\xfd" + bytes([0b11100000]) + struct.pack("<Q", size)
        return head + frame[zstandard.frame_header_size(frame):]

    def zeros(n, declare):  # a frame of n zero bytes, built 64 MiB at a time (~33 KB a GiB)
        co = zstandard.ZstdCompressor(level=3).compressobj(size=n if declare else -1)
        chunk = b"\\0" * (64 * MIB)
        return b"".join(co.compress(chunk) for _ in range(n // (64 * MIB))) + co.flush()

    gib_declared = zeros(1024 * MIB, True)
    gib_unsized = zeros(1024 * MIB, False)
    legit = zeros(64 * MIB, True)
    # from here on, this process may grow by HEADROOM at most
    used = int(open("/proc/self/statm").read().split()[0]) * resource.getpagesize()
    resource.setrlimit(resource.RLIMIT_AS, (used + int(sys.argv[1]), resource.RLIM_INFINITY))
    cases = [
        ("record: header claims 1 TiB", lambda: codec.decode(forged(2**40))),
        ("record: header claims 2**64-1", lambda: codec.decode(forged(2**64 - 1))),
        ("blob: header claims 1 TiB", lambda: codec.decompress(forged(2**40))),
        ("record: honest 1 GiB frame", lambda: codec.decode(gib_declared)),
        ("record: 1 GiB frame without size", lambda: codec.decode(gib_unsized)),
        ("blob: honest 1 GiB frame, little memory", lambda: codec.decompress(gib_declared)),
        ("blob: 1 GiB frame without size", lambda: codec.decompress(gib_unsized)),
    ]
    out = {"disk_bytes": {"1 GiB declared": len(gib_declared), "1 GiB unsized": len(gib_unsized)}}
    for name, fn in cases:
        try:
            fn()
            out[name] = "read"
        except CorruptRecord:
            out[name] = "CorruptRecord"
        except StoreError:
            out[name] = "StoreError"
        except BaseException as exc:
            out[name] = type(exc).__name__
    out["legit 64 MiB blob"] = len(codec.decompress(legit))
    out["max_rss_mib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024
    print(json.dumps(out))
    """
)
HEADROOM = 512 * 2**20


def test_decompression_bombs_in_a_memory_limited_process(tmp_path):
    """Forged headers and real bombs, in a child process whose address space may grow by
    512 MiB only: every one is refused with the documented error (never a MemoryError), and a
    legitimate 64 MiB blob still reads."""
    script = tmp_path / "bombs.py"
    script.write_text(_BOMBS)
    r = subprocess.run(
        [sys.executable, str(script), str(HEADROOM)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert out.pop("legit 64 MiB blob") == 64 * 2**20
    expected = {
        "record: header claims 1 TiB": "CorruptRecord",
        "record: header claims 2**64-1": "CorruptRecord",
        "blob: header claims 1 TiB": "CorruptRecord",
        "record: honest 1 GiB frame": "CorruptRecord",
        "record: 1 GiB frame without size": "CorruptRecord",
        "blob: honest 1 GiB frame, little memory": "StoreError",
        "blob: 1 GiB frame without size": "CorruptRecord",
    }
    assert {k: out[k] for k in expected} == expected
    _results(
        "test_decompression_bombs_in_a_memory_limited_process",
        "Decompression bombs (forged zstd headers claiming up to 2**64-1 bytes; real 1 GiB "
        "frames of ~33 KB with and without a declared size) read as records and as blobs in a "
        "process allowed 512 MiB more address space: all refused with CorruptRecord / "
        "StoreError, none with MemoryError; a legitimate 64 MiB blob still reads.",
        cases=len(expected) + 1,
        headroom_mib=HEADROOM // 2**20,
        **out,
    )


def test_record_size_limit_is_the_same_for_writer_and_reader(monkeypatch):
    monkeypatch.setattr(codec, "MAX_RECORD_BYTES", 2**20)
    small = {"metrics": {"x": "y" * (2**20 - 100)}}
    assert codec.decode(codec.encode(small)) == small
    big = {"metrics": {"x": "y" * 2**20}}
    try:
        codec.encode(big)
    except StoreError as exc:
        assert "over the limit" in str(exc) and "log_artifact" in str(exc)
    else:
        raise AssertionError("a record over the limit was written")
    try:
        codec.decode(codec.compress(msgspec.msgpack.encode(big)))
    except CorruptRecord as exc:
        assert "limit" in str(exc)
    else:
        raise AssertionError("a record over the limit was read")


# ---------------------------------------------------------------------------------------------
# The query expression language (runrec ls --where, table, rr.query)
# ---------------------------------------------------------------------------------------------

VALID_EXPRESSIONS = [
    'config.lr > 0.01 and state == "failed"',
    'metrics.acc >= 0.9 or (cause in ["timeout", "out_of_memory"] and not code_dirty)',
    "tags.team == 'vision' and metrics.loss != null",
    "`metrics.val/acc@5` > 0.7",
    'state not in ("a", 1, 2.5, true, null)',
    "not not flag",
    "flag == true",
    "(n > 1) == flag",
    "n in [3, 0, null]",
    "n < 9007199254740993",
    "x == -1e10 or a <= b",
    "x < 1_000 and b >= -.5e-3",
    "(((a)))",
    "true",
    "a == b",
    "state == 'it\\'s' or name != \"q\\\"\"",
]
ATOMS = [
    "(", ")", "[", "]", ",", " ", "and", "or", "not", "in", "==", "!=", "<", "<=", ">", ">=",
    "=", "!", '"', "'", "`", "\\", "x", "n", "a", "b", "flag", "config.lr", "state", "1", "-",
    "+", ".", "e", "_", "1e999", "-1e999", "9" * 400, "1" + "0" * 30, "9007199254740993",
    "18446744073709551616", "0x10", "nan", "inf", "-.", "..", "1e", "1e+", "true", "false",
    "null", "None", "TRUE", "\x00", "\u0663", "\u00b2", "\u202e", "\u200b", "é", "\ud800",
    "\U0001f600", "\t", "\n",
]  # fmt: skip
ROWS: list[dict[str, Any]] = [
    {"flag": True, "n": 3, "state": "failed"},
    {"x": None, "a": float("nan"), "b": 10**30, "config.lr": 0.1, "state": "failed",
     "flag": False, "n": 2**53, "code_dirty": True},
    {"x": True, "a": 1, "b": "s", "config.lr": [1], "state": {"k": 1}, "cause": "timeout",
     "flag": True, "n": -1.5, "tags.team": "vision"},
    {"x": 2**63, "a": -0.0, "b": float("inf"), "config.lr": "0.1", "code_dirty": False,
     "flag": False, "n": 0, "metrics.acc": 0.95, "metrics.val/acc@5": 0.8},
]  # fmt: skip


def _column(name: str) -> Any:
    """A column as the index gives it (index.column_values): float64 with NaN for numbers,
    bool for bools without a gap, object otherwise."""
    vals = [r.get(name) for r in ROWS]
    nums = [v for v in vals if v is not None]
    if nums and all(isinstance(v, int | float) and not isinstance(v, bool) for v in nums):
        return np.array([math.nan if v is None else v for v in vals], dtype=np.float64)
    if all(isinstance(v, bool) for v in vals):
        return np.array(vals, dtype=bool)
    out = np.empty(len(vals), dtype=object)
    out[:] = vals
    return out


def _random_expression(rng: random.Random, depth: int = 0) -> str:
    """Mostly valid expressions from the grammar."""
    r = rng.random()
    if depth > 3 or r < 0.4:
        col = rng.choice(["x", "n", "a", "b", "flag", "state", "config.lr", "`metrics.acc`"])
        lit = rng.choice(["1", "-2.5", "1e308", "null", "true", "'failed'", '"s"', "2e-9"])
        op = rng.choice(["==", "!=", "<", "<=", ">", ">="])
        if rng.random() < 0.2:
            return f"{col} {rng.choice(['in', 'not in'])} [{lit}, {rng.choice(['1', 'null'])}]"
        return rng.choice([f"{col} {op} {lit}", f"{lit} {op} {col}", col, f"{col} {op} n"])
    if r < 0.6:
        return f"not {_random_expression(rng, depth + 1)}"
    if r < 0.8:
        return f"({_random_expression(rng, depth + 1)})"
    word = rng.choice(["and", "or", "AND", "Or"])
    return f"{_random_expression(rng, depth + 1)} {word} {_random_expression(rng, depth + 1)}"


def _expression_cases(rng: random.Random) -> Iterator[tuple[str, str]]:
    while True:
        r = rng.random()
        if r < 0.3:
            yield "grammar", _random_expression(rng)
        elif r < 0.55:
            n = rng.randint(0, 15)
            yield "atoms", "".join(rng.choice(ATOMS) + rng.choice(["", " "]) for _ in range(n))
        elif r < 0.9:
            s = list(rng.choice(VALID_EXPRESSIONS + [_random_expression(rng)]))
            for _ in range(rng.randint(1, 4)):
                i = rng.randint(0, len(s))
                op = rng.random()
                if op < 0.33 and s:
                    del s[min(i, len(s) - 1)]
                elif op < 0.66:
                    s.insert(i, rng.choice(ATOMS))
                elif s:
                    s[min(i, len(s) - 1)] = chr(rng.randint(0, 0x2FFFF))
            yield "mutated", "".join(s)
        else:
            n = rng.choice([10, 63, 64, 65, 200, 1000, 1999, 3000])
            yield (
                "deep or long",
                rng.choice(
                    [
                        "(" * n + "x" + ")" * n,
                        "not " * n + "x",
                        "(not " * n + "x" + ")" * n,
                        "x in " + "[" * n,
                        "x == " + "9" * n,
                        "x == " + "1" * (expr.MAX_LEN + n),
                        " or ".join(["x"] * n),
                    ]
                ),
            )


def _check_expression(text: str, outcomes: Counter[str]) -> None:
    try:
        e = expr.parse(text)
    except ExpressionError as exc:
        assert 0 <= exc.pos <= len(text), (exc.pos, len(text))
        outcomes["ExpressionError"] += 1
        return
    by_row = [e.matches(r) for r in ROWS]
    by_column = [bool(x) for x in e.mask(_column, len(ROWS))]
    assert all(isinstance(x, bool) for x in by_row)
    assert by_row == by_column, (text, by_row, by_column)
    outcomes["parsed; both evaluators agree"] += 1


EXPRESSION_CASES = 20_000


def test_expression_parser_fuzz():
    rng = random.Random(SEED + 3)
    failures = Failures()
    outcomes: Counter[str] = Counter()
    by_kind: Counter[str] = Counter()
    cases = _expression_cases(rng)
    for _ in range(EXPRESSION_CASES):
        kind, text = next(cases)
        by_kind[kind] += 1
        try:
            with _deadline(text):
                _check_expression(text, outcomes)
        except Exception as exc:
            failures.add(kind, exc, text)
    for bad in (None, 5, b"x == 1", ["x"]):
        try:
            expr.parse(bad)  # type: ignore[arg-type]
        except ConfigError:
            outcomes["ConfigError (not text)"] += 1
    failures.check()
    assert outcomes["parsed; both evaluators agree"] > 3000
    _results(
        "test_expression_parser_fuzz",
        "Random, mutated, deeply nested and over-long query expressions (grammar-made, random "
        "tokens, mutations of valid ones, unicode, NUL): only ExpressionError pointing inside "
        "the text; every expression that parses evaluates, the row evaluator (runrec ls) and "
        "the column evaluator (the index) agree on every row. No hang.",
        cases=EXPRESSION_CASES + 4,
        by_kind=dict(by_kind),
        outcomes=dict(outcomes),
        undocumented_exceptions=0,
    )


def test_expression_parser_on_arbitrary_text():
    outcomes: Counter[str] = Counter()

    @settings(
        max_examples=600,
        derandomize=True,
        database=None,
        deadline=None,
        suppress_health_check=[HealthCheck.too_slow],
    )
    @given(
        text=st.text(max_size=60)
        | st.text(alphabet=st.sampled_from([a for a in ATOMS if len(a) == 1]), max_size=25)
        | st.lists(st.sampled_from(ATOMS), max_size=20).map(" ".join)
    )
    def check(text: str) -> None:
        with _deadline(text):
            _check_expression(text, outcomes)

    check()
    _results(
        "test_expression_parser_on_arbitrary_text",
        "Hypothesis text (any code point) and token soups through the query expression parser "
        "and both evaluators: only ExpressionError; evaluators agree.",
        cases=sum(outcomes.values()),
        outcomes=dict(outcomes),
    )


# ---------------------------------------------------------------------------------------------
# Promotion criteria (promote --criteria)
# ---------------------------------------------------------------------------------------------

VALID_CRITERIA = [
    "val_acc >= 0.9 and loss < 1",
    "(f1 > 0.8 or recall >= 0.95) and not diverged == true",
    "`val/acc@5` >= 0.7",
    "nested.deep.x == 'ok'",
    "loss <= 1e-3 or steps != 100",
]
CRITERIA_METRICS = [
    {"val_acc": 0.95, "loss": 0.5, "f1": 0.9, "recall": 0.1, "diverged": False, "steps": 100,
     "val/acc@5": 0.8, "nested": {"deep": {"x": "ok"}}},
    {"val_acc": float("nan"), "loss": "high", "f1": None, "recall": 2**63, "diverged": 1,
     "steps": [1], "val/acc@5": True, "nested": {"deep": 3}},
    {},
]  # fmt: skip


def test_criteria_fuzz():
    rng = random.Random(SEED + 4)
    atoms = ATOMS + ["val_acc", "loss", "f1", "nested.deep.x", "`val/acc@5`", "9" * 1990]
    failures = Failures()
    outcomes: Counter[str] = Counter()
    n_cases = 12_000
    for _ in range(n_cases):
        r = rng.random()
        if r < 0.1:
            text = rng.choice(VALID_CRITERIA)
        elif r < 0.4:
            text = "".join(
                rng.choice(atoms) + rng.choice(["", " "]) for _ in range(rng.randint(0, 12))
            )
        elif r < 0.9:
            s = list(rng.choice(VALID_CRITERIA))
            for _ in range(rng.randint(1, 4)):
                i = rng.randint(0, len(s))
                if rng.random() < 0.5 and s:
                    del s[min(i, len(s) - 1)]
                else:
                    s.insert(i, rng.choice(atoms))
            text = "".join(s)
        else:
            n = rng.choice([20, 49, 50, 51, 200, 999, 1990, 3000])
            text = rng.choice(
                [
                    "(" * n + "loss > 1" + ")" * n,
                    "not " * n + "loss > 1",
                    "loss < " + "9" * n,  # an int no float can hold
                    "val_acc >= -1" + "0" * n,
                    "recall == " + "9" * n,
                    "f1 > 1e" + "9" * min(n, 400),
                ]
            )
        try:
            with _deadline(text):
                try:
                    criteria.parse(text)
                except PromotionError as exc:
                    # a syntax error is also an ExpressionError (a usage error, exit 2)
                    assert isinstance(exc, ExpressionError), exc
                    assert 0 <= exc.pos <= len(text), (exc.pos, len(text))
                    outcomes["parse: PromotionError"] += 1
                    continue
                for metrics in CRITERIA_METRICS:
                    try:
                        out = criteria.evaluate(text, metrics)
                    except PromotionError:
                        outcomes["evaluate: PromotionError"] += 1
                        continue
                    assert isinstance(out.ok, bool) and (out.ok or out.failed)
                    outcomes["evaluate: verdict"] += 1
        except Exception as exc:
            failures.add("criteria", exc, text)
    failures.check()
    assert outcomes["evaluate: verdict"] > 500
    _results(
        "test_criteria_fuzz",
        "Random, mutated, deeply nested and huge-number promotion criteria, parsed and "
        "evaluated against metrics of every type (NaN, strings, 2**63, nested dicts, missing): "
        "only PromotionError; every verdict names what failed. No hang.",
        cases=n_cases,
        outcomes=dict(outcomes),
        undocumented_exceptions=0,
    )


# ---------------------------------------------------------------------------------------------
# The real CLI
# ---------------------------------------------------------------------------------------------


def _cli() -> list[str]:
    exe = os.path.join(os.path.dirname(sys.executable), "runrec")
    return [exe] if os.path.exists(exe) else [sys.executable, "-m", "runrec_cluster"]


def test_where_through_the_real_cli(store):
    ids = {}
    for name, lr, acc in (("r1", 0.1, 0.95), ("r2", 0.01, 0.4), ("r3", 0.1, None)):
        rid = layout.new_id()
        launch = {"name": name, "created_at": datetime.now(UTC), "state": "submitted"}
        launch["config"] = {"lr": {"value": lr, "source": "given"}}
        store.write_version(rid, "launch", launch)
        if acc is not None:
            store.write_version(rid, "metrics", {"metrics": {"acc": acc}}, role="job")
        store.write_version(rid, "end", to_patch(state=RunState.SUCCEEDED, state_source="job"))
        ids[name] = rid
    good = {
        "metrics.acc > 0.5": ["r1"],
        'config.lr == 0.1 and state == "succeeded"': ["r1", "r3"],
        "metrics.acc < 1" + "0" * 400: ["r1", "r2"],
        "metrics.acc == null": ["r3"],
        "true": ["r1", "r2", "r3"],
    }
    bad = [
        "metrics.acc >",
        "(" * 100 + "x" + ")" * 100,
        "config.lr = 0.1",
        "é ∈ ∅",
        '"unclosed',
        "x" * 5000,
        "\u202emetrics.acc > 1",
    ]
    codes = []
    for text, names in good.items():
        r = subprocess.run(
            [*_cli(), "ls", "--store", store.root, "--json", "--columns", "name", "--where", text],
            capture_output=True,
            text=True,
            timeout=120,
        )
        codes.append(r.returncode)
        assert r.returncode == 0 and "Traceback" not in r.stderr, (text, r.stderr)
        assert sorted(x["name"] for x in json.loads(r.stdout)) == names, text
    for text in bad:
        r = subprocess.run(
            [*_cli(), "ls", "--store", store.root, "--where", text],
            capture_output=True,
            text=True,
            timeout=120,
        )
        codes.append(r.returncode)
        assert r.returncode == 2, (text, r.returncode, r.stderr)  # a malformed --where: usage
        assert "Traceback" not in r.stderr and "bad expression" in r.stderr, (text, r.stderr)
        assert "^" in r.stderr  # the caret under the bad token
    _results(
        "test_where_through_the_real_cli",
        "`runrec ls --where` through the installed binary on a 3-run store: valid expressions "
        "(one with a 401-digit number) select the right runs with exit 0; bad ones (syntax, "
        "nesting 100 deep, 5,000 characters, unicode, right-to-left mark) exit 1 with the "
        "caret message and no traceback.",
        cli_runs=len(codes),
        valid=len(good),
        invalid=len(bad),
        exit_codes=dict(Counter(codes)),
    )
