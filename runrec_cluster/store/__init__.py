"""The run store: ``Store`` (store.py), codec (msgpack + zstd, size limits), layout (every path
and name rule), fs (atomic writes), policy (a shared store's permission settings) and admin
(changing them), promoted (reading promoted versions)."""

from runrec_cluster.store.store import ReadProblem, Store, as_store, default_store_path

__all__ = ["ReadProblem", "Store", "as_store", "default_store_path"]
