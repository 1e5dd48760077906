"""Embedding store: write and random-read throughput and bytes per caption, against one file per sample.

The other side of the comparison is the reference code's layout: one ``torch.save`` file per sample
holding its [R, D] fp16 rows. Both sides store the same random rows; the reads are random ids.

    python benchmarks/bench_store.py [--n 20000] [--rows 11] [--dim 576]
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
import torch

from flameclip.store import EmbeddingStore, StoreWriter


def du(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def bench_store(root: Path, ids, rows, dtype: str, shard_size: int, reads: list[str]):
    cols = [{"name": "raw", "k": 1}, {"name": "short", "k": 3}, {"name": "long", "k": rows.shape[1] - 4}]
    t0 = time.perf_counter()
    w = StoreWriter(root, fingerprint={"bench": 1}, columns=cols, dim=rows.shape[2], ids=ids,
                    shard_size=shard_size, dtype=dtype)
    for j in w.pending_shards():
        lo, hi = w.shard_range(j)
        w.write_shard(j, rows[lo:hi])
    w.finalize()
    write_s = time.perf_counter() - t0
    os.sync()
    store = EmbeddingStore(root)
    store.get(reads[0])
    t0 = time.perf_counter()
    for sid in reads:
        store.get(sid)
    read_s = time.perf_counter() - t0
    return len(ids) / write_s, len(reads) / read_s, du(root) / len(ids)


def bench_files(root: Path, ids, rows, reads: list[str]):
    root.mkdir(parents=True)
    t0 = time.perf_counter()
    for i, sid in enumerate(ids):
        torch.save(torch.from_numpy(rows[i].astype(np.float16)), root / f"{sid}.pt")
    write_s = time.perf_counter() - t0
    os.sync()
    t0 = time.perf_counter()
    for sid in reads:
        torch.load(root / f"{sid}.pt", weights_only=True).float()
    read_s = time.perf_counter() - t0
    return len(ids) / write_s, len(reads) / read_s, du(root) / len(ids)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=20000)
    ap.add_argument("--rows", type=int, default=11, help="rows per sample (1 raw + 3 short + 7 long)")
    ap.add_argument("--dim", type=int, default=576)
    ap.add_argument("--reads", type=int, default=5000)
    ap.add_argument("--shard-size", type=int, default=4096)
    args = ap.parse_args()

    rng = np.random.default_rng(0)
    rows = rng.standard_normal((args.n, args.rows, args.dim), dtype=np.float32)
    ids = [f"sample-{i:08d}" for i in range(args.n)]
    reads = random.Random(0).choices(ids, k=args.reads)
    tmp = Path(tempfile.mkdtemp(prefix="flameclip-bench-"))
    try:
        results = {}
        for dtype in ("fp16", "int8"):
            results[f"store {dtype}"] = bench_store(tmp / dtype, ids, rows, dtype, args.shard_size, reads)
        results["file per sample (fp16)"] = bench_files(tmp / "files", ids, rows, reads)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)

    print(f"{args.n} samples x {args.rows} rows x D={args.dim}; {args.reads} random reads")
    print(f"{'layout':<24} {'write samples/s':>16} {'read samples/s':>15} {'bytes/sample':>13} {'bytes/row':>10}")
    for name, (w, r, b) in results.items():
        print(f"{name:<24} {w:>16.0f} {r:>15.0f} {b:>13.0f} {b / args.rows:>10.0f}")
    base = results["file per sample (fp16)"]
    for name in ("store fp16", "store int8"):
        w, r, b = results[name]
        print(f"{name} vs file per sample: write {w / base[0]:.1f}x, read {r / base[1]:.1f}x, size {b / base[2]:.2f}x")


if __name__ == "__main__":
    main()
