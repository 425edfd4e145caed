"""The newest runs of a listing, from the index (``index.py``): which runs ``runrec ls --limit N``
prints, found without reading every record.

``runrec ls`` lists the runs that pass ``--name``/``--sweep``/``--state`` oldest first (by
``created_at``, then run id), each rerun moved right after its original when the original is
listed too (``rerun.order_with_reruns``): the list is a sequence of *families*, a run whose
original is not listed followed by its reruns (depth first, oldest first). The last N rows
are therefore in the newest families: ``Listing.more`` walks the families from the newest
back, whole, until they hold N rows that may pass ``--where``/``--negative``. The caller
reads and refreshes only those runs and orders them with ``order_with_reruns``: complete
families, newest first, give the same last rows as the whole store.

Everything here reads the index's light columns (``LIGHT_COLUMNS``); the records' own state
may be newer than the index's for runs a backend may still change (``stale``): the caller
refreshes them and passes their states (``set_states``) before a walk that filters on state.
"""

from __future__ import annotations

from typing import Any

from runrec_cluster.query.columns import ColumnNames, query_libs
from runrec_cluster.query.index import Index
from runrec_cluster.query.index_select import NAMES_KEY
from runrec_cluster.query.index_table import live_rows
from runrec_cluster.record import TERMINAL_STATES, FailureCause

LIGHT_COLUMNS = ["run_id", "created_at", "rerun_of", "state", "cause", "name", "sweep_id"]
FIRST_K = 1024  # the newest rows sorted at first; 8 times more each time a walk needs more


def index_names(index: Index) -> ColumnNames:
    """The column names a query over the index may use (``ColumnNames``: every column of the
    base and the delta file, and whether the store has runs)."""
    parts = index.load_parts({"run_id"})
    if parts is None:
        index.update()
        parts = index.load_parts({"run_id"})
    if parts is None:
        return ColumnNames(set(), has_runs=False)
    base, base_meta, delta, delta_meta = parts
    present = set(base_meta.get(NAMES_KEY, base.column_names))
    if delta_meta is not None:
        present |= set(delta_meta.get(NAMES_KEY, delta.column_names))
    return ColumnNames(present, has_runs=live_rows(base, delta) > 0)


