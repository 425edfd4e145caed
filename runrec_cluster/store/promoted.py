"""Reading promoted versions (``STORE/promoted/<NAME>/v<N>/``): list them, find one by name
and version (``NAME``, ``NAME@v3``, ``NAME@latest``), locate its read-only copy. Writing them
(promotion itself) is ``lineage/promote.py``; their path rules are in ``store/layout.py``."""

from __future__ import annotations

import os
from dataclasses import dataclass

from runrec_cluster.errors import PromotionError, RunrecError, StoreError
from runrec_cluster.record import Promotion
from runrec_cluster.store import Store, codec, fs
from runrec_cluster.store import layout as ll


@dataclass
class VersionEntry:
    """A version directory found in the store: its record, or why there is none."""

    name: str
    version: int
    path: str
    promotion: Promotion | None
    problem: str | None = None

    @property
    def ref(self) -> str:
        return f"{self.name}@v{self.version}"


def list_promotions(store: Store, name: str | None = None) -> list[VersionEntry]:
    """Every promoted version (of ``name``, or all), oldest version first per name."""
    if name is not None:
        names = [ll.check_promoted_name(name, PromotionError)]
    else:
        base = ll.promoted_root(store.root, PromotionError)
        try:
            names = sorted(n for n in os.listdir(base) if ll.PROMOTED_NAME_RE.match(n))
        except FileNotFoundError:
            return []
        except OSError as exc:
            raise StoreError(f"cannot list {base}: {exc.strerror}. Check the store.") from exc
    out: list[VersionEntry] = []
    for n in names:
        try:
            d = ll.promoted_dir(store.root, n, PromotionError)
        except PromotionError:
            if name is not None:
                raise
            continue  # a link out of the store: never followed, not listed
        try:
            versions = sorted(
                int(m.group(1)) for v in os.listdir(d) if (m := ll.VERSION_DIR_RE.match(v))
            )
        except (FileNotFoundError, NotADirectoryError):
            continue
        for v in versions:
            out.append(_read_version(store, n, v))
    return out


def _read_version(store: Store, name: str, version: int) -> VersionEntry:
    d = ll.version_dir(store.root, name, version, PromotionError)
    path = os.path.join(d, ll.PROMOTION_FILE)
    try:
        p = codec.decode(fs.read_bytes(path), Promotion, path)
    except FileNotFoundError:
        return VersionEntry(name, version, d, None, "incomplete: no promotion record")
    except (RunrecError, OSError) as exc:
        return VersionEntry(name, version, d, None, f"unreadable promotion record: {exc}")
    if p.name != name or p.version != version:
        return VersionEntry(
            name, version, d, None, f"its record names {p.ref}, not {name}@v{version}"
        )
    return VersionEntry(name, version, d, p)


def find_promotion(store: Store, name: str, version: int | None = None) -> VersionEntry:
    """One complete promoted version: ``version``, or the latest complete one."""
    entries = [e for e in list_promotions(store, name) if version in (None, e.version)]
    if version is not None:
        if not entries:
            have = ", ".join(e.ref for e in list_promotions(store, name)) or "none"
            raise PromotionError(
                f"no promoted version {name}@v{version} in {store.root} (versions: {have}). "
                "List them with `runrec promoted`."
            )
        e = entries[0]
        if e.promotion is None:
            raise PromotionError(f"{e.ref} is not usable: {e.problem}.")
        return e
    complete = [e for e in entries if e.promotion is not None]
    if not complete:
        raise PromotionError(
            f"nothing is promoted as {name!r} in {store.root}. List promoted names with "
            "`runrec promoted`; promote with `runrec promote RUN ARTIFACT --to NAME`."
        )
    return complete[-1]


def copy_path(store: Store, entry: VersionEntry) -> str:
    """Where the promoted copy lies (checked to be inside the store)."""
    if entry.promotion is None:
        raise PromotionError(f"{entry.ref} is not usable: {entry.problem}.")
    return ll.inside(store.root, os.path.join(entry.path, entry.promotion.files), PromotionError)


def parse_ref(text: str) -> tuple[str, int | None]:
    """``NAME``, ``NAME@vN`` or ``NAME@latest`` -> (name, version or None for the latest)."""
    name, at, ver = text.strip().partition("@")
    ll.check_promoted_name(name, PromotionError)
    if not at or ver == "latest":
        return name, None
    m = ll.VERSION_DIR_RE.match(ver)
    if not m:
        raise PromotionError(f"{text!r}: {ver!r} is not a version; write NAME@v3 or NAME@latest.")
    return name, int(m.group(1))
