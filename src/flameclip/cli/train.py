"""``flameclip train``: FLAME (or the CLIP baseline) from a config and KEY=VALUE overrides."""

from __future__ import annotations

import os


def add_parser(sub):
    p = sub.add_parser("train", help="train an image tower on images + an embedding store (or the CLIP baseline)")
    p.add_argument("--config", help="TOML config (see configs/)")
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="settings that override the config, e.g. lr=3e-4 model.vision_depth=4")
    p.add_argument("--no-progress", action="store_true")
    return p


def run(args) -> int:
    from ..config import load_config
    from ..train import train

    cfg = load_config(args.config, args.overrides)
    result = train(cfg, progress=not args.no_progress)
    if int(os.environ.get("RANK", 0)) == 0:
        rows = [
            ("run folder", str(result.out)),
            ("steps", str(result.steps)),
            ("final loss", f"{result.final_loss:.4f}"),
            ("images/s", f"{result.images_per_s:.1f}"),
            ("skipped images", str(result.skipped_images)),
            ("checkpoint", str(result.checkpoint)),
        ] + [(k, f"{v:.3f}") for k, v in result.eval.items()]
        w = max(len(k) for k, _ in rows)
        print("\n".join(f"{k:<{w}}  {v}" for k, v in rows))
    return 0
