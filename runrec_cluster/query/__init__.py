"""Cross-run queries over the flat run view (one row per run, ``docs/query.md``).

    columns        the view itself (``flat_row``), column order and sorting, the query extra
    select         ``query()``: a DataFrame or Arrow table, filtered with ``expr.py``
    index          the derived Arrow index, updated incrementally, and ``Index.select``
    index_table    rows to Arrow and back to numpy; the base and delta files side by side
    index_changes  what changed since the last update: directory scan, change journal
    index_packs    the kept index rows of a pack's runs (a cold build reads them)
    index_select   which columns a query reads; the filter over the base and the delta
    autopack       a background ``runrec pack`` when a full scan finds many runs loose
    newest         the newest runs of a listing (``runrec ls --limit``), from the index
    ancestry       trust flags of a few runs from their ancestry only (``show``, ``ls``)
    sweeps         one sweep as a table (``runrec compare``, ``runrec report``)

pandas, pyarrow and numpy (the ``query`` extra) are imported on first use only.
"""

from runrec_cluster.query.select import query

__all__ = ["query"]
