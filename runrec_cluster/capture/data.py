"""Datasets and artifacts by content hash.

A file's digest is ``blake3:<hex>`` of its bytes (BLAKE3, 256 bits: as strong as SHA-256 and
several times faster, using every core on a big file; ``b3sum FILE`` prints the same hex). A
directory's digest is ``blake3-tree:<hex>``: BLAKE3 over its sorted manifest lines
``<relpath>\\0<size>\\0<file digest>\\n`` (symlinks are followed; special files are skipped).
``algo="sha256"`` gives ``sha256:`` / ``sha256-tree:`` digests instead (``sha256sum`` prints the
same hex): records written before BLAKE3 hold those, and a recorded digest is always re-checked
with its own algorithm (``algo_of``). Unchanged files are not re-hashed: a cache
keyed on (path, size, mtime_ns, inode) lives in the store (``cache/datasets/``), so a stat is
enough to re-check a dataset whose files did not change.
"""

from __future__ import annotations

import hashlib
import mmap
import os
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import blake3
import msgspec

from runrec_cluster.errors import DatasetError

CHUNK = 1 << 20
BIG_CHUNK = 256 << 20  # BLAKE3 of a big file: one threaded update per 256 MiB (then progress)
ALGOS = ("blake3", "sha256")
DEFAULT_ALGO = "blake3"


def algo_of(digest: str) -> str:
    """The algorithm of a recorded digest (``blake3:..``, ``sha256-tree:..``)."""
    name = digest.split(":", 1)[0].removesuffix("-tree")
    if name not in ALGOS:
        raise DatasetError(
            f"{digest!r} is not a content digest runrec knows (blake3: or sha256:, optionally "
            "-tree for a directory). Copy the digest from the record."
        )
    return name


