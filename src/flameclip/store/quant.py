"""The three on-disk number formats and how rows are converted to and from them.

``fp32`` is exact, ``fp16`` halves the size at ~1e-3 relative error, and ``int8`` quarters it with
a symmetric scale per row (one row = one facet embedding of width D): ``q = round(x / scale)``,
``scale = max|x| / 127``. A per-row scale keeps facets of very different norms equally precise.
Explicit little-endian dtypes make shard files byte-identical on every machine.
"""

from __future__ import annotations

import numpy as np

DTYPES = {
    "fp16": np.dtype("<f2"),
    "int8": np.dtype("i1"),
    "fp32": np.dtype("<f4"),
}
SCALE_DTYPE = np.dtype("<f4")


def encode(rows: np.ndarray, dtype: str) -> tuple[np.ndarray, np.ndarray | None]:
    """float32 ``[..., D]`` -> (stored values, per-row scales ``[...]`` for int8, else None)."""
    rows = np.asarray(rows, dtype=np.float32)
    if dtype != "int8":
        with np.errstate(over="ignore"):  # the writer reports fp16 overflow itself, naming the sample
            return rows.astype(DTYPES[dtype]), None
    scale = np.abs(rows).max(axis=-1) / np.float32(127.0)
    # An all-zero row (or one so tiny its scale underflows) would divide by zero; any scale
    # encodes it as zeros, and 1 keeps the file deterministic.
    scale = np.where(scale > 0, scale, np.float32(1.0)).astype(SCALE_DTYPE)
    q = np.clip(np.rint(rows / scale[..., None]), -127, 127).astype(DTYPES["int8"])
    return q, scale


def decode(values: np.ndarray, scale: np.ndarray | None = None) -> np.ndarray:
    """Stored values (and int8 scales) -> a fresh float32 array, never a view of a memory map."""
    out = np.array(values, dtype=np.float32)
    if scale is not None:
        out *= np.asarray(scale, dtype=np.float32)[..., None]
    return out
