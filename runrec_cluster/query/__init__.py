"""Cross-run queries: the flat run view (``columns``), ``query()`` (``select``), the derived
Arrow index (``index``) and sweep tables (``sweeps``)."""

from runrec_cluster.query.select import query

__all__ = ["query"]
