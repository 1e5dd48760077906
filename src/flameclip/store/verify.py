"""Is every shard of a store whole? A cheap check on every open for writing, a full one on request.

The cheap check reads each shard's ``.npy`` header and compares the shape it declares and the file's
size with what the manifest says: a truncated or foreign file is caught without reading its data.
The full check (``flameclip verify STORE``) also hashes every data file against the sha256 the
writer recorded beside it, so flipped bits are caught too.
"""

from __future__ import annotations

import json
import os

import numpy as np

from ..fileio import file_sha256
from .layout import shard_file, written_shards
from .quant import DTYPES, SCALE_DTYPE


def expected_shape(manifest: dict, j: int) -> tuple[int, int, int]:
    n = min(manifest["shard_size"], manifest["num_samples"] - j * manifest["shard_size"])
    rows = sum(c["k"] for c in manifest["columns"])
    return n, rows, manifest["dim"]


def npy_problem(path: str, want_shape: tuple, want_dtype: np.dtype) -> tuple[str | None, int]:
    """(what is wrong with a .npy file from its header and size alone, or None; its data's byte offset)."""
    try:
        with open(path, "rb") as f:
            version = np.lib.format.read_magic(f)
            read_header = {(1, 0): np.lib.format.read_array_header_1_0, (2, 0): np.lib.format.read_array_header_2_0}
            if version not in read_header:
                return f"{path}: .npy version {version}, which flameclip does not write", 0
            shape, fortran, dtype = read_header[version](f)
            data_start = f.tell()
    except (ValueError, OSError, EOFError) as e:
        return f"{path}: not a readable .npy file ({e})", 0
    want_dtype = np.dtype(want_dtype)
    if tuple(shape) != tuple(want_shape) or dtype != want_dtype or fortran:
        return f"{path}: holds {dtype}{list(shape)}, the manifest says {want_dtype}{list(want_shape)}", data_start
    size, want = os.path.getsize(path), data_start + int(np.prod(want_shape)) * want_dtype.itemsize
    if size != want:
        return f"{path}: {size} bytes, {want} expected (truncated or appended to)", data_start
    return None, data_start


def shard_problem(root: str, manifest: dict, j: int) -> str | None:
    """What is wrong with shard ``j``'s data file (and an int8 store's scales) from headers and sizes
    alone (None: looks whole)."""
    shape = expected_shape(manifest, j)
    bad = npy_problem(shard_file(root, j, "data"), shape, DTYPES[manifest["dtype"]])[0]
    if bad is None and manifest["dtype"] == "int8":
        bad = npy_problem(shard_file(root, j, "scale"), shape[:2], SCALE_DTYPE)[0]
    return bad


def verify_store(root: str, manifest: dict, full: bool = True) -> tuple[int, list[str]]:
    """(shards checked, problems): missing shards, bad headers and sizes, and with ``full`` the id
    lists and the recorded sha256 of every data file."""
    problems = []
    done = written_shards(root)
    for j in range(manifest["num_shards"]):
        if j not in done:
            problems.append(f"{shard_file(root, j, 'data')}: missing")
            continue
        bad = shard_problem(root, manifest, j)
        if bad:
            problems.append(bad)
            continue
        if not full:
            continue
        try:
            with open(shard_file(root, j, "ids"), encoding="utf-8") as f:
                n_ids = len(json.load(f))
        except (OSError, ValueError) as e:
            problems.append(f"{shard_file(root, j, 'ids')}: unreadable ({e})")
            continue
        if n_ids != expected_shape(manifest, j)[0]:
            problems.append(f"{shard_file(root, j, 'ids')}: {n_ids} ids, {expected_shape(manifest, j)[0]} expected")
        sha = shard_file(root, j, "sha256")
        if os.path.exists(sha):
            with open(sha, encoding="ascii", errors="replace") as f:
                recorded = f.read().split()  # the data file's sha256, then (int8) the scales'
            kinds = ("data", "scale") if manifest["dtype"] == "int8" else ("data",)
            # An int8 shard written before the scales' digest was kept has one line: its data is checked.
            if not 1 <= len(recorded) <= len(kinds):
                problems.append(f"{sha}: {len(recorded)} digests, {len(kinds)} expected; move the shard's files "
                                "away and run the same `flameclip embed` command to embed it again")
                continue
            for kind, want in zip(kinds, recorded):
                if file_sha256(shard_file(root, j, kind)) != want:
                    problems.append(f"{shard_file(root, j, kind)}: its sha256 differs from the one recorded when "
                                    "it was written; move the shard's files away and run the same `flameclip embed` "
                                    "command to embed it again")
    return manifest["num_shards"], problems
