"""Store package: codec (msgpack + zstd), layout (every path rule), fs (atomic writes)."""

from runrec_cluster.store.store import ReadProblem, Store, as_store, default_store_path

__all__ = ["ReadProblem", "Store", "as_store", "default_store_path"]
