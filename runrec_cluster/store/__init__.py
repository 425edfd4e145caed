"""Store package: codec (msgpack + zstd), layout (every path rule), fs (atomic writes)."""

from .store import ReadProblem, Store, default_store_path

__all__ = ["ReadProblem", "Store", "default_store_path"]
