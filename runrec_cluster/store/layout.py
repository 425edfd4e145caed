"""Every path rule of the store, in one place. See docs/store-layout.md.

    STORE/
      runrec-store.msgpack.zst          store identity and format version
      .gitignore                        ``*``: a store inside a git repository ignores itself
      runs/<shard>/<run_id>/v<seq>-<writer>.msgpack.zst   one immutable file per record version
      blobs/<aa>/<sha256 hex>.zst        content-addressed blobs (diff, package list, pickled call)
      logs/<shard>/<run_id>/             stdout.txt and stderr.txt of the job (plain text)
      cache/datasets/<sha256 of path>.msgpack.zst   hash cache of a dataset (derived, disposable)
      changes/<YYYYMMDDHH>/<host>-<pid>-<token>.log  change journal: one line ``<run_id> <seq>``
                                        per version written (derived; read by the query index)
      artifacts/objects/<algo>/<aa>/<hex>   kept copies of artifacts' files, by content, read-only
      artifacts/trees/<algo>-tree/<aa>/<hex>/  a kept directory artifact: hard links to objects
      packs/<shard>/<pack id>.pack      finished runs' versions, packed (store/packs.py)
      quarantine/<time>-<token>/         what ``runrec fsck --repair`` moved aside, same relative
                                        paths, with fsck-repair.json saying why

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

from runrec_cluster.errors import ConfigError, RunrecError

RUN_ID_LEN = 26
_CROCKFORD = "0123456789abcdefghjkmnpqrstvwxyz"
RUN_ID_RE = re.compile(r"^[0-9a-hjkmnp-tv-z]{26}\Z")
PREFIX_RE = re.compile(r"^[0-9a-hjkmnp-tv-z]{1,26}\Z")
DIGEST_RE = re.compile(r"^sha256:([0-9a-f]{64})\Z")
SHARD_LEN = 5
VERSION_RE = re.compile(r"^v(\d{6,})-([0-9a-z]+)\.msgpack\.zst\Z")
TMP_PREFIX = ".tmp-"
META_FILE = "runrec-store.msgpack.zst"
# written when a store is made (never over an existing one): git then ignores the whole store,
# so a store inside a repository never makes the code dirty (capture/git.py excludes it anyway)
GITIGNORE = ".gitignore"
GITIGNORE_TEXT = b"# a runrec store: keep it out of git (docs/store-layout.md)\n*\n"
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


def version_seq(name: str) -> int | None:
    """The seq of a version file's name (``v000003-<writer>.msgpack.zst``: 3); None for any
    other name."""
    m = VERSION_RE.match(name)
    return int(m.group(1)) if m else None


# ---------------------------------------------------------------------------------------------
# The whole store, as ``runrec fsck`` walks it
# ---------------------------------------------------------------------------------------------
# Every entry fsck meets is judged by these rules: a name that matches none is "unexpected"
# (a note), a ``.tmp-`` name a leftover temporary file. Nothing else reads them.

SHARD_RE = re.compile(r"^[0-9a-hjkmnp-tv-z]{5}$")  # runs/<shard>/: SHARD_LEN characters
BLOB_DIR_RE = re.compile(r"^[0-9a-f]{2}$")  # blobs/<aa>/
BLOB_NAME_RE = re.compile(r"^([0-9a-f]{64})\.zst$")  # blobs/<aa>/<sha256 hex>.zst
ANY_DIGEST_RE = re.compile(r"sha256:[0-9a-f]{64}")  # a blob digest anywhere in a text
QUARANTINE_DIR = "quarantine"  # quarantine/<time>-<token>/<the moved files' relative paths>
REPAIR_LOG = "fsck-repair.json"  # in each quarantine/<time>-<token>/: what was moved, and why
# top-level entries of a store (docs/store-layout.md); anything else is named as a note
KNOWN_TOP = frozenset(
    {
        META_FILE,
        GITIGNORE,
        "runs",
        "blobs",
        "logs",
        "slurm",
        "cache",
        "promoted",
        "retirements",
        "index",
        CHANGES_DIR,
        "worktrees",
        QUARANTINE_DIR,
        "artifacts",
        "envs",  # recreated environments (runrec rerun --env recorded)
        "packs",  # finished runs' versions, packed (store/packs.py)
    }
)
# derived directories: only searched for leftover temporary files
DERIVED_DIRS = ("cache", "index", CHANGES_DIR)


def blobs_dir(root: str) -> str:
    return os.path.join(root, "blobs")


def quarantine_dir(root: str, stamp: str) -> str:
    """Where one repair puts what it moves (``stamp``: its time and a random token)."""
    return os.path.join(root, QUARANTINE_DIR, stamp)


# ---------------------------------------------------------------------------------------------
# Promoted artifacts and retirement records
# ---------------------------------------------------------------------------------------------
# Path rules for promoted artifacts and retirement records.
#
#    STORE/
#      promoted/<NAME>/v<N>/promotion.msgpack.zst     the promotion record (immutable)
#      promoted/<NAME>/v<N>/files/<file or directory>  the read-only copy of the artifact
#      retirements/<id>.msgpack.zst                   one immutable retirement record each
#
# ``NAME`` is the only name given by a user that becomes a path component anywhere in the store.
# It is checked against ``PROMOTED_NAME_RE`` (letters, digits, ``.``, ``_``, ``-``; starting with
# a letter or digit: no separators, no ``..``, no hidden names, nothing absolute), and every path
# built here is resolved (symlinks followed) and must still lie inside the store: a symlink
# planted in the store that points elsewhere is refused, never followed.


PROMOTED_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}\Z")
VERSION_DIR_RE = re.compile(r"^v([1-9][0-9]{0,8})\Z")
# the copied file keeps its own name when that name is plain; else it is called "artifact"
COPY_NAME_RE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9._+=@,-]{0,199}\Z")
RETIREMENT_FILE_RE = re.compile(r"^([0-9a-hjkmnp-tv-z]{26})\.msgpack\.zst\Z")
PROMOTION_FILE = "promotion.msgpack.zst"
FILES_DIR = "files"
NAME_RULE = (
    "1 to 100 characters of letters, digits, '.', '_' and '-', starting with a letter or digit"
)


def check_promoted_name(name: object, error: type[RunrecError]) -> str:
    """The name, or ``error`` saying why it cannot name a promoted artifact."""
    if not isinstance(name, str) or not PROMOTED_NAME_RE.match(name):
        raise error(
            f"{name!r} is not a usable promoted name ({NAME_RULE}; no '/', no '..', no "
            "absolute paths). Choose a name like 'churn-model' or 'resnet50.imagenet'."
        )
    return name


def inside(root: str, path: str, error: type[RunrecError]) -> str:
    """``path`` if, with every symlink resolved, it lies inside the store ``root``."""
    base = os.path.realpath(root)
    real = os.path.realpath(path)
    if real != base and os.path.commonpath([real, base]) != base:
        raise error(
            f"{path} resolves to {real}, outside the store {base} (a symlink in the store?). "
            "Refusing to read or write through it; remove the link."
        )
    return path


def promoted_root(root: str, error: type[RunrecError]) -> str:
    return inside(root, os.path.join(root, "promoted"), error)


def promoted_dir(root: str, name: str, error: type[RunrecError]) -> str:
    check_promoted_name(name, error)
    return inside(root, os.path.join(promoted_root(root, error), name), error)


def version_dir(root: str, name: str, version: int, error: type[RunrecError]) -> str:
    if not isinstance(version, int) or isinstance(version, bool) or version < 1:
        raise error(f"{version!r} is not a promoted version number (1, 2, ...).")
    return inside(root, os.path.join(promoted_dir(root, name, error), f"v{version}"), error)


def copy_name(source_path: str) -> str:
    """The file name the promoted copy gets: the artifact's own, when it is a plain name."""
    base = os.path.basename(os.path.normpath(source_path))
    return base if COPY_NAME_RE.match(base) else "artifact"


