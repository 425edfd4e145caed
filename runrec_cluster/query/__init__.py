"""Cross-run queries over the flat run view (one row per run, ``docs/query.md``).

    columns        the view itself (``flat_row``), column order and sorting, the query extra
    select         ``query()``: a DataFrame or Arrow table, filtered with ``expr.py``
    index          the derived Arrow index, updated incrementally, and ``Index.select``
    index_table    rows to Arrow and back to numpy; the base and delta files side by side
    index_changes  what changed since the last update: directory scan, change journal
    sweeps         one sweep as a table (``runrec compare``, ``runrec report``)

pandas, pyarrow and numpy (the ``query`` extra) are imported on first use only.
"""

from runrec_cluster.query.select import query

__all__ = ["query"]
