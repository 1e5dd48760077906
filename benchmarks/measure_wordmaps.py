"""How well do word maps name what is in a region? Measured on demo scenes, whose layout is known.

For each scene (``train/scenes.jsonl`` from the demo data: every glyph's name and box) the FLAME
checkpoint's 2x2-patch word map is read out through the LLM head. A region "names its content"
when one of its top-k words is a word of the name of a glyph covering the region's centre. The
same test against the name of a glyph from another scene gives the chance level, in the same run.
It also reports how much the top word changes with content (distinct words, share of the most
common one).

    python benchmarks/measure_wordmaps.py --checkpoint runs/demo/train-flame/checkpoints/step-... \\
        --scenes runs/demo/data/train/scenes.jsonl [--n 100] [--top-k 5]
"""

from __future__ import annotations

import argparse
import collections
import json
import random
import re
from pathlib import Path

from PIL import Image

from flameclip.explain import readout_for, word_maps
from flameclip.inference import load

STOP = {"a", "an", "the", "of", "with", "and", "in", "on", "button", "face"}


def name_words(name: str) -> set[str]:
    return {w for w in re.findall(r"[a-z]+", name.lower()) if w not in STOP and len(w) > 2}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--checkpoint", required=True)
    ap.add_argument("--scenes", required=True)
    ap.add_argument("--n", type=int, default=100)
    ap.add_argument("--top-k", type=int, default=5)
    ap.add_argument("--json")
    args = ap.parse_args()

    flame = load(args.checkpoint, device="cpu")
    readout = readout_for(flame)
    scenes = [json.loads(line) for line in open(args.scenes, encoding="utf-8")][: args.n]
    root = Path(args.scenes).parent
    rng = random.Random(0)
    hits = chance = covered = 0
    top1 = collections.Counter()
    for sc in scenes:
        image = Image.open(root / "images" / f"{sc['id']}.png").convert("RGB")
        (wm,) = word_maps(flame, image, windows=(2,), top_k=args.top_k, readout=readout)
        cell = sc["size"] / wm.grid
        other = rng.choice([s for s in scenes if s["id"] != sc["id"]])
        for r in range(wm.grid):
            for c in range(wm.grid):
                words = {w.lower().strip() for w, _ in wm.words[r][c]}
                top1[wm.words[r][c][0][0].lower()] += 1
                cx, cy = (c + 0.5) * cell, (r + 0.5) * cell
                inside = [o for o in sc["objects"] if o["box"][0] <= cx <= o["box"][2] and o["box"][1] <= cy <= o["box"][3]]
                if not inside:
                    continue
                covered += 1
                truth = set().union(*(name_words(o["name"]) for o in inside))
                decoy = name_words(rng.choice(other["objects"])["name"])
                hits += bool(words & truth)
                chance += bool(words & decoy)
    regions = sum(top1.values())
    res = {
        "scenes": len(scenes),
        "regions": regions,
        "regions_on_a_glyph": covered,
        "names_content_top_k": hits / max(covered, 1),
        "chance_top_k": chance / max(covered, 1),
        "distinct_top1_words": len(top1),
        "most_common_top1": top1.most_common(5),
        "most_common_share": top1.most_common(1)[0][1] / max(regions, 1),
    }
    print(f"{len(scenes)} scenes, {regions} regions (2x2 patches), {covered} centred on a glyph")
    print(f"a top-{args.top_k} word names the glyph there: {100 * res['names_content_top_k']:.1f}% "
          f"(chance, a glyph of another scene: {100 * res['chance_top_k']:.1f}%)")
    print(f"top-1 words: {len(top1)} distinct; most common: "
          + ", ".join(f"{w} {100 * n / regions:.0f}%" for w, n in top1.most_common(5)))
    if args.json:
        Path(args.json).write_text(json.dumps(res, indent=2))


if __name__ == "__main__":
    main()