def promotion_file(root: str, name: str, version: str | int) -> str:
    """The record of ``NAME@v<version>``, joined without the checks of ``version_dir`` (for a
    reader that only asks whether it exists)."""
    return os.path.join(root, "promoted", name, f"v{version}", PROMOTION_FILE)


def retirements_dir(root: str, error: type[RunrecError]) -> str:
    return inside(root, os.path.join(root, "retirements"), error)


def retirement_path(root: str, retirement_id: str, error: type[RunrecError]) -> str:
    if not isinstance(retirement_id, str) or not RUN_ID_RE.match(retirement_id):
        raise error(f"{retirement_id!r} is not a retirement id (26 characters, as a run id).")
    return inside(
        root,
        os.path.join(retirements_dir(root, error), f"{retirement_id}.msgpack.zst"),
        error,
    )


# ---------------------------------------------------------------------------------------------
# Kept copies of artifacts (store/kept.py)
# ---------------------------------------------------------------------------------------------
#
#    STORE/artifacts/objects/<algo>/<aa>/<hex>        one read-only file per content, named by
#                                                     the artifact's own file digest
#    STORE/artifacts/trees/<algo>-tree/<aa>/<hex>/    a directory artifact, named by its tree
#                                                     digest: its files, hard links to objects
#
# Only the algorithm and the hex digits of a recorded digest become path components.

KEPT_DIR = "artifacts"
KEPT_DIGEST_RE = re.compile(r"^(blake3|sha256)(-tree)?:([0-9a-f]{64})\Z")


def kept_rel(digest: str) -> str:
    """Where the kept copy of content ``digest`` lives, relative to the store: under
    ``artifacts/objects/`` for a file digest, ``artifacts/trees/`` for a directory's."""
    m = KEPT_DIGEST_RE.match(digest or "")
    if not m:
        raise ConfigError(
            f"{digest!r} is not an artifact digest (blake3: or sha256:, optionally -tree, and 64 "
            "hex digits). Copy it from the record."
        )
    algo, tree, h = m.groups()
    kind = "trees" if tree else "objects"
    return os.path.join(KEPT_DIR, kind, algo + (tree or ""), h[:2], h)


def kept_path(root: str, digest: str) -> str:
    return os.path.join(root, kept_rel(digest))
