"""How far does a FLAME query move when one glyph of a long caption changes: the first named, or the last?

On the demo's validation scenes with at least 5 objects, each long caption is encoded as it is, with
its first-named glyph replaced by another vocabulary glyph, and with its last-named glyph replaced
(every mention). Printed: the mean cosine of the original query to each edit, and to other scenes'
queries, per prompt set. The long-caption hard negatives differ only in the last-named object, so
this says how much of the query that difference can move.

    python benchmarks/val_caption_sensitivity.py --demo runs/demo --checkpoint runs/demo/train-flame/checkpoints/step-0001500
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--demo", default="runs/demo")
    ap.add_argument("--checkpoint", required=True)
    ap.add_argument("--min-objects", type=int, default=5)
    ap.add_argument("--modes", nargs="+", default=["long3", "short3", "single"])
    args = ap.parse_args(argv)

    from flameclip.inference import load

    data = Path(args.demo) / "data" / "train"
    read = lambda name: [json.loads(line) for line in (data / name).read_text(encoding="utf-8").splitlines()]  # noqa: E731
    captions = {r["id"]: r["long"] for r in read("captions.jsonl")}
    scenes = {r["id"]: r for r in read("scenes.jsonl")}
    names = sorted({o["name"] for s in scenes.values() for o in s["objects"]})
    rng = np.random.default_rng(0)
    original, first, last = [], [], []
    for sid in (r["id"] for r in read("val.jsonl")):
        objs = scenes[sid]["objects"]
        if len(objs) < args.min_objects:
            continue
        used = {o["name"] for o in objs}
        others = [n for n in names if n not in used]

        def swapped(name: str) -> str:
            return captions[sid].replace(name, others[int(rng.integers(len(others)))])

        original.append(captions[sid])
        first.append(swapped(objs[0]["name"]))
        last.append(swapped(objs[-1]["name"]))
    model = load(args.checkpoint, text_cache=Path(args.demo) / "text-cache")
    print(f"validation scenes with >= {args.min_objects} objects: {len(original)}")
    print(f"{'queries':8s} {'first glyph changed':>20s} {'last glyph changed':>19s} {'other scenes':>13s}   (mean cosine)")
    for mode in args.modes:
        a, b, c = (torch.nn.functional.normalize(model.encode_text(t, mode=mode), dim=-1) for t in (original, first, last))
        between = (a @ a.T).fill_diagonal_(float("nan")).nanmean()
        print(f"{mode:8s} {float((a * b).sum(-1).mean()):20.3f} {float((a * c).sum(-1).mean()):19.3f} "
              f"{float(between):13.3f}", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
