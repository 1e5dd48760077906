"""A sharded, fingerprinted, resumable store of caption embeddings.

Each sample (a string id) holds R = sum of K over its caption columns rows of D numbers. The
store is written shard by shard by ``StoreWriter`` (resumable, several ranks at once, identical
bytes whatever the schedule) and read by id with ``EmbeddingStore`` without loading it whole.
"""

from .manifest import STORE_FORMAT, StoreMismatchError, compare_fingerprints, read_manifest, write_manifest
from .quant import DTYPES
from .reader import EmbeddingStore
from .writer import StoreWriter

__all__ = [
    "DTYPES",
    "STORE_FORMAT",
    "EmbeddingStore",
    "StoreMismatchError",
    "StoreWriter",
    "compare_fingerprints",
    "read_manifest",
    "write_manifest",
]
