"""Reruns from the record: the code materialized, overrides applied, generated values pinned.

``RerunCall`` is re-exported here so that call blobs pickled before the package existed
(``runrec_cluster.rerun.RerunCall``) still load.
"""

from runrec_cluster.rerun.core import RerunCall, order_with_reruns, rerun, rerun_sweep

__all__ = ["RerunCall", "order_with_reruns", "rerun", "rerun_sweep"]
