"""Every path rule of the store, in one place. See docs/store-layout.md.

    STORE/
      runrec-store.msgpack.zst          store identity and format version
      runs/<shard>/<run_id>/v<seq>-<writer>.msgpack.zst   one immutable file per record version
      blobs/<aa>/<sha256 hex>.zst        content-addressed blobs (diff, package list, pickled call)
      logs/<shard>/<run_id>/             stdout.txt and stderr.txt of the job (plain text)
      cache/datasets/<sha256 of path>.msgpack.zst   hash cache of a dataset (derived, disposable)
      changes/<YYYYMMDDHH>/<host>-<pid>-<token>.log  change journal: one line ``<run_id> <seq>``
                                        per version written (derived; read by the query index)

``<shard>`` is the first 5 characters of the run id (its time prefix: about 2.3 hours a shard),
so a directory never holds more than the runs of a few hours. Temporary files start with
``.tmp-`` and live beside their target, so a rename is atomic (also on NFS).

Names given by users never become path components here: only run ids (validated against
``RUN_ID_RE``) and hex digests do.
"""

from __future__ import annotations

import os
import re
import secrets
import time

from ..errors import ConfigError

RUN_ID_LEN = 26
_CROCKFORD = "0123456789abcdefghjkmnpqrstvwxyz"
RUN_ID_RE = re.compile(r"^[0-9a-hjkmnp-tv-z]{26}\Z")
PREFIX_RE = re.compile(r"^[0-9a-hjkmnp-tv-z]{1,26}\Z")
DIGEST_RE = re.compile(r"^sha256:([0-9a-f]{64})\Z")
SHARD_LEN = 5
VERSION_RE = re.compile(r"^v(\d{6,})-([0-9a-z]+)\.msgpack\.zst\Z")
TMP_PREFIX = ".tmp-"
META_FILE = "runrec-store.msgpack.zst"
STORE_FORMAT = 1


def new_id() -> str:
    """A ULID-shaped id: 48-bit millisecond time + 80 random bits, lowercase Crockford base32.

    Unique without coordination, sortable by creation time, 26 characters.
    """
    ms = time.time_ns() // 1_000_000
    n = (ms << 80) | secrets.randbits(80)
    out = []
    for _ in range(RUN_ID_LEN):
        out.append(_CROCKFORD[n & 31])
        n >>= 5
    return "".join(reversed(out))


def id_time(run_id: str) -> float:
    """Creation time (unix seconds) encoded in an id."""
    n = 0
    for ch in run_id[:10]:
        n = (n << 5) | _CROCKFORD.index(ch)
    return n / 1000.0


def check_run_id(run_id: str) -> str:
    if not isinstance(run_id, str) or not RUN_ID_RE.match(run_id):
        raise ConfigError(
            f"{run_id!r} is not a run id (26 characters of 0-9 and a-z without i, l, o, u). "
            "Copy the id from `runrec ls`."
        )
    return run_id


def normalize_prefix(prefix: str) -> str:
    p = prefix.strip().lower()
    if not PREFIX_RE.match(p):
        raise ConfigError(
            f"{prefix!r} is not a run id or prefix (characters 0-9 and a-z without i, l, o, u). "
            "Copy the id from `runrec ls`."
        )
    return p


def digest_hex(digest: str) -> str:
    m = DIGEST_RE.match(digest or "")
    if not m:
        raise ConfigError(f"{digest!r} is not a blob digest of the form sha256:<64 hex digits>.")
    return m.group(1)


def runs_dir(root: str) -> str:
    return os.path.join(root, "runs")


def run_dir(root: str, run_id: str) -> str:
    check_run_id(run_id)
    return os.path.join(root, "runs", run_id[:SHARD_LEN], run_id)


def log_dir(root: str, run_id: str) -> str:
    check_run_id(run_id)
    return os.path.join(root, "logs", run_id[:SHARD_LEN], run_id)


def blob_path(root: str, digest: str) -> str:
    h = digest_hex(digest)
    return os.path.join(root, "blobs", h[:2], h + ".zst")


def dataset_cache_path(root: str, key_hex: str) -> str:
    return os.path.join(root, "cache", "datasets", key_hex + ".msgpack.zst")


CHANGES_DIR = "changes"
BUCKET_RE = re.compile(r"^\d{10}\Z")


def changes_dir(root: str) -> str:
    return os.path.join(root, CHANGES_DIR)


def change_bucket(t: float) -> str:
    """The journal bucket (UTC hour, ``YYYYMMDDHH``) of a unix time."""
    return time.strftime("%Y%m%d%H", time.gmtime(t))


def version_name(seq: int, writer: str) -> str:
    return f"v{seq:06d}-{writer}.msgpack.zst"