def _hasher(algo: str, size: int = 0) -> Any:
    if algo == "sha256":
        return hashlib.sha256()
    # threads only pay off on big inputs
    return blake3.blake3(max_threads=blake3.blake3.AUTO if size > BIG_CHUNK // 4 else 1)


Progress = Callable[[int, int], None]  # (bytes done, bytes total)


class Dataset:
    """An input dataset: a file or a directory, hashed at submit.

    ``version`` is your own label (e.g. ``"v2-cleaned"``); the content hash is the identity.
    """

    kind = "dataset"

    def __init__(self, path: str | os.PathLike[str], version: str | None = None) -> None:
        self.path = os.fspath(path)
        self.version = version

    def __repr__(self) -> str:
        return f"Dataset({self.path!r}{', version=' + repr(self.version) if self.version else ''})"


class CacheEntry(msgspec.Struct, array_like=True):
    size: int
    mtime_ns: int
    ino: int
    digest: str


class DatasetCache(msgspec.Struct):
    root: str
    files: dict[str, CacheEntry] = {}


@dataclass
class HashResult:
    path: str
    digest: str
    size: int
    file_count: int
    is_dir: bool
    manifest: list[tuple[str, int, str]] | None
    hashed_bytes: int  # bytes actually read (0 when everything came from the cache)


def hash_file(
    path: str, progress: Callable[[int], None] | None = None, algo: str = DEFAULT_ALGO
) -> str:
    with open(path, "rb", buffering=0) as f:
        size = os.fstat(f.fileno()).st_size
        h = _hasher(algo, size)
        if size <= CHUNK:  # small files: one read, no big buffer to allocate
            data = f.read()
            h.update(data)
            if progress:
                progress(len(data))
            return f"{algo}:{h.hexdigest()}"
        if algo == "blake3":  # map the file: no copy, and BLAKE3 hashes it on every core
            with mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as m:
                view = memoryview(m)
                try:
                    for off in range(0, size, BIG_CHUNK):
                        part = view[off : off + BIG_CHUNK]
                        h.update(part)
                        if progress:
                            progress(len(part))
                        part.release()
                finally:
                    view.release()
            return f"{algo}:{h.hexdigest()}"
        buf = bytearray(CHUNK * 4)
        view = memoryview(buf)
        while n := f.readinto(buf):
            h.update(view[:n])
            if progress:
                progress(n)
    return f"{algo}:{h.hexdigest()}"


def _walk(root: str) -> list[tuple[str, os.stat_result]]:
    out = []
    for dirpath, dirnames, filenames in os.walk(root, followlinks=True):
        dirnames.sort()
        for name in filenames:
            full = os.path.join(dirpath, name)
            try:
                st = os.stat(full)
            except OSError as exc:
                raise DatasetError(
                    f"cannot read {full} in dataset {root}: {exc.strerror}. "
                    "Fix the file's permissions or remove it from the dataset."
                ) from exc
            if not os.path.isfile(full):
                continue
            out.append((os.path.relpath(full, root), st))
    out.sort(key=lambda x: x[0])
    return out


def _split_cached(
    entries: list[tuple[str, os.stat_result]], old: dict[str, CacheEntry], algo: str
) -> tuple[dict[str, str], dict[str, CacheEntry], list[tuple[str, os.stat_result]]]:
    """(the digests the cache still vouches for, the cache entries kept, the files to hash): a
    cached digest holds while the file's size, mtime and inode are unchanged."""
    new_cache: dict[str, CacheEntry] = {}
    todo: list[tuple[str, os.stat_result]] = []
    digests: dict[str, str] = {}
    for rel, st in entries:
        c = old.get(rel)
        if (
            c is not None
            and (c.size, c.mtime_ns, c.ino) == (st.st_size, st.st_mtime_ns, st.st_ino)
            and c.digest.startswith(algo + ":")
        ):
            digests[rel] = c.digest
            new_cache[rel] = c
        else:
            todo.append((rel, st))
    return digests, new_cache, todo


def hash_path(
    path: str,
    *,
    cache: DatasetCache | None = None,
    progress: Progress | None = None,
    workers: int = 2,
    algo: str | None = None,
) -> tuple[HashResult, DatasetCache]:
    """Hash a file or directory with ``algo`` (default ``DEFAULT_ALGO``; to re-check a
    recorded digest pass ``algo_of(digest)``). Returns the result and the updated cache."""
    algo = algo or DEFAULT_ALGO
    if algo not in ALGOS:
        raise DatasetError(f"unknown hash algorithm {algo!r}; use one of {', '.join(ALGOS)}.")
    full = os.path.abspath(path)
    if not os.path.exists(full):
        raise DatasetError(
            f"dataset {path!r} does not exist (looked at {full}). Check the path, or create the "
            "data before submitting."
        )
    is_dir = os.path.isdir(full)
    if is_dir:
        entries = _walk(full)
    else:
        try:
            entries = [("", os.stat(full))]
        except OSError as exc:
            raise DatasetError(f"cannot stat dataset {full}: {exc.strerror}.") from exc
    old = cache.files if (cache is not None and cache.root == full) else {}
    digests, new_cache, todo = _split_cached(entries, old, algo)
    total = sum(st.st_size for _, st in todo)
    done = 0

    def tick(n: int) -> None:
        nonlocal done
        done += n
        if progress:
            progress(done, total)

    def one(item: tuple[str, os.stat_result]) -> tuple[str, str]:
        rel, _st = item
        target = os.path.join(full, rel) if rel else full
        try:
            return rel, hash_file(target, tick, algo)
        except OSError as exc:
            raise DatasetError(f"cannot read {target}: {exc.strerror}.") from exc

    if len(todo) > 1 and workers > 1:
        with ThreadPoolExecutor(workers) as pool:
            results = list(pool.map(one, todo))
    else:
        results = [one(t) for t in todo]
    for (rel, st), (_, d) in zip(todo, results, strict=True):
        digests[rel] = d
        new_cache[rel] = CacheEntry(st.st_size, st.st_mtime_ns, st.st_ino, d)
    size = sum(st.st_size for _, st in entries)
    if is_dir:
        manifest = [(rel, st.st_size, digests[rel]) for rel, st in entries]
        h = _hasher(algo)
        for rel, sz, d in manifest:
            h.update(f"{rel}\0{sz}\0{d}\n".encode())
        digest = f"{algo}-tree:" + h.hexdigest()
    else:
        manifest = None
        digest = digests[""]
    return (
        HashResult(full, digest, size, len(entries), is_dir, manifest, total),
        DatasetCache(root=full, files=new_cache),
    )
