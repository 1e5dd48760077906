"""Training in fp32 against bf16 autocast on this machine: the demo's FLAME and CLIP runs, both ways.

Each side trains the demo's model on the demo's data and store for the same steps from the same
seed, once in fp32 and once in bf16 (torch.autocast), interleaved (fp32, bf16, bf16, fp32 over two
rounds) so that a slow spell of the machine hits both alike. It prints images per second (the
median of the trainer's own log, first interval left out), the ratio, and the final losses: the
validation figures of the two precisions are in BENCHMARKS.md ("bf16 training"), not here.

On a CPU without bf16 arithmetic (no AVX512-BF16 or AMX) bf16 is emulated and slower: that is why
the demo trains in bf16 only where ``fast_dtype`` finds it.

    python benchmarks/bench_precision.py --demo runs/demo [--steps 150] [--side flame|clip|both]
"""

from __future__ import annotations

import argparse
import csv
import statistics
import tempfile
from pathlib import Path


def images_per_s(run: Path) -> float:
    with open(run / "metrics.csv", newline="") as f:
        rates = [float(r["images_per_s"]) for r in csv.DictReader(f)]
    return statistics.median(rates[1:] or rates)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--demo", default="runs/demo", help="a folder made by `flameclip demo` (its data and store)")
    ap.add_argument("--steps", type=int, default=150)
    ap.add_argument("--side", choices=["flame", "clip", "both"], default="both")
    ap.add_argument("--workers", type=int, default=-1, help="data loader workers (-1: the demo's default)")
    args = ap.parse_args(argv)

    import dataclasses

    from flameclip.config import with_settings
    from flameclip.demo import DEMO_LLM, SIZES, base_config, clip_config, flame_config, store_dir
    from flameclip.train import train

    demo = Path(args.demo)
    store, data = store_dir(demo, DEMO_LLM), demo / "data" / "train"
    if not (store / "manifest.json").exists() or not (data / "fit.jsonl").exists():
        raise SystemExit(f"{demo} has no demo data and store: run `flameclip demo --out {demo}` first")
    sizes = dataclasses.replace(SIZES["cpu"], steps=args.steps)
    sides = ["flame", "clip"] if args.side == "both" else [args.side]
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for side in sides:
            rates: dict[str, list[float]] = {"fp32": [], "bf16": []}
            losses: dict[str, list[float]] = {"fp32": [], "bf16": []}
            for i, precision in enumerate(["fp32", "bf16", "bf16", "fp32"]):
                base = base_config(sizes, Path(tmp) / f"{side}-{i}", args.workers, precision)
                cfg = flame_config(base, store) if side == "flame" else clip_config(base, sizes, data / "captions.jsonl")
                res = train(with_settings(cfg, {"train_manifest": str(data / "fit.jsonl"), "log_every": 10}),
                            progress=False)
                rates[precision].append(images_per_s(res.out))
                losses[precision].append(res.final_loss)
                print(f"{side:5s} {precision}: {rates[precision][-1]:6.1f} images/s, final loss {res.final_loss:.4f}",
                      flush=True)
            fp32, bf16 = statistics.mean(rates["fp32"]), statistics.mean(rates["bf16"])
            # The same seed and steps twice: equal final losses say the precision trains deterministically here.
            same = all(v[0] == v[1] for v in losses.values())
            rows.append((side, fp32, bf16, losses["fp32"][0], losses["bf16"][0], same))
    print(f"\n{args.steps} steps of batch {sizes.batch_size} per run, each precision twice")
    print(f"{'side':6s} {'fp32 img/s':>11s} {'bf16 img/s':>11s} {'bf16/fp32':>10s} {'loss fp32':>10s} {'loss bf16':>10s}"
          f"  repeat runs equal")
    for side, fp32, bf16, l32, l16, same in rows:
        print(f"{side:6s} {fp32:11.1f} {bf16:11.1f} {bf16 / fp32:9.2f}x {l32:10.4f} {l16:10.4f}  {'yes' if same else 'NO'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
