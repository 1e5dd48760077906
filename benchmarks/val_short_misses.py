"""What do FLAME and CLIP read from a short caption? Held-out short-caption misses and the background.

On the demo's validation scenes (held out of training, never an evaluation set), each checkpoint
retrieves the image of every short caption ("A victory hand, a dim button and a necktie on a teal
background."). Printed per checkpoint:

* text->image R@1, and of the misses: how many took an image with the same background colours, and
  how many one that holds at least one of the glyphs the caption names;
* how far the query moves (mean cosine to the original) when only the background colours are
  changed, and when only the first-named glyph is changed (every mention; another vocabulary
  colour or glyph, seeded).

* the share of the held-out queries' variance that the first background colour explains, with the
  share of 16 labels shuffled among the same queries beside it (``val_prompt_probe.py`` prints the
  same for the frozen LLM's states before any training).

A text side that barely moves with the colour words cannot use the background to tell two scenes
apart, however well the image tower sees it.

    python benchmarks/val_short_misses.py --demo runs/demo \\
        --checkpoint runs/demo/train-flame/checkpoints/step-0001500 runs/demo/train-clip/checkpoints/step-0001500
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch


def edited_captions(captions: dict, scenes: dict, ids: list[str], colours: list[str], seed: int = 0):
    """(original, colours changed, first glyph changed) short captions of ``ids`` whose colours can be edited."""
    from flameclip.data.demo.scenes import Background

    names = sorted({o["name"] for s in scenes.values() for o in s["objects"]})
    rng = np.random.default_rng(seed)
    out = []
    for sid in ids:
        text, bg = captions[sid], scenes[sid]["background"]
        background = bg["colours"]
        named = [o["name"] for o in scenes[sid]["objects"] if o["name"] in text]
        # Only the background phrase at the end ("... on a teal background."), written again by the
        # caption generator with other colours: a glyph's name may hold a colour word too ("a black
        # medium-small square"), and the article follows the colour ("an orange").
        tail = f" on {Background(bg['kind'], tuple(background)).short()}."
        if not text.endswith(tail) or not named:
            continue
        others = [c for c in colours if c not in background]
        new = tuple(str(c) for c in rng.choice(others, size=len(background), replace=False))
        recoloured = text[: -len(tail)] + f" on {Background(bg['kind'], new).short()}."
        others = [n for n in names if n not in named]
        out.append((text, recoloured, text.replace(named[0], others[int(rng.integers(len(others)))])))
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--demo", default="runs/demo")
    ap.add_argument("--checkpoint", nargs="+", required=True)
    ap.add_argument("--short-mode", help="FLAME's prompt set (a name or JSON file) for the short captions; by "
                                         "default the short set each checkpoint was trained on (short3 in the demo)")
    args = ap.parse_args(argv)

    from flameclip.data.centering import facet_sets
    from flameclip.data.demo.scenes import COLOURS
    from flameclip.evaluate.datasets import iterate_images
    from flameclip.inference import load
    from flameclip.text.prompts import BUILTIN
    from val_prompt_probe import colour_share

    data = Path(args.demo) / "data" / "train"
    read = lambda name: [json.loads(line) for line in (data / name).read_text(encoding="utf-8").splitlines()]  # noqa: E731
    captions = {r["id"]: r["short"] for r in read("captions.jsonl")}
    scenes = {r["id"]: r for r in read("scenes.jsonl")}
    val = read("val.jsonl")
    ids = [r["id"] for r in val]
    n = len(ids)
    background = [tuple(sorted(scenes[i]["background"]["colours"])) for i in ids]
    glyphs = [{o["name"] for o in scenes[i]["objects"]} for i in ids]
    named = [{g for g in glyphs[k] if g in captions[i]} for k, i in enumerate(ids)]
    edits = edited_captions(captions, scenes, ids, [c[0] for c in COLOURS])
    if not edits:
        raise SystemExit("no held-out short caption names its background colours: nothing to edit")
    print(f"held-out scenes: {n} (chance R@1 {100 / n:.1f}); captions with editable colours: {len(edits)}")
    print(f"{'checkpoint':45s} {'R@1':>5s} {'misses':>6s} {'same bg':>7s} {'shares a glyph':>14s} "
          f"{'colours changed':>15s} {'first glyph changed':>19s} {'colour share (shuffled)':>24s}")
    for ckpt in args.checkpoint:
        model = load(ckpt, text_cache=Path(args.demo) / "text-cache")
        # FLAME queries short captions with the set its short rows were stored with (short3 in the demo).
        trained = [s for s in facet_sets(model.cfg.text_facets) if s.startswith("short")]
        mode = (args.short_mode or (trained[0] if trained else "short3")) if model.is_flame else "single"
        if mode not in BUILTIN and not Path(mode).exists():
            raise SystemExit(f"{ckpt}: its short rows were stored with {mode!r}, not a built-in set; "
                             "pass its JSON file with --short-mode")
        images = torch.cat([model.encode_image(x) for x, _ in
                            iterate_images([str(data / r["image"]) for r in val], model.preprocess, 64)])
        query = lambda texts: torch.nn.functional.normalize(model.encode_text(list(texts), mode=mode), dim=-1)  # noqa: E731
        queries = query(captions[i] for i in ids)
        top = (queries @ images.T).argmax(1).tolist()
        misses = [(k, j) for k, j in enumerate(top) if j != k]
        same_bg = sum(background[k] == background[j] for k, j in misses)
        shares = sum(bool(named[k] & glyphs[j]) for k, j in misses)
        a, b, c = (query(t) for t in zip(*edits))
        share, chance = colour_share(queries.numpy().astype(np.float64), [scenes[i]["background"]["colours"][0] for i in ids])
        print(f"{Path(ckpt).parent.parent.name[:45]:45s} {100 * (n - len(misses)) / n:5.1f} {len(misses):6d} "
              f"{same_bg:7d} {shares:14d} {float((a * b).sum(-1).mean()):15.3f} {float((a * c).sum(-1).mean()):19.3f} "
              f"{share:15.1f} ({chance:4.1f})", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
