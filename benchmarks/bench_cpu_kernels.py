"""The kernels of a CPU training step: PyTorch's defaults against the trainer's choices, in one run.

The demo's FLAME and CLIP models (its sizes, settings and precision) take optimiser steps on four
batches of the demo's own data, already in memory (no data loading), with:

    defaults   PyTorch's choice of attention kernel (flash on a CPU) and the per-tensor AdamW loop
    math       the math attention kernel, per-tensor AdamW
    fused      flash attention, fused AdamW
    trainer    what ``flameclip train`` runs: fused AdamW, and the attention kernel that
               step_kernels.attention_kernel picks (math in bf16 on a CPU, flash in fp32)

The variants take their steps interleaved over several rounds, so that a slow spell of the machine
hits them alike; the median step time of each is printed with its speed-up over the defaults. The
same for a forward pass of the image tower alone (evaluation), flash against math. Every variant
starts from the same weights and batches: the final losses show that they compute the same thing
(to rounding).

    python benchmarks/bench_cpu_kernels.py --demo runs/demo [--steps 20] [--rounds 3] [--precision auto|bf16|fp32]
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import dataclasses
import statistics
import time
from pathlib import Path

import torch

import flameclip.train as trainer
from flameclip.config import with_settings
from flameclip.data.centering import store_means
from flameclip.demo import DEMO_LLM, SIZES, base_config, clip_config, flame_config, store_dir, training_precision
from flameclip.losses import build_loss
from flameclip.model import FlameModel
from flameclip.step_kernels import attention_kernel
from flameclip.store import EmbeddingStore

VARIANTS = {"defaults": ("flash", False), "math": ("math", False), "fused": ("flash", True),
            "trainer": ("trainer", True)}


def math_kernel(device=None):
    from torch.nn.attention import SDPBackend, sdpa_kernel

    return sdpa_kernel([SDPBackend.MATH])


KERNELS = {"flash": lambda device: contextlib.nullcontext(), "math": math_kernel, "trainer": attention_kernel}


def side_setup(side: str, demo: Path, precision: str):
    """The demo's config for ``side``, four training batches of its data and a model to copy."""
    data = demo / "data" / "train"
    base = base_config(SIZES["cpu"], demo / "bench-kernels", 0, precision)
    if side == "flame":
        cfg = flame_config(base, store_dir(demo, DEMO_LLM))
    else:
        cfg = clip_config(base, SIZES["cpu"], data / "captions.jsonl")
    cfg = with_settings(cfg, {"train_manifest": str(data / "fit.jsonl")})
    cfg = copy.deepcopy(cfg)
    centering = None
    if side == "flame":
        means = store_means(EmbeddingStore(cfg.store), seed=0)
        centering = (means[1], means[2])
        cfg.model.text_facets = list(means[1])
    ds = trainer.build_dataset(cfg, cfg.train_manifest, train=True, centering=centering)
    if side == "flame":
        cfg.model.text_dim = ds.text.store.dim
    it = iter(trainer.loader_for(ds, cfg, trainer.Dist(), 0, 4, len(ds) // cfg.batch_size))
    batches = [next(it)[:2] for _ in range(4)]
    torch.manual_seed(0)
    return cfg, batches, FlameModel(cfg.model)


def make_step(cfg, batches, model0, attention: str, fused: bool, precision: str):
    model = copy.deepcopy(model0)
    opt = trainer.build_optimizer(model, cfg)
    if not fused:  # the same groups and settings, PyTorch's per-tensor loop
        opt = torch.optim.AdamW([{"params": g["params"], "weight_decay": g["weight_decay"]} for g in opt.param_groups],
                                lr=cfg.lr, betas=tuple(cfg.betas))
    loss_fn = build_loss(cfg.loss)
    autocast = torch.autocast("cpu", dtype=torch.bfloat16) if precision == "bf16" else contextlib.nullcontext()
    kernel = KERNELS[attention]
    state = {"i": 0, "loss": float("nan")}

    def step() -> float:
        trainer.attention_kernel = kernel  # what train_step enters around the forward pass
        t0 = time.perf_counter()
        loss = trainer.train_step(model, model, loss_fn, opt, [batches[state["i"] % len(batches)]], torch.device("cpu"),
                                  autocast)
        state["i"] += 1
        state["loss"] = float(loss)
        return time.perf_counter() - t0

    return step, state, model


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--demo", default="runs/demo", help="a folder made by `flameclip demo` (its data and store)")
    ap.add_argument("--steps", type=int, default=20, help="timed steps per variant and round")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--precision", default="auto", help="auto: the demo's (bf16 where the CPU has bf16 arithmetic)")
    ap.add_argument("--side", choices=["flame", "clip", "both"], default="both")
    args = ap.parse_args(argv)
    demo = Path(args.demo)
    if not (store_dir(demo, DEMO_LLM) / "manifest.json").exists():
        raise SystemExit(f"{demo} has no demo data and store: run `flameclip demo --out {demo}` first")
    precision = training_precision(args.precision)
    precision = "fp32" if precision == "auto" else precision
    original = trainer.attention_kernel
    rows = []
    for side in (["flame", "clip"] if args.side == "both" else [args.side]):
        cfg, batches, model0 = side_setup(side, demo, precision)
        steps = {name: make_step(cfg, batches, model0, *flags, precision) for name, flags in VARIANTS.items()}
        for fn, _, _ in steps.values():  # warm-up: first-call allocations and kernel selection
            fn(), fn()
        times: dict[str, list[float]] = {name: [] for name in VARIANTS}
        for r in range(args.rounds):
            order = list(VARIANTS) if r % 2 == 0 else list(reversed(VARIANTS))
            for name in order:
                times[name] += [steps[name][0]() for _ in range(args.steps)]
        base = statistics.median(times["defaults"])
        for name in VARIANTS:
            t = statistics.median(times[name])
            rows.append((side, f"step, {name}", t * 1e3, base / t, steps[name][1]["loss"]))
        # A forward pass of the image tower alone, as evaluation runs it.
        model = steps["trainer"][2].eval()
        images = batches[0][0]
        autocast = torch.autocast("cpu", dtype=torch.bfloat16) if precision == "bf16" else contextlib.nullcontext()
        fwd: dict[str, list[float]] = {"flash": [], "math": []}
        for r in range(args.rounds):
            for name in (["flash", "math"] if r % 2 == 0 else ["math", "flash"]):
                for _ in range(args.steps):
                    ctx = math_kernel() if name == "math" else contextlib.nullcontext()
                    with torch.no_grad(), autocast, ctx:
                        t0 = time.perf_counter()
                        model.encode_image(images)
                        fwd[name].append(time.perf_counter() - t0)
        for name in ("flash", "math"):
            t = statistics.median(fwd[name])
            rows.append((side, f"image forward, {name}", t * 1e3, statistics.median(fwd["flash"]) / t, float("nan")))
    trainer.attention_kernel = original
    print(f"\n{precision}, batch {SIZES['cpu'].batch_size}, {torch.get_num_threads()} threads, "
          f"{args.rounds} rounds x {args.steps} steps per variant (medians)")
    print(f"{'side':6s} {'what':26s} {'ms':>8s} {'speed-up':>9s} {'loss after':>11s}")
    for side, what, ms, speedup, loss in rows:
        print(f"{side:6s} {what:26s} {ms:8.1f} {speedup:8.2f}x {loss:11.4f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
