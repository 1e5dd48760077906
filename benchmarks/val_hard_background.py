"""Does a model find a long caption's hard-negative group by its background? Validation groups only.

On the demo's held-out hard-negative groups (``train/val_groups.jsonl``: four scenes that differ only
in their last-named object, never trained on and never an evaluation set), each checkpoint ranks the
images for every caption. Printed: text->image R@5, how often the caption's own group is among the
top 5, and how often the best image of another group has the same background as the caption's scene
(the caption's whole background phrase: "a plain teal background", "a background that fades from
brown at the top to dark green at the bottom"), with that share's chance over the other groups.

    python benchmarks/val_hard_background.py --demo runs/demo \\
        --checkpoint runs/demo/train-flame/checkpoints/step-0001500 runs/demo/train-clip/checkpoints/step-0001500
"""

from __future__ import annotations

import argparse
import json
import re
from pathlib import Path

import torch


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--demo", default="runs/demo")
    ap.add_argument("--checkpoint", nargs="+", required=True)
    ap.add_argument("--mode", default="long3", help="FLAME's prompt set for the long captions (the demo's store)")
    args = ap.parse_args(argv)

    from flameclip.evaluate.datasets import iterate_images
    from flameclip.inference import load

    data = Path(args.demo) / "data" / "train"
    rows = [json.loads(line) for line in (data / "val_groups.jsonl").read_text(encoding="utf-8").splitlines()]
    # The first sentence's phrase, whole: a gradient's colours come after "a background that fades".
    background = [re.search(r"shows \w+ objects? on (.*?)\.", r["caption"]).group(1) for r in rows]
    groups = torch.tensor([r["group"] for r in rows])
    n = len(rows)
    other = groups[None, :] != groups[:, None]
    same_bg = torch.tensor([[a == b for b in background] for a in background])
    chance = float((same_bg & other).sum() / other.sum())
    print(f"held-out groups: {len(set(groups.tolist()))}, captions: {n}; chance R@5 {500 / n:.1f}")
    print(f"{'checkpoint':45s} {'R@5':>5s} {'own group in top 5':>18s} "
          f"{'best other-group image, same background':>39s}")
    for ckpt in args.checkpoint:
        model = load(ckpt, text_cache=Path(args.demo) / "text-cache")
        images = torch.cat([model.encode_image(x) for x, _ in
                            iterate_images([str(data / r["image"]) for r in rows], model.preprocess, 64)])
        mode = args.mode if model.is_flame else "single"
        scores = torch.nn.functional.normalize(model.encode_text([r["caption"] for r in rows], mode=mode), dim=-1) @ images.T
        top5 = scores.topk(5, dim=1).indices
        r5 = float((top5 == torch.arange(n)[:, None]).any(1).float().mean())
        group_found = float((groups[top5] == groups[:, None]).any(1).float().mean())
        best_other = scores.masked_fill(~other, float("-inf")).argmax(1)
        shares = float(same_bg[torch.arange(n), best_other].float().mean())
        print(f"{Path(ckpt).parent.parent.name[:45]:45s} {100 * r5:5.1f} {100 * group_found:18.1f} "
              f"{100 * shares:32.1f} (chance {100 * chance:.1f})", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
