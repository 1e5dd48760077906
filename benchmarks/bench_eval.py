"""Evaluation throughput: images/s for the image side, queries/s for the text side, in one run.

Text queries of a FLAME checkpoint go through the frozen LLM once and are then read from the
on-disk cache; the benchmark times both (cold and warm) and the CLIP baseline's text tower, and
prints the ratios. Models are built from configs (random weights: speed does not depend on them).

    python benchmarks/bench_eval.py [--images 512] [--queries 128]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import torch

from flameclip.inference import load
from flameclip.model import FlameModel, ModelConfig
from flameclip.text.llm import resolve

ROOT = Path(__file__).resolve().parents[1]


def timed(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--images", type=int, default=512)
    ap.add_argument("--queries", type=int, default=96)
    ap.add_argument("--image-size", type=int, default=64)
    ap.add_argument("--json")
    args = ap.parse_args()

    src = resolve("smollm2-135m")
    vision = dict(vision="custom", image_size=args.image_size, patch_size=8, vision_width=192, vision_depth=6,
                  vision_heads=3)
    tmp = Path(tempfile.mkdtemp(prefix="flameclip-bench-eval-"))
    FlameModel(ModelConfig(**vision, text_dim=576, llm={"llm": "smollm2-135m", "weights_sha256": src.weights_sha256,
                                                        "layer": 29, "hidden_size": 576})).save_pretrained(tmp / "flame")
    FlameModel(ModelConfig(**vision, text_tower="clip", embed_dim=512, clip_width=512, clip_layers=12,
                           clip_heads=8)).save_pretrained(tmp / "clip")
    flame = load(tmp / "flame", device="cpu", text_cache=tmp / "cache")
    clip = load(tmp / "clip", device="cpu")

    pixels = torch.randn(args.images, 3, args.image_size, args.image_size)
    recs = [json.loads(line) for line in open(ROOT / "examples" / "captions.jsonl", encoding="utf-8")]
    longs = [r["long"] + f" ({i})" for i, r in enumerate(recs * (args.queries // len(recs) + 1))][: args.queries]
    shorts = [r["short"] + f" ({i})" for i, r in enumerate(recs * (args.queries // len(recs) + 1))][: args.queries]

    flame.encode_image(pixels[:64])  # warm-up
    flame._facet_encoder()  # load the LLM outside the timings
    res = {
        "images_per_s": args.images / timed(lambda: flame.encode_image(pixels)),
        "flame_single_cold_q_per_s": len(shorts) / timed(lambda: flame.encode_text(shorts, mode="single")),
        "flame_long7_cold_q_per_s": len(longs) / timed(lambda: flame.encode_text(longs, mode="long7")),
    }
    warm = load(tmp / "flame", device="cpu", text_cache=tmp / "cache")  # a second checkpoint's view
    res["flame_long7_warm_q_per_s"] = len(longs) / timed(lambda: warm.encode_text(longs, mode="long7"))
    res["clip_text_q_per_s"] = len(longs) / timed(lambda: clip.encode_text(longs))
    print(f"image side ({args.image_size}px, ViT 192x6): {res['images_per_s']:.0f} images/s")
    print(f"{'text queries':<34} {'queries/s':>10}")
    for k, label in (("flame_single_cold_q_per_s", "FLAME single, LLM (cold cache)"),
                     ("flame_long7_cold_q_per_s", "FLAME long7, LLM (cold cache)"),
                     ("flame_long7_warm_q_per_s", "FLAME long7, warm cache"),
                     ("clip_text_q_per_s", "CLIP baseline text tower")):
        print(f"{label:<34} {res[k]:>10.1f}")
    print(f"warm cache vs cold (long7): {res['flame_long7_warm_q_per_s'] / res['flame_long7_cold_q_per_s']:.0f}x")
    if args.json:
        Path(args.json).write_text(json.dumps(res, indent=2))


if __name__ == "__main__":
    main()
