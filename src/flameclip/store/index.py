"""The id -> (shard, row) lookup table: O(1) lookups without loading the store into memory.

A hash table laid out as four flat arrays, saved as .npy files and memory-mapped on open, so
opening a store with millions of samples reads nothing but a few pages:

``offsets`` int64 [nb + 1]
    entries of bucket b are ``offsets[b]:offsets[b + 1]``; nb is a power of two >= N.
``hashes`` uint64 [N]
    64-bit blake2b of each id, entries sorted by (bucket, hash, global position).
``shard``, ``row`` int32 [N]
    where each entry's sample lives.
``id_offsets`` int64 [N + 1], ``id_bytes`` uint8
    each entry's id, UTF-8, at ``id_bytes[id_offsets[i]:id_offsets[i + 1]]``.

A lookup hashes the id, scans its bucket (one entry on average) and confirms the id string
against the entry's own id bytes, so even a 64-bit hash collision cannot return another sample's
rows, and the confirmation costs one small read, whatever the number of shards. (Stores written
before the id arrays existed confirm against the shard's ids.json instead, which is slow once a
store has more shards than the reader keeps id lists of.)
The sort order is total, so the files are identical for identical ids however the store was made.
"""

from __future__ import annotations

import hashlib
import os
import shutil
from typing import Callable

import numpy as np

from ..fileio import fsync_dir, fsync_file, tmp_name

ARRAYS = {"offsets": np.dtype("<i8"), "hashes": np.dtype("<u8"), "shard": np.dtype("<i4"), "row": np.dtype("<i4"),
          "id_offsets": np.dtype("<i8"), "id_bytes": np.dtype("u1")}
ID_ARRAYS = ("id_offsets", "id_bytes")  # optional on open: older stores lack them


def hash_id(sample_id: str) -> int:
    """A stable 64-bit hash (Python's hash() changes between processes)."""
    return hash_bytes(sample_id.encode("utf-8"))


def hash_bytes(key: bytes) -> int:
    return int.from_bytes(hashlib.blake2b(key, digest_size=8).digest(), "little")


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
    encoded = [ids[i].encode("utf-8") for i in position]
    id_offsets = np.zeros(n + 1, dtype=np.int64)
    np.cumsum(np.fromiter(map(len, encoded), dtype=np.int64, count=n), out=id_offsets[1:])
    arrays = {
        "offsets": offsets,
        "hashes": hashes[order],
        "shard": position // shard_size,
        "row": position % shard_size,
        "id_offsets": id_offsets,
        "id_bytes": np.frombuffer(b"".join(encoded), dtype=np.uint8),
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
        arrays = {}
        for name in ARRAYS:
            path = os.path.join(folder, f"{name}.npy")
            if name in ID_ARRAYS and not os.path.exists(path):
                continue
            try:
                # A plain ndarray over the memory map: indexing it costs a third of indexing a memmap.
                arrays[name] = np.asarray(np.load(path, mmap_mode="r"))
            except ValueError:  # an empty array cannot be memory-mapped (ids that are all "")
                arrays[name] = np.load(path)
        self.offsets, self.hashes = arrays["offsets"], arrays["hashes"]
        self.shard, self.row = arrays["shard"], arrays["row"]
        self.id_offsets, self.id_bytes = arrays.get("id_offsets"), arrays.get("id_bytes")
        self._mask = len(self.offsets) - 2  # nb - 1
        self._ids_of_shard = ids_of_shard

    def __len__(self) -> int:
        return len(self.hashes)

    def locate(self, sample_id: str) -> tuple[int, int] | None:
        """(shard, row) of ``sample_id``, or None when the store does not hold it."""
        key = sample_id.encode("utf-8")
        h = hash_bytes(key)
        b = h & self._mask
        for i in range(int(self.offsets[b]), int(self.offsets[b + 1])):
            if int(self.hashes[i]) == h:
                shard, row = int(self.shard[i]), int(self.row[i])
                if self.id_bytes is not None:
                    found = self.id_bytes[int(self.id_offsets[i]):int(self.id_offsets[i + 1])].tobytes() == key
                else:
                    found = self._ids_of_shard(shard)[row] == sample_id
                if found:
                    return shard, row
        return None
