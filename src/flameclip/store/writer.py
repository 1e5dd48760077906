"""StoreWriter: fills a store shard by shard, so a killed run resumes where it stopped.

Samples are cut into shards of ``shard_size`` in input order. Shard j belongs to rank
``j % world_size``; each rank asks for its ``pending_shards()``, encodes them and hands each one to
``write_shard``. A shard is written to temporary files, fsynced and renamed into place with its
``.npy`` last, so a shard is either fully there or treated as not written at all. When no shard is
missing, ``finalize`` builds the id index and marks the manifest complete.

Nothing written depends on the rank, the number of ranks, the time or on interruptions, so the
same inputs always give byte-identical stores; that is what makes resuming safe to trust.
"""

from __future__ import annotations

import json
import math
import os
import sys
import time

import numpy as np

from ..fileio import file_sha256, fsync_dir, fsync_file, is_tmp, remove_tmp_entries, tmp_name, write_tmp_bytes
from .index import build_index, write_index
from .layout import index_dir, manifest_path, shard_dir, shard_file, written_shards
from .manifest import (
    STORE_FORMAT,
    StoreMismatchError,
    as_json,
    compare_config,
    ids_digest,
    mismatch_message,
    read_manifest,
    write_manifest,
)
from .quant import DTYPES, encode
from .verify import shard_problem

# How long ranks other than 0 wait for rank 0 to create the store.
MANIFEST_WAIT_S = 60.0
_POLL_S = 0.2


def _check_ids(ids: list[str]) -> None:
    first_seen: dict[str, int] = {}
    for i, sample_id in enumerate(ids):
        if not isinstance(sample_id, str) or not sample_id:
            raise ValueError(f"sample id at position {i} must be a non-empty string, got {sample_id!r}")
        if "\n" in sample_id:  # the id digest and ids.json rely on ids being single lines
            raise ValueError(f"sample id at position {i} contains a newline: {sample_id!r}")
        if sample_id in first_seen:
            raise ValueError(f"sample id {sample_id!r} appears twice: at positions {first_seen[sample_id]} and {i}")
        first_seen[sample_id] = i


def _check_columns(columns: list[dict]) -> list[dict]:
    if not columns:
        raise ValueError("a store needs at least one caption column")
    names = set()
    for c in columns:
        name, k = c.get("name"), c.get("k")
        if not isinstance(name, str) or not name:
            raise ValueError(f"every column needs a non-empty 'name', got {c!r}")
        if name in names:
            raise ValueError(f"column {name!r} is listed twice")
        if not isinstance(k, int) or isinstance(k, bool) or k < 1:
            raise ValueError(f"column {name!r}: 'k' must be a positive integer, got {k!r}")
        names.add(name)
    return as_json(list(columns))