class Listing:
    """The runs of the index that pass ``--name`` and ``--sweep`` (``light``: the index's
    ``LIGHT_COLUMNS``, every run), walked newest family first."""

    def __init__(
        self,
        light: Any,
        name: str | None = None,
        sweep: str | None = None,
        passing: Any = None,
    ) -> None:
        """``passing``: run ids (an Arrow array) that pass the row filter as the index tells
        (``--where``, ``--negative``), None without one; a stale run may pass after its
        refresh, so it counts as passing in a walk."""
        libs = query_libs()
        pa, pc = libs.pa, libs.pc
        # text columns (a column no run has a value in is typed null in the index)
        light = pa.table({c: light.column(c).cast(pa.string()) for c in LIGHT_COLUMNS})
        mask = None
        if name:
            mask = pc.fill_null(pc.match_substring(light.column("name"), name), False)
        if sweep:
            hit = pc.fill_null(pc.starts_with(light.column("sweep_id"), sweep.lower()), False)
            mask = hit if mask is None else pc.and_(mask, hit)
        t = light if mask is None else light.filter(mask)
        st, cause = t.column("state"), t.column("cause")
        terminal = pc.fill_null(pc.is_in(st, value_set=pa.array(sorted(TERMINAL_STATES))), False)
        killed = pc.fill_null(pc.equal(cause, FailureCause.KILLED.value), False)
        stale = pc.or_(pc.invert(terminal), killed)
        if passing is None:
            counts = pc.is_null(pa.nulls(t.num_rows))  # every run counts
        else:
            ids = t.column("run_id")
            hit = pc.is_in(ids, value_set=passing.cast(pa.string()))
            counts = pc.or_(pc.fill_null(hit, False), stale)
        self.table = t.append_column("_stale", stale).append_column("_counts", counts)
        self.n = self.table.num_rows
        reruns = self.table.filter(pc.is_valid(self.table.column("rerun_of")))
        self.parent: dict[str, str] = dict(
            zip(
                reruns.column("run_id").to_pylist(),
                reruns.column("rerun_of").to_pylist(),
                strict=True,
            )
        )
        # the rows of every run that is an original or a rerun: state, sort key, counts
        fam_ids = pa.array(sorted({*self.parent, *self.parent.values()}), pa.string())
        fam = self.table.filter(pc.is_in(self.table.column("run_id"), value_set=fam_ids))
        self.state: dict[str, str] = {}
        self.key: dict[str, tuple[str, str]] = {}
        self.counts: dict[str, bool] = {}
        cols = ("run_id", "created_at", "state", "_counts")
        for rid, created, state, c in zip(*(fam.column(c).to_pylist() for c in cols), strict=True):
            self.state[rid] = state
            self.key[rid] = (created or "", rid)
            self.counts[rid] = c
        self.children: dict[str, list[str]] = {}
        for rid, orig in self.parent.items():
            if orig in self.key and rid in self.key:
                self.children.setdefault(orig, []).append(rid)
        for kids in self.children.values():
            kids.sort(key=self.key.__getitem__)
        self.states: frozenset[str] | None = None
        self.fresh: dict[str, str] = {}
        self._buf: list[tuple[str, str | None, str | None, bool]] = []
        self._k = 0
        self._order: list[int] = []
        self._pos = 0
        self.done = self.n == 0

    def cyclic(self) -> bool:
        """Whether some run is its own rerun, directly or through others (never written by
        runrec; ``order_with_reruns`` puts such runs last, which a walk from the newest cannot
        know): then the caller lists from every record."""
        for start in self.parent:
            seen = {start}
            cur = self.parent.get(start)
            while cur is not None:
                if cur in seen:
                    return True
                seen.add(cur)
                cur = self.parent.get(cur)
        return False

    def stale(self) -> list[str]:
        """The runs whose state a backend may still change (``record.needs_verdict`` as far as the
        index tells: not terminal, or ended killed)."""
        t = self.table
        return t.filter(t.column("_stale")).column("run_id").to_pylist()

    def set_states(self, states: tuple[str, ...], fresh: dict[str, str]) -> None:
        """Keep only runs in ``states`` (``--state``; empty: every state); ``fresh``: the
        refreshed state of every stale run (``stale()``), which wins over the index's."""
        self.states = frozenset(states) if states else None
        self.fresh = dict(fresh)

    def _member(self, rid: str, state: str | None) -> bool:
        if self.states is None:
            return True
        return self.fresh.get(rid, state) in self.states

    def _listed(self, rid: str) -> bool:
        """Whether an original (a run some rerun names) is in the listing."""
        return rid in self.state and self._member(rid, self.state[rid])

    def _family(self, rid: str) -> list[str]:
        out = [rid]
        for c in self.children.get(rid, []):
            if self._listed(c):
                out += self._family(c)
        return out

    def _next_row(self) -> tuple[str, str | None, str | None, bool] | None:
        """The next row, newest first: (run id, rerun_of, state, counts); None after the
        oldest."""
        if not self._buf:
            libs = query_libs()
            if self._pos >= len(self._order):
                if self._k >= self.n:
                    return None
                self._k = min(self.n, max(FIRST_K, self._k * 8))
                keys = [("created_at", "descending"), ("run_id", "descending")]
                self._order = libs.pc.select_k_unstable(self.table, self._k, keys).to_pylist()
            chunk = self._order[self._pos : self._pos + FIRST_K]
            self._pos += len(chunk)
            t = self.table.take(libs.pa.array(chunk, libs.pa.int64()))
            names = ("run_id", "rerun_of", "state", "_counts")
            cols = (t.column(c).to_pylist() for c in names)
            self._buf = list(zip(*cols, strict=True))
            self._buf.reverse()  # popped from the end
        return self._buf.pop()

    def more(self, need: int) -> list[str]:
        """The runs of the next families back (whole), until ``need`` of them count (may pass
        the row filter) or no run is left."""
        out: list[str] = []
        got = 0
        while got < need:
            row = self._next_row()
            if row is None:
                self.done = True
                break
            rid, orig, state, counts = row
            if not self._member(rid, state):
                continue
            if orig and orig != rid and self._listed(orig):
                continue  # listed after its original, in the original's family
            if rid not in self.children:
                out.append(rid)
                got += counts
                continue
            fam = self._family(rid)
            out += fam
            got += sum(1 for r in fam if self.counts[r])
        if not self._buf and self._pos >= len(self._order) and self._k >= self.n:
            self.done = True
        return out
