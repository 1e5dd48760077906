"""Training with one data loader per epoch against one loader for the whole run.

A loader's workers start afresh with each new DataLoader iterator, and the first batches of an
epoch wait for them. The demo's runs have about 36 steps per epoch, so the restart is paid about
28 times per run. This times the demo's FLAME training steps (its model, data and store, on this
machine) over the same batches both ways, checks that the batches are the same, and prints the
ratio (the per-epoch side is run before and after the other, and its two times averaged).

    python benchmarks/bench_loader_restarts.py --demo runs/demo [--epochs 6] [--workers 1]
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import tempfile
import time
from pathlib import Path

import torch
from tqdm import tqdm


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--demo", default="runs/demo", help="a folder made by `flameclip demo` (its data and store)")
    ap.add_argument("--epochs", type=int, default=6)
    ap.add_argument("--workers", type=int, default=1)
    args = ap.parse_args(argv)

    from flameclip.data.images import EpochBatchSampler, collate
    from flameclip.demo import DEMO_LLM, SIZES, base_config, flame_config, store_dir
    from flameclip.losses import build_loss
    from flameclip.model import FlameModel
    from flameclip.train import build_dataset, build_optimizer, train_step

    demo = Path(args.demo)
    store = store_dir(demo, DEMO_LLM)
    fit = demo / "data" / "train" / "fit.jsonl"
    if not (store / "manifest.json").exists() or not fit.exists():
        raise SystemExit(f"{demo} has no demo data and store: run `flameclip demo --out {demo}` first")
    torch.manual_seed(0)
    with tempfile.TemporaryDirectory() as tmp:
        # Centring and whitening are fixed matrices on the text rows: no cost that this compares.
        cfg = flame_config(base_config(SIZES["cpu"], Path(tmp), args.workers, "fp32"), store,
                           train_manifest=str(fit), model={"text_center": "none", "text_whiten": 0.0})
    ds = build_dataset(cfg, cfg.train_manifest, train=True)
    cfg.model.text_dim = ds.text.store.dim
    model = FlameModel(cfg.model)
    opt, loss_fn = build_optimizer(model, cfg), build_loss(cfg.loss)
    per_epoch = len(ds) // cfg.batch_size

    def loaders(one: bool):
        def make(epoch, epochs):
            sampler = EpochBatchSampler(len(ds), cfg.batch_size, epoch, cfg.seed, epochs=epochs)
            return torch.utils.data.DataLoader(ds, batch_sampler=sampler, num_workers=args.workers, collate_fn=collate)
        if one:
            yield from make(0, args.epochs)
        else:
            for e in range(args.epochs):
                yield from make(e, 1)

    for images, texts, _ in loaders(True):  # warm-up: the first steps of a process are slow either way
        train_step(model, model, loss_fn, opt, [(images, texts)], torch.device("cpu"), contextlib.nullcontext())
        break
    # Per epoch, one loader, per epoch again: the first and last runs' mean cancels a drift of the
    # machine over the benchmark (the process warming up, another job starting).
    seconds, digests = {}, {}
    for name, one in (("a loader per epoch", False), ("one loader for the run", True), ("a loader per epoch", False)):
        t0, seen = time.perf_counter(), []
        for images, texts, _ in tqdm(loaders(one), total=per_epoch * args.epochs, desc=name, unit="step"):
            train_step(model, model, loss_fn, opt, [(images, texts)], torch.device("cpu"), contextlib.nullcontext())
            seen.append(hashlib.sha256(images.numpy().tobytes() + texts.numpy().tobytes()).hexdigest())
        seconds.setdefault(name, []).append(time.perf_counter() - t0)
        digests[name] = seen
    seconds = {name: sum(s) / len(s) for name, s in seconds.items()}
    same = digests["a loader per epoch"] == digests["one loader for the run"]
    steps = per_epoch * args.epochs
    print(f"\nThe demo's FLAME training, {steps} steps ({args.epochs} epochs of {per_epoch}), batch {cfg.batch_size}, "
          f"{args.workers} loader worker(s), {torch.get_num_threads()} torch threads; the same batches both ways: {same}")
    print("| loader | seconds | ms per step |")
    print("|---|---:|---:|")
    for name, s in seconds.items():
        print(f"| {name} | {s:.1f} | {1e3 * s / steps:.0f} |")
    a, b = seconds.values()
    print(f"\none loader is {a / b:.2f}x as fast ({a - b:.1f} s less, {(a - b) / (args.epochs - 1):.2f} s per epoch "
          "boundary)")
    return 0 if same else 1


if __name__ == "__main__":
    raise SystemExit(main())
