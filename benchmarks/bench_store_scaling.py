"""Embedding store: random reads per second against the number of shards (the index's cost at scale).

A store of S shards of 4,096 samples each (11 rows, a small D: the lookup is what is measured, not
the bytes) is written once per S, then read at random by id in one process. At S = 720 the store
has CC3M's 2.9M samples. Two readers are timed on the same store in one run: the id arrays in the
index (this version), and the same store with those arrays removed, which confirms every hit
against the shard's ids.json as stores written before them do. The resident memory that
opening the store and reading it adds is printed too: it must not grow with the store.

It also writes 512 samples at the paper's LLM width (Mistral-Nemo, D = 5,120) in fp16 and int8 and
prints the bytes per sample on disk, and what CC3M's 2.9M samples need.

    python benchmarks/bench_store_scaling.py [--shards 8 64 256 720] [--reads 20000] [--dim 8]
"""

from __future__ import annotations

import argparse
import os
import random
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
from tqdm import tqdm

from flameclip.store import EmbeddingStore, StoreWriter

try:
    from flameclip.store.index import ID_ARRAYS
except ImportError:  # a version before the id arrays: its reader is the "before" of this benchmark
    ID_ARRAYS = ()

PER_SHARD = 4096
ROWS = 11
CC3M = 2_905_954  # image-text pairs of CC3M that the paper trains on
NEMO_DIM = 5120


def bytes_per_sample(dtype: str, n: int = 512) -> float:
    root = Path(tempfile.mkdtemp(prefix="store-bytes-")) / "s"
    try:
        ids = [f"cc3m-{i:09d}" for i in range(n)]
        cols = [{"name": "raw", "k": 1}, {"name": "short", "k": 3}, {"name": "long", "k": ROWS - 4}]
        w = StoreWriter(root, fingerprint={"bench": "bytes"}, columns=cols, dim=NEMO_DIM, ids=ids, shard_size=256,
                        dtype=dtype)
        rng = np.random.default_rng(0)
        for j in w.pending_shards():
            lo, hi = w.shard_range(j)
            w.write_shard(j, rng.standard_normal((hi - lo, ROWS, NEMO_DIM), dtype=np.float32))
        w.finalize()
        return sum(p.stat().st_size for p in root.rglob("*") if p.is_file()) / n
    finally:
        shutil.rmtree(root.parent, ignore_errors=True)


def build(root: Path, n_shards: int, dim: int) -> list[str]:
    ids = [f"cc3m-{i:09d}" for i in range(n_shards * PER_SHARD)]
    cols = [{"name": "raw", "k": 1}, {"name": "short", "k": 3}, {"name": "long", "k": ROWS - 4}]
    w = StoreWriter(root, fingerprint={"bench": "scaling"}, columns=cols, dim=dim, ids=ids, shard_size=PER_SHARD,
                    dtype="fp16")
    rng = np.random.default_rng(0)
    for j in tqdm(w.pending_shards(), desc=f"write {n_shards} shards", leave=False):
        lo, hi = w.shard_range(j)
        w.write_shard(j, rng.standard_normal((hi - lo, ROWS, dim), dtype=np.float32))
    w.finalize()
    return ids


def rss_mib() -> float:
    """The process's resident memory now (not its peak, which the store's build sets)."""
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmRSS:")) / 1024


def reads_per_s(root: Path, reads: list[str]) -> tuple[float, float]:
    """(random reads per second, MiB of resident memory the open store and its reads added)."""
    before = rss_mib()
    store = EmbeddingStore(root)
    store.get(reads[0])
    t0 = time.perf_counter()
    for sid in reads:
        store.get(sid)
    rate = len(reads) / (time.perf_counter() - t0)
    grown = rss_mib() - before
    getattr(store, "close", lambda: None)()
    return rate, grown


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--shards", type=int, nargs="+", default=[8, 64, 256, 720])
    ap.add_argument("--reads", type=int, default=20000)
    ap.add_argument("--dim", type=int, default=8)
    ap.add_argument("--tmp", default=None, help="folder for the stores (default: the system's temporary folder)")
    args = ap.parse_args(argv)

    table = []
    for n_shards in args.shards:
        root = Path(tempfile.mkdtemp(prefix="store-scaling-", dir=args.tmp)) / "s"
        try:
            ids = build(root, n_shards, args.dim)
            os.sync()
            reads = random.Random(0).choices(ids, k=args.reads)
            new, rss = reads_per_s(root, reads)
            for name in ID_ARRAYS:  # the same store as an older version wrote it
                (root / "index" / f"{name}.npy").unlink()
            old = reads_per_s(root, reads)[0] if ID_ARRAYS else float("nan")
            table.append((n_shards, len(ids), new, old, rss))
            print(f"{n_shards:5d} shards  {len(ids):10,d} ids  id arrays {new:10,.0f}/s  ids.json {old:10,.0f}/s  "
                  f"ratio {new / old:5.1f}x  reader RSS +{rss:.0f} MiB", flush=True)
        finally:
            shutil.rmtree(root.parent, ignore_errors=True)

    print(f"\nrandom reads by id, one process, {args.reads:,} reads, {ROWS} rows x D={args.dim} fp16, "
          f"{PER_SHARD:,} samples per shard")
    print("| shards | ids | reads/s (id arrays) | reads/s (ids.json, older stores) | ratio | reader RSS MiB |")
    print("|---:|---:|---:|---:|---:|---:|")
    for n_shards, n, new, old, rss in table:
        print(f"| {n_shards} | {n:,} | {new:,.0f} | {old:,.0f} | {new / old:.1f}x | {rss:.0f} |")
    print(f"\n{ROWS} rows x D={NEMO_DIM} (Mistral-Nemo), bytes per sample on disk, and CC3M's {CC3M:,} samples:")
    for dtype in ("fp16", "int8"):
        b = bytes_per_sample(dtype)
        print(f"  {dtype}: {b:,.0f} bytes/sample -> {b * CC3M / 1e9:,.0f} GB ({b * CC3M / 2**30:,.0f} GiB)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
