"""EmbeddingStore: random access to a finished store by sample id.

Nothing is loaded up front. The manifest and the memory-mapped index are opened at once. A read
takes only the bytes of the rows asked for from the shard file (``os.pread`` at an offset), not a
memory map of the shard: memory stays bounded however much of a large store is read at random, and
only a bounded number of file handles stay open (an LRU of them). Each shard's header is checked
once, on first use. Every read returns a fresh float32 array.
"""

from __future__ import annotations

import json
import os
import resource
from collections import OrderedDict
from typing import Callable, Iterable, Iterator

import numpy as np

from ..fileio import is_tmp
from .index import IdIndex
from .layout import index_dir, shard_dir, shard_file, written_shards
from .manifest import STORE_FORMAT, StoreMismatchError, compare_fingerprints, mismatch_message, read_manifest
from .quant import DTYPES, SCALE_DTYPE, decode
from .verify import npy_problem


class _LRU:
    """The ``capacity`` most recently used values of ``load(key)``; ``evict(value)`` on the way out.

    Not thread-safe: a reader belongs to one thread (each DataLoader worker opens its own).
    """

    def __init__(self, capacity: int, load: Callable, evict: Callable | None = None):
        self.capacity, self.load, self.evict = capacity, load, evict
        self.items: OrderedDict = OrderedDict()

    def __getitem__(self, key):
        if key in self.items:
            self.items.move_to_end(key)
            return self.items[key]
        value = self.items[key] = self.load(key)
        if len(self.items) > self.capacity:
            _, old = self.items.popitem(last=False)
            if self.evict is not None:
                self.evict(old)
        return value

    def clear(self) -> None:
        while self.items:
            _, old = self.items.popitem()
            if self.evict is not None:
                self.evict(old)


def _open_fd_budget() -> int:
    """How many shard files one reader keeps open: an eighth of the process's file limit, 32-1024."""
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    return max(32, min(1024, soft // 8 if soft != resource.RLIM_INFINITY else 1024))


class EmbeddingStore:
    CACHED_IDS = 8  # shards whose id lists are kept to confirm index hits (stores without id arrays)

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
        self._row_bytes = self.dim * DTYPES[self.dtype].itemsize
        self._data_offset: dict[int, tuple] = {}  # shard -> data (and scale) byte offsets, headers checked
        # Two files per shard for int8 (values and scales): the budget counts files.
        self._fds = _LRU(max(1, _open_fd_budget() // (2 if self.dtype == "int8" else 1)), self._open_fds,
                         self._close_fds)
        self._ids = _LRU(self.CACHED_IDS, self._load_ids)
        self._index = IdIndex(index_dir(self.root), self._ids.__getitem__)

    # Memory maps must not be pickled (that would copy whole shards into every DataLoader
    # worker): a pickled store is just its folder, reopened on arrival.
    def __getstate__(self):
        return {"root": self.root, "expect_fingerprint": self._expect_fingerprint}

    def __setstate__(self, state):
        self.__init__(state["root"], state["expect_fingerprint"])

    def close(self) -> None:
        """Close the shard files this reader holds open (reads after it open them again)."""
        if "_fds" in self.__dict__:
            self._fds.clear()

    def __del__(self):
        self.close()

    def __repr__(self) -> str:
        return f"EmbeddingStore({self.root!r}: {len(self)} samples x {self.num_rows} rows x {self.dim}, {self.dtype})"

    # --- shards ------------------------------------------------------------------------------

    def _shard_len(self, j: int) -> int:
        return min(self.shard_size, self._num_samples - j * self.shard_size)

    def _check_shard(self, j: int, kind: str, shape: tuple, dtype: np.dtype) -> int:
        """The data offset of shard j's ``kind`` file, after checking its header and its size."""
        problem, offset = npy_problem(shard_file(self.root, j, kind), shape, dtype)
        if problem:
            raise RuntimeError(f"{shard_file(self.root, j, kind)} is unreadable ({problem}): the store is damaged; "
                               f"`flameclip verify {self.root}` lists what, and the same embed command repairs it")
        return offset

    def _open_fds(self, j: int) -> tuple[int, int | None]:
        if j not in self._data_offset:
            n = self._shard_len(j)
            data = self._check_shard(j, "data", (n, self.num_rows, self.dim), DTYPES[self.dtype])
            scale = self._check_shard(j, "scale", (n, self.num_rows), SCALE_DTYPE) if self.dtype == "int8" else None
            self._data_offset[j] = (data, scale)
        fd = os.open(shard_file(self.root, j, "data"), os.O_RDONLY)
        try:
            fd_scale = os.open(shard_file(self.root, j, "scale"), os.O_RDONLY) if self.dtype == "int8" else None
        except OSError:
            os.close(fd)
            raise
        return fd, fd_scale

    @staticmethod
    def _close_fds(fds: tuple[int, int | None]) -> None:
        for fd in fds:
            if fd is not None:
                os.close(fd)

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
        fd, fd_scale = self._fds[j]
        data_at, scale_at = self._data_offset[j]
        first = row * self.num_rows + start  # index of the first wanted row within the shard
        values = self._pread(fd, j, data_at + first * self._row_bytes, (stop - start) * self._row_bytes,
                             DTYPES[self.dtype]).reshape(stop - start, self.dim)
        scale = None
        if fd_scale is not None:
            scale = self._pread(fd_scale, j, scale_at + first * SCALE_DTYPE.itemsize,
                                (stop - start) * SCALE_DTYPE.itemsize, SCALE_DTYPE)
        return decode(values, scale)

    def _pread(self, fd: int, j: int, offset: int, nbytes: int, dtype: np.dtype) -> np.ndarray:
        buf = os.pread(fd, nbytes, offset)
        if len(buf) != nbytes:  # the file shrank after its header was checked
            raise RuntimeError(f"{shard_file(self.root, j)} ended early: the store is damaged; "
                               f"`flameclip verify {self.root}` lists what")
        return np.frombuffer(buf, dtype=dtype)

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
