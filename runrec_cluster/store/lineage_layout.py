"""Path rules for promoted artifacts and retirement records (the rest is in ``layout.py``).

    STORE/
      promoted/<NAME>/v<N>/promotion.msgpack.zst     the promotion record (immutable)
      promoted/<NAME>/v<N>/files/<file or directory>  the read-only copy of the artifact
      retirements/<id>.msgpack.zst                   one immutable retirement record each

``NAME`` is the only name given by a user that becomes a path component anywhere in the store.
It is checked against ``PROMOTED_NAME_RE`` (letters, digits, ``.``, ``_``, ``-``; starting with
a letter or digit: no separators, no ``..``, no hidden names, nothing absolute), and every path
built here is resolved (symlinks followed) and must still lie inside the store: a symlink
planted in the store that points elsewhere is refused, never followed.
"""

from __future__ import annotations

import os
import re

from ..errors import RunrecError
from .layout import RUN_ID_RE

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
