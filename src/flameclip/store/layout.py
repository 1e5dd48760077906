"""Where every file of a store lives.

    root/manifest.json              what the store holds and how it was made
    root/shards/000000.npy          [n, R, D] embeddings of samples 0 .. S-1 (fp16, int8 or fp32)
    root/shards/000000.scale.npy    [n, R] float32 per-row scales (int8 stores only)
    root/shards/000000.ids.json     the n sample ids of the shard, in order
    root/shards/000000.sha256       the sha256 of the shard's .npy (see verify.py)
    root/index/*.npy                the id -> (shard, row) lookup table (see index.py)

A shard exists exactly when its ``.npy`` exists: the writer renames that file into place last.
"""

from __future__ import annotations

import os
import re

MANIFEST = "manifest.json"
SHARDS = "shards"
INDEX = "index"

_SUFFIXES = {"data": ".npy", "scale": ".scale.npy", "ids": ".ids.json", "sha256": ".sha256"}
_DATA_NAME = re.compile(r"^(\d{6,})\.npy$")


def manifest_path(root: str) -> str:
    return os.path.join(root, MANIFEST)


def shard_dir(root: str) -> str:
    return os.path.join(root, SHARDS)


def index_dir(root: str) -> str:
    return os.path.join(root, INDEX)


def shard_file(root: str, j: int, kind: str = "data") -> str:
    """Path of shard ``j``'s ``kind`` file: "data", "scale", "ids" or "sha256"."""
    return os.path.join(root, SHARDS, f"{j:06d}{_SUFFIXES[kind]}")


def written_shards(root: str) -> set[int]:
    """Indices of the shards whose data file is in place (one directory listing, not one stat each)."""
    folder = shard_dir(root)
    if not os.path.isdir(folder):
        return set()
    found = set()
    for name in os.listdir(folder):
        m = _DATA_NAME.match(name)
        if m:
            found.add(int(m.group(1)))
    return found
