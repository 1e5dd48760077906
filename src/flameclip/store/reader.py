"""EmbeddingStore: random access to a finished store by sample id.

Nothing is loaded up front. The manifest and the memory-mapped index are opened at once; shard
files are memory-mapped on first use and a few of them are kept open (an LRU, so a store with
thousands of shards does not run out of file handles). Every read returns a fresh float32 array.
"""

from __future__ import annotations

import json
import os
from collections import OrderedDict
from typing import Callable, Iterable, Iterator

import numpy as np

from .atomic import is_tmp
from .index import IdIndex
from .layout import index_dir, shard_dir, shard_file, written_shards
from .manifest import STORE_FORMAT, StoreMismatchError, compare_fingerprints, mismatch_message, read_manifest
from .quant import DTYPES, decode


class _LRU:
    """The ``capacity`` most recently used values of ``load(key)``."""

    def __init__(self, capacity: int, load: Callable):
        self.capacity, self.load = capacity, load
        self.items: OrderedDict = OrderedDict()

    def __getitem__(self, key):
        if key in self.items:
            self.items.move_to_end(key)
            return self.items[key]
        value = self.items[key] = self.load(key)
        if len(self.items) > self.capacity:
            self.items.popitem(last=False)
        return value


class EmbeddingStore:
    OPEN_SHARDS = 32  # memory-mapped shard files kept open
    CACHED_IDS = 8  # shards whose id lists are kept to confirm index hits

    def __init__(self, root, expect_fingerprint: dict | None = None):
        self.root = os.fspath(root)
        self._expect_fingerprint = expect_fingerprint
        m = read_manifest(self.root)
        if m is None:
            raise FileNotFoundError(
                f"{self.root} is not an embedding store (no manifest.json): give the --out folder of `flameclip embed`"
            )
        if m.get("format") != STORE_FORMAT:
            raise StoreMismatchError(f"{self.root} has format {m.get('format')!r}; this version of flameclip reads {STORE_FORMAT!r}")
        if expect_fingerprint is not None:
            diffs = compare_fingerprints(m["fingerprint"], expect_fingerprint)
            if diffs:
                raise StoreMismatchError(mismatch_message(self.root, diffs))
        if not m.get("complete"):
            done = len(written_shards(self.root) & set(range(m["num_shards"])))
            raise RuntimeError(
                f"{self.root} is incomplete ({done} of {m['num_shards']} shards): "
                "run the same `flameclip embed` command again to resume"
            )
        self.manifest = m
        self.fingerprint: dict = m["fingerprint"]
        self.dim: int = m["dim"]
        self.dtype: str = m["dtype"]
        self.shard_size: int = m["shard_size"]
        self.num_shards: int = m["num_shards"]
        self._num_samples: int = m["num_samples"]
        self.columns: dict[str, tuple[int, int]] = {}
        start = 0
        for c in m["columns"]:
            self.columns[c["name"]] = (start, start + c["k"])
            start += c["k"]
        self.num_rows: int = start
        self._shards = _LRU(self.OPEN_SHARDS, self._open_shard)
        self._ids = _LRU(self.CACHED_IDS, self._load_ids)
        self._index = IdIndex(index_dir(self.root), self._ids.__getitem__)

    # Memory maps must not be pickled (that would copy whole shards into every DataLoader
    # worker): a pickled store is just its folder, reopened on arrival.
    def __getstate__(self):
        return {"root": self.root, "expect_fingerprint": self._expect_fingerprint}

    def __setstate__(self, state):
        self.__init__(state["root"], state["expect_fingerprint"])

    def __repr__(self) -> str:
        return f"EmbeddingStore({self.root!r}: {len(self)} samples x {self.num_rows} rows x {self.dim}, {self.dtype})"

    # --- shards ------------------------------------------------------------------------------

    def _shard_len(self, j: int) -> int:
        return min(self.shard_size, self._num_samples - j * self.shard_size)

    def _open_shard(self, j: int) -> tuple[np.ndarray, np.ndarray | None]:
        try:
            values = np.load(shard_file(self.root, j, "data"), mmap_mode="r")
        except (ValueError, OSError, EOFError) as e:  # a truncated file: "mmap length is greater than file size"
            raise RuntimeError(f"{shard_file(self.root, j)} is unreadable ({e}): the store is damaged; "
                               f"`flameclip verify {self.root}` lists what, and the same embed command repairs it") from None
        expected = (self._shard_len(j), self.num_rows, self.dim)
        if values.shape != expected or values.dtype != DTYPES[self.dtype]:
            raise RuntimeError(
                f"{shard_file(self.root, j)} holds {values.dtype}{list(values.shape)} but the manifest says "
                f"{DTYPES[self.dtype]}{list(expected)}: the store is damaged"
            )
        scale = np.load(shard_file(self.root, j, "scale"), mmap_mode="r") if self.dtype == "int8" else None
        return values, scale

    def _load_ids(self, j: int) -> list[str]:
        with open(shard_file(self.root, j, "ids"), encoding="utf-8") as f:
            return json.load(f)

    def _locate(self, sample_id: str) -> tuple[int, int]:
        where = self._index.locate(sample_id) if isinstance(sample_id, str) else None
        if where is None:
            raise KeyError(f"sample id {sample_id!r} is not in store {self.root}")
        return where

    def _read(self, sample_id: str, start: int, stop: int) -> np.ndarray:
        j, row = self._locate(sample_id)
        values, scale = self._shards[j]
        return decode(values[row, start:stop], None if scale is None else scale[row, start:stop])

    # --- public reads ------------------------------------------------------------------------

    def __len__(self) -> int:
        return self._num_samples

    def __contains__(self, sample_id) -> bool:
        return isinstance(sample_id, str) and self._index.locate(sample_id) is not None

    def ids(self) -> Iterator[str]:
        """All sample ids in input order (read shard by shard, bypassing the id cache)."""
        for j in range(self.num_shards):
            yield from self._load_ids(j)

    def get(self, sample_id: str) -> np.ndarray:
        """float32 [R, D]: all rows of a sample, dequantised."""
        return self._read(sample_id, 0, self.num_rows)

    def get_column(self, sample_id: str, column: str) -> np.ndarray:
        """float32 [k, D]: the rows of one caption column of a sample."""
        if column not in self.columns:
            raise KeyError(f"column {column!r} is not in store {self.root} (it has {', '.join(self.columns)})")
        return self._read(sample_id, *self.columns[column])

    def get_many(self, sample_ids: Iterable[str]) -> np.ndarray:
        """float32 [len(ids), R, D], in the order asked."""
        sample_ids = list(sample_ids)
        out = np.empty((len(sample_ids), self.num_rows, self.dim), dtype=np.float32)
        for i, sample_id in enumerate(sample_ids):
            out[i] = self.get(sample_id)
        return out

    def nbytes(self) -> int:
        """Bytes on disk of all shard files (embeddings, int8 scales and id lists)."""
        folder = shard_dir(self.root)
        return sum(os.path.getsize(os.path.join(folder, n)) for n in os.listdir(folder) if not is_tmp(n))