class StoreWriter:
    def __init__(
        self,
        root,
        *,
        fingerprint: dict,
        columns: list[dict],
        dim: int,
        ids: list[str],
        shard_size: int = 4096,
        dtype: str = "fp16",
        rank: int = 0,
        world_size: int = 1,
        caption_digests: list[str] | None = None,
    ):
        """``caption_digests``: one digest per shard of the texts it was embedded from, so a rerun
        on edited captions is refused instead of keeping the old vectors."""
        if dtype not in DTYPES:
            raise ValueError(f"dtype must be one of {', '.join(DTYPES)}, got {dtype!r}")
        if not isinstance(dim, int) or dim < 1:
            raise ValueError(f"dim must be a positive integer, got {dim!r}")
        if not isinstance(shard_size, int) or shard_size < 1:
            raise ValueError(f"shard_size must be a positive integer, got {shard_size!r}")
        if not 0 <= rank < world_size:
            raise ValueError(f"rank must be in [0, world_size), got rank {rank} of {world_size}")
        if not isinstance(fingerprint, dict):
            raise TypeError(f"fingerprint must be a dict, got {type(fingerprint).__name__}")
        self.root = os.fspath(root)
        self.ids = list(ids)
        _check_ids(self.ids)
        columns = _check_columns(columns)
        self.columns = columns
        self.rank, self.world_size = rank, world_size
        self.dim, self.dtype, self.shard_size = dim, dtype, shard_size
        self.num_rows = sum(c["k"] for c in columns)
        self.num_samples = len(self.ids)
        self.num_shards = math.ceil(self.num_samples / shard_size)
        self.manifest = {
            "format": STORE_FORMAT,
            "fingerprint": as_json(fingerprint),
            "columns": columns,
            "dim": dim,
            "dtype": dtype,
            "num_samples": self.num_samples,
            "shard_size": shard_size,
            "num_shards": self.num_shards,
            "ids_sha256": ids_digest(self.ids),
            "complete": False,
        }
        if caption_digests is not None:
            if len(caption_digests) != self.num_shards:
                raise ValueError(f"{len(caption_digests)} caption digests for {self.num_shards} shards")
            self.manifest["captions_sha256"] = list(caption_digests)
        self._open_or_create()

    # --- the store on disk -------------------------------------------------------------------

    def _open_or_create(self) -> None:
        existing = read_manifest(self.root)
        if existing is None:
            if self.rank == 0:
                self._create()
                return
            existing = self._wait_for_manifest()
        diffs = compare_config(existing, self.manifest)
        if diffs:
            raise StoreMismatchError(mismatch_message(self.root, diffs))
        self._check_captions(existing)
        os.makedirs(shard_dir(self.root), exist_ok=True)
        if self.rank == 0:
            self._set_aside_damaged(existing)

    def _check_captions(self, existing: dict) -> None:
        old, new = existing.get("captions_sha256"), self.manifest.get("captions_sha256")
        if old is None or new is None or old == new:
            return  # a store from before caption digests cannot be checked; its ids still are
        changed = [j for j, (a, b) in enumerate(zip(old, new)) if a != b]
        lo, hi = self.shard_range(changed[0])
        raise StoreMismatchError(
            f"{self.root}: the captions changed since they were embedded ({len(changed)} shard(s); first: samples "
            f"{self.ids[lo]!r} to {self.ids[hi - 1]!r}); use a new --out folder, or delete the store to embed again")

    def _set_aside_damaged(self, existing: dict) -> None:
        """Rename shards whose header or size is wrong (a truncated copy, a full disk) out of the way,
        so this run embeds them again; the damaged file is kept beside, never deleted."""
        damaged = []
        for j in sorted(written_shards(self.root)):
            if j < self.num_shards and shard_problem(self.root, existing, j):
                path = shard_file(self.root, j, "data")
                os.replace(path, path + ".damaged")
                damaged.append(path)
        if damaged:
            print(f"{self.root}: {len(damaged)} damaged shard(s) set aside as *.damaged and embedded again "
                  f"(first: {damaged[0]})", file=sys.stderr, flush=True)
            if existing.get("complete"):
                write_manifest(self.root, {**existing, "complete": False})

    def _create(self) -> None:
        # Refuse to scatter files into a folder that holds something else. A killed first run may
        # have left only an empty shards/ folder and temporary files; those are ours to reuse.
        if os.path.isdir(self.root):
            foreign = sorted(n for n in os.listdir(self.root) if n != "shards" and not is_tmp(n))
            if foreign:
                raise FileExistsError(
                    f"{self.root} already holds files that are not an embedding store "
                    f"({', '.join(foreign[:3])}{', ...' if len(foreign) > 3 else ''}): use a new --out folder"
                )
        os.makedirs(shard_dir(self.root), exist_ok=True)
        # The manifest comes last: once it exists, the other ranks may start writing shards.
        write_manifest(self.root, self.manifest)

    def _wait_for_manifest(self) -> dict:
        deadline = time.monotonic() + MANIFEST_WAIT_S
        while time.monotonic() < deadline:
            time.sleep(_POLL_S)
            existing = read_manifest(self.root)
            if existing is not None:
                return existing
        raise TimeoutError(
            f"rank {self.rank} waited {MANIFEST_WAIT_S:.0f} s for rank 0 to create {manifest_path(self.root)}: is rank 0 running?"
        )

    # --- which shards to write ---------------------------------------------------------------

    def shard_range(self, j: int) -> tuple[int, int]:
        """Global input positions [start, stop) of the samples in shard j."""
        if not 0 <= j < self.num_shards:
            raise IndexError(f"shard {j} does not exist: the store has {self.num_shards} shards")
        start = j * self.shard_size
        return start, min(start + self.shard_size, self.num_samples)

    def shard_ids(self, j: int) -> list[str]:
        start, stop = self.shard_range(j)
        return self.ids[start:stop]

    def pending_shards(self) -> list[int]:
        """Shards of this rank (``j % world_size == rank``) that are not written yet."""
        done = written_shards(self.root)
        return [j for j in range(self.rank, self.num_shards, self.world_size) if j not in done]

    def missing_shards(self) -> list[int]:
        """Shards of any rank that are not written yet."""
        done = written_shards(self.root)
        return [j for j in range(self.num_shards) if j not in done]

    # --- writing -----------------------------------------------------------------------------

    def write_shard(self, j: int, rows: np.ndarray) -> None:
        """Store the float32 rows ``[n, R, D]`` of shard j (samples in shard order), atomically."""
        start, stop = self.shard_range(j)
        rows = np.asarray(rows)
        expected = (stop - start, self.num_rows, self.dim)
        if rows.shape != expected:
            raise ValueError(f"shard {j}: rows have shape {tuple(rows.shape)}, expected {expected} (samples, rows, dim)")
        rows = rows.astype(np.float32, copy=False)
        self._check_finite(j, rows, "has a NaN or infinite value")
        values, scale = encode(rows, self.dtype)
        if self.dtype == "fp16":
            self._check_finite(j, values, "has a value beyond the fp16 range (use dtype fp32 or int8)")

        ids_path = shard_file(self.root, j, "ids")
        ids_text = json.dumps(self.ids[start:stop], ensure_ascii=False, indent=0) + "\n"
        renames = [(write_tmp_bytes(ids_path, ids_text.encode("utf-8")), ids_path)]
        data_path = shard_file(self.root, j, "data")
        data_tmp = self._tmp_npy(data_path, values)
        digests = [file_sha256(data_tmp)]  # the data file's, then (int8) the scales' beside it
        if scale is not None:
            scale_path = shard_file(self.root, j, "scale")
            scale_tmp = self._tmp_npy(scale_path, scale)
            renames.append((scale_tmp, scale_path))
            digests.append(file_sha256(scale_tmp))
        sha_path = shard_file(self.root, j, "sha256")
        renames.append((write_tmp_bytes(sha_path, "".join(d + "\n" for d in digests).encode("ascii")), sha_path))

        folder = shard_dir(self.root)
        for tmp, path in renames:
            os.replace(tmp, path)
        fsync_dir(folder)  # the side files must be durable before the .npy says the shard exists
        os.replace(data_tmp, data_path)
        fsync_dir(folder)

    def _check_finite(self, j: int, values: np.ndarray, what: str) -> None:
        ok = np.isfinite(values).reshape(len(values), -1).all(axis=1)
        if not ok.all():
            first = int(np.argmin(ok))
            raise ValueError(f"shard {j}: sample {self.ids[j * self.shard_size + first]!r} {what}")

    @staticmethod
    def _tmp_npy(path: str, values: np.ndarray) -> str:
        """A durable temporary .npy of ``values`` beside ``path`` (a standard file np.load can map)."""
        tmp = tmp_name(path)
        out = np.lib.format.open_memmap(tmp, mode="w+", dtype=values.dtype, shape=values.shape)
        out[...] = values
        out.flush()
        del out  # unmap before fsync so every page has reached the file
        fsync_file(tmp)
        return tmp

    # --- finishing ---------------------------------------------------------------------------

    def finalize(self) -> bool:
        """Build the index and mark the store complete once every shard exists.

        Returns False (and does nothing) while shards are missing, so every rank may call it when
        it is done; the call that finds nothing missing finishes the store. Calling it again, or
        from two ranks at once, is harmless: both write identical files.
        """
        if self.missing_shards():
            return False
        manifest = read_manifest(self.root)
        if manifest.get("complete") and os.path.isdir(index_dir(self.root)):
            return True
        try:
            write_index(index_dir(self.root), build_index(self.ids, self.shard_size))
            remove_tmp_entries(shard_dir(self.root))  # every shard exists: no write is in flight
            write_manifest(self.root, {**manifest, "complete": True})
        except FileNotFoundError:
            # A rank finalizing at the same moment finished first and swept our temporary files
            # away; its store is byte-identical to the one we were writing.
            if not (read_manifest(self.root) or {}).get("complete"):
                raise
        remove_tmp_entries(self.root)
        return True
