"""``runrec fsck --repair`` for packs: a damaged pack is replaced by a new pack of everything in
it that can still be read, and then moved to quarantine; a damaged version inside a pack (or
one that breaks its run's fold) is written to quarantine as a file of its own.

Order, safe against a kill at any instant: (1) the new pack is written and linked (fsynced),
so every readable version is in two packs for a moment (read once); (2) the damaged versions
are written to quarantine; (3) the damaged pack (and its derived index rows) is moved to
quarantine. A repair killed before (3) leaves the damaged pack in place: the next check names
it again and the next repair does the same work again (the versions are then in one more
pack, still read once). Nothing readable is ever lost: what cannot be read at all (a chunk
whose frame is broken) is named in the repair's actions; the runs that lose a version to it get
placeholders like any other run (``fsck/repair.py``).
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable

from runrec_cluster.fsck.findings import Action, Finding
from runrec_cluster.store import Store, fs, layout, pack_salvage, packs

# a version inside a pack, as fsck names it: packs.entry_label
_LABEL_RE = re.compile(r"^(.*\.pack)#([0-9a-hjkmnp-tv-z]{26})/(v\d{6,}-[0-9a-z]+\.msgpack\.zst)\Z")


def damaged_packs(findings: list[Finding]) -> dict[str, set[tuple[str, str]]]:
    """pack path -> the versions in it to set aside ((run id, file name)), from the findings:
    every ``bad_pack``, and a ``does_not_fold`` whose culprit lies in a pack."""
    out: dict[str, set[tuple[str, str]]] = {}
    for f in findings:
        m = _LABEL_RE.match(f.path)
        if f.kind == "bad_pack":
            if m:
                out.setdefault(m.group(1), set()).add((m.group(2), m.group(3)))
            else:
                out.setdefault(f.path, set())
        elif f.kind == "does_not_fold" and m:
            out.setdefault(m.group(1), set()).add((m.group(2), m.group(3)))
    return out


def repair_pack(
    store: Store,
    path: str,
    drop: set[tuple[str, str]],
    *,
    keep_bad: Callable[[str, str, bytes, str], None],
    quarantine: Callable[[str, str], str | None],
    actions: list[Action],
) -> None:
    """Replace the pack at ``path`` by a pack of what can be read in it (minus ``drop``),
    ``keep_bad(run id, name, bytes, why)`` each damaged version, then ``quarantine`` the pack."""
    if not os.path.exists(path):
        return  # moved since the check
    got = pack_salvage.salvage(path, drop)
    if got.runs or got.blobs or got.logs:
        shard = os.path.basename(os.path.dirname(path))
        new = os.path.join(packs.shard_dir(store.root, shard), f"{layout.new_id()}.pack")
        data = packs.encode_pack(got.runs, got.blobs, got.logs)
        fs.create_atomic(new, data, fsync=True)  # linked before anything is moved
        n = sum(len(e) for e in got.runs.values())
        actions.append(
            Action(
                "rewrite_pack",
                new,
                f"wrote what can be read of {path} into a new pack: {n} version(s) of "
                f"{len(got.runs)} run(s), {len(got.blobs)} blob(s), the logs of "
                f"{len(got.logs)} run(s)",
            )
        )
    for rid, name, raw, why in got.bad:
        keep_bad(rid, name, raw, why)
    for what in got.lost:
        actions.append(Action("record_loss", path, f"lost with the damaged pack: {what}"))
    rows = packs.rows_path(path)
    if os.path.exists(rows):
        quarantine(rows, "bad_pack: the index rows of a damaged pack (derived)")
    quarantine(path, "bad_pack: replaced by a pack of what can still be read in it")
