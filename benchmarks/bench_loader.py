"""Training data loader: images/s per CPU core from webdataset tar shards of 224 px JPEGs.

Builds shards of 224 px JPEGs (the demo's training scenes, or Fashion-MNIST, upscaled; quality
90, as img2dataset writes them) and reads them through the training dataset exactly as training
does (random access by tar offset, decode, RandomResizedCrop to 224, normalise, the text rows from
an embedding store), one process, then with DataLoader workers. Each stage is also timed alone on
one core, so what holds the loader back shows. The GPU side of the comparison is a measured figure:
ViT-B/16 training on one H100 at 2,263 images/s (BENCHMARKS.md).

    python benchmarks/bench_loader.py [--images 2000] [--workers 0 2] [--source demo|fashion]
"""

from __future__ import annotations

import argparse
import io
import os
import tarfile
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from tqdm import tqdm

H100_VITB16_IMAGES_S = 2263  # measured, BENCHMARKS.md "Training"
SIZE = 224


def source_images(kind: str, n: int):
    """n PIL images upscaled to 224 px."""
    if kind == "demo":
        from flameclip.data.demo.build import build_demo_data
        from flameclip.demo import data_kwargs

        paths = build_demo_data(Path(tempfile.gettempdir()) / "flameclip-bench-demo", seed=0, progress=False,
                                **data_kwargs("cpu"))
        files = sorted(Path(paths["train_images"]).glob("*.png"))
        for i in range(n):
            yield Image.open(files[i % len(files)]).convert("RGB").resize((SIZE, SIZE), Image.BICUBIC)
    else:
        from flameclip.data.fashion_mnist import find_fashion_mnist, load_split

        if find_fashion_mnist() is None:
            raise SystemExit("Fashion-MNIST is not installed here; use --source demo")
        pixels, _ = load_split("train")
        for i in range(n):
            yield Image.fromarray(pixels[i % len(pixels)]).convert("RGB").resize((SIZE, SIZE), Image.BICUBIC)


def write_shards(folder: Path, kind: str, n: int, per_shard: int = 500) -> str:
    folder.mkdir(parents=True, exist_ok=True)
    tar = None
    for i, im in enumerate(tqdm(source_images(kind, n), total=n, desc="write shards", leave=False)):
        if i % per_shard == 0:
            if tar:
                tar.close()
            tar = tarfile.open(folder / f"{i // per_shard:06d}.tar", "w")
        buf = io.BytesIO()
        im.save(buf, format="JPEG", quality=90)
        for name, data in ((f"{i:09d}.jpg", buf.getvalue()), (f"{i:09d}.txt", f"image {i}".encode())):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    tar.close()
    last = (n - 1) // per_shard
    return str(folder / f"{{000000..{last:06d}}}.tar")


def write_store(folder: Path, ids: list[str], dim: int = 768) -> str:
    from flameclip.store import StoreWriter

    w = StoreWriter(folder, fingerprint={"bench": "loader"}, columns=[{"name": "long", "k": 7}], dim=dim, ids=ids,
                    shard_size=4096, dtype="fp16")
    rng = np.random.default_rng(0)
    for j in w.pending_shards():
        lo, hi = w.shard_range(j)
        w.write_shard(j, rng.standard_normal((hi - lo, 7, dim), dtype=np.float32))
    w.finalize()
    return str(folder)


def time_stages(records, transform, n: int = 300) -> dict[str, float]:
    """ms per image of each stage on one core: read bytes, JPEG decode, crop+resize+normalise."""
    torch.set_num_threads(1)
    blobs, images = [], []
    t0 = time.perf_counter()
    for rec in records[:n]:
        with open(rec.path, "rb") as f:
            f.seek(rec.offset)
            blobs.append(f.read(rec.size))
    t1 = time.perf_counter()
    for b in blobs:
        images.append(Image.open(io.BytesIO(b)).convert("RGB"))
    t2 = time.perf_counter()
    for im in images:
        transform(im)
    t3 = time.perf_counter()
    return {"read": 1e3 * (t1 - t0) / n, "decode": 1e3 * (t2 - t1) / n, "augment": 1e3 * (t3 - t2) / n}


def loader_rate(ds, workers: int, batch_size: int = 64, max_batches: int = 40) -> float:
    from flameclip.data.images import EpochBatchSampler, collate

    torch.set_num_threads(1)
    sampler = EpochBatchSampler(len(ds), batch_size, epoch=0, seed=0)
    dl = torch.utils.data.DataLoader(ds, batch_sampler=sampler, num_workers=workers, collate_fn=collate)
    it = iter(dl)
    next(it)  # workers started, first batch out: the steady state is what is measured
    t0, n = time.perf_counter(), 0
    for i, (images, _, _) in enumerate(it):
        n += len(images)
        if i + 1 >= max_batches:
            break
    return n / (time.perf_counter() - t0)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--images", type=int, default=2000)
    ap.add_argument("--workers", type=int, nargs="+", default=[0, 2])
    ap.add_argument("--source", choices=["demo", "fashion"], default="demo")
    args = ap.parse_args(argv)

    from flameclip.data.images import ImageTextDataset, StoreText, read_webdataset
    from flameclip.data.transforms import train_transform
    from flameclip.store import EmbeddingStore

    with tempfile.TemporaryDirectory(prefix="bench-loader-") as tmp:
        pattern = write_shards(Path(tmp) / "shards", args.source, args.images)
        records = read_webdataset(pattern)
        store = EmbeddingStore(write_store(Path(tmp) / "store", [r.id for r in records]))
        try:
            ds = ImageTextDataset(records, StoreText(store, positives=6), train_transform(SIZE), seed=0, use_views=True)
        except TypeError:  # a version before image views (to time the "before" of a change)
            ds = ImageTextDataset(records, StoreText(store, positives=6), train_transform(SIZE), seed=0)
        stages = time_stages(records, train_transform(SIZE))
        rates = {w: loader_rate(ds, w) for w in args.workers}

    per_core = rates.get(0)
    print(f"\n{args.images:,} JPEGs of {SIZE} px ({args.source}) in webdataset shards; {os.cpu_count()} CPU cores here")
    print("one core, ms per image: " + ", ".join(f"{k} {v:.2f}" for k, v in stages.items())
          + f" (sum {sum(stages.values()):.2f})")
    print("| loader workers | images/s |")
    print("|---:|---:|")
    for w, r in rates.items():
        print(f"| {w} (main process)" if w == 0 else f"| {w}", f"| {r:,.0f} |")
    if per_core:
        need = H100_VITB16_IMAGES_S / per_core
        print(f"\nOne H100 trains ViT-B/16 at {H100_VITB16_IMAGES_S:,} images/s: at {per_core:,.0f} images/s per core "
              f"it needs {need:.1f} loader cores (workers={int(np.ceil(need))}) per GPU.")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
