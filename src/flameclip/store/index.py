"""The id -> (shard, row) lookup table: O(1) lookups without loading the store into memory.

A hash table laid out as four flat arrays, saved as .npy files and memory-mapped on open, so
opening a store with millions of samples reads nothing but a few pages:

``offsets`` int64 [nb + 1]
    entries of bucket b are ``offsets[b]:offsets[b + 1]``; nb is a power of two >= N.
``hashes`` uint64 [N]
    64-bit blake2b of each id, entries sorted by (bucket, hash, global position).
``shard``, ``row`` int32 [N]
    where each entry's sample lives.

A lookup hashes the id, scans its bucket (one entry on average) and confirms the id string
against the shard's ids.json, so even a 64-bit hash collision cannot return another sample's rows.
The sort order is total, so the files are identical for identical ids however the store was made.
"""

from __future__ import annotations

import hashlib
import os
import shutil
from typing import Callable

import numpy as np

from .atomic import fsync_dir, fsync_file, tmp_name

ARRAYS = {"offsets": np.dtype("<i8"), "hashes": np.dtype("<u8"), "shard": np.dtype("<i4"), "row": np.dtype("<i4")}


def hash_id(sample_id: str) -> int:
    """A stable 64-bit hash (Python's hash() changes between processes)."""
    return int.from_bytes(hashlib.blake2b(sample_id.encode("utf-8"), digest_size=8).digest(), "little")


def num_buckets(n: int) -> int:
    """The smallest power of two >= n (at least 1), so that ``h & (nb - 1)`` picks a bucket."""
    return 1 << max(0, n - 1).bit_length()


def build_index(ids: list[str], shard_size: int) -> dict[str, np.ndarray]:
    """The lookup arrays for ids whose global position i lives at (i // shard_size, i % shard_size)."""
    n = len(ids)
    nb = num_buckets(n)
    hashes = np.fromiter((hash_id(s) for s in ids), dtype=np.uint64, count=n)
    position = np.arange(n, dtype=np.int64)
    bucket = hashes & np.uint64(nb - 1)
    order = np.lexsort((position, hashes, bucket))  # the last key sorts first
    offsets = np.zeros(nb + 1, dtype=np.int64)
    np.cumsum(np.bincount(bucket.astype(np.int64), minlength=nb), out=offsets[1:])
    position = position[order]
    arrays = {
        "offsets": offsets,
        "hashes": hashes[order],
        "shard": position // shard_size,
        "row": position % shard_size,
    }
    return {name: arrays[name].astype(dtype) for name, dtype in ARRAYS.items()}


def write_index(folder: str, arrays: dict[str, np.ndarray]) -> None:
    """Write the arrays into a temporary folder and rename it to ``folder`` in one step.

    If ``folder`` already exists another process (a rank finalizing at the same moment, or a run
    killed just after this step) already wrote it; built from the same ids it is the same index.
    """
    tmp = tmp_name(folder)
    os.makedirs(tmp)
    for name, arr in arrays.items():
        path = os.path.join(tmp, f"{name}.npy")
        np.save(path, arr)
        fsync_file(path)
    fsync_dir(tmp)
    try:
        os.rename(tmp, folder)
    except OSError:
        if not os.path.isdir(folder):
            raise
        shutil.rmtree(tmp, ignore_errors=True)
    fsync_dir(os.path.dirname(folder))


class IdIndex:
    """Memory-mapped lookup table; ``ids_of_shard(j)`` gives shard j's ids to confirm a hit."""

    def __init__(self, folder: str, ids_of_shard: Callable[[int], list[str]]):
        arrays = {name: np.load(os.path.join(folder, f"{name}.npy"), mmap_mode="r") for name in ARRAYS}
        self.offsets, self.hashes = arrays["offsets"], arrays["hashes"]
        self.shard, self.row = arrays["shard"], arrays["row"]
        self._mask = len(self.offsets) - 2  # nb - 1
        self._ids_of_shard = ids_of_shard

    def __len__(self) -> int:
        return len(self.hashes)

    def locate(self, sample_id: str) -> tuple[int, int] | None:
        """(shard, row) of ``sample_id``, or None when the store does not hold it."""
        h = hash_id(sample_id)
        b = h & self._mask
        for i in range(int(self.offsets[b]), int(self.offsets[b + 1])):
            if int(self.hashes[i]) == h:
                shard, row = int(self.shard[i]), int(self.row[i])
                if self._ids_of_shard(shard)[row] == sample_id:
                    return shard, row
        return None
