"""Glyph names on the validation side: name -> image, image -> name, and names in 13 other languages.

The demo's glyph-name targets (English name -> image, zero-shot names, the other languages) are
measured on the evaluation sets, which must never choose a setting. This is their validation twin:
the 50 demo glyphs that no evaluation set uses (vocabulary entries 50-99; the evaluation sets use
0-49), each drawn alone on fresh backgrounds from a seed no demo split uses, queried by its name
with the single prompt, as the evaluation does. Every glyph is seen in training scenes, like the
evaluation glyphs. Per checkpoint:

* English name -> image: text->image R@1 among the 50 glyphs' images, once per drawing, averaged;
* image -> English name: the zero-shot accuracy (acc@1 among the 50 names, one plain prompt);
* other languages: each non-English name that differs from the English one retrieves among the 50
  images (mean R@1 over the languages).

    python benchmarks/val_glyph_probe.py --checkpoint runs/demo/train-flame/checkpoints/final \
        runs/demo/train-clip/checkpoints/final --text-cache runs/demo/text-cache
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch

SPLIT_PROBE = 99  # not one of the demo's splits (data/demo/build.py uses 0-5)


def glyph_images(glyphs, drawings: int, size: int = 64):
    """[drawings][glyph] PIL images: each glyph alone at a random cell, size and background."""
    from flameclip.data.demo.scenes import render_scene, sample_scene

    out = []
    for d in range(drawings):
        row = []
        for i, g in enumerate(glyphs):
            rng = np.random.default_rng([SPLIT_PROBE, d, i])
            row.append(render_scene(sample_scene(rng, [g], size, glyphs=[g])))
        out.append(row)
    return out


def probe(m, glyphs, images) -> dict:
    from flameclip.data.demo.glyphs import LANGUAGES

    english = m.encode_text([g.names["en"] for g in glyphs], mode="single")
    names_r1, zero_shot, per_lang = [], [], {}
    feats = [m.encode_image(row) for row in images]
    target = torch.arange(len(glyphs))
    for f in feats:
        names_r1.append(float(((english @ f.T).argmax(1) == target).float().mean()))
        zero_shot.append(float(((f @ english.T).argmax(1) == target).float().mean()))
    for lang in LANGUAGES[1:]:
        rows = [(i, g.names[lang]) for i, g in enumerate(glyphs)
                if g.names.get(lang) and g.names[lang].casefold() != g.names["en"].casefold()]
        if not rows:
            continue
        q = m.encode_text([t for _, t in rows], mode="single")
        want = torch.tensor([i for i, _ in rows])
        per_lang[lang] = float(np.mean([float(((q @ f.T).argmax(1) == want).float().mean()) for f in feats]))
    return {"name_r1": 100 * float(np.mean(names_r1)), "zero_shot": 100 * float(np.mean(zero_shot)),
            "languages": 100 * float(np.mean(list(per_lang.values()))),
            "per_language": {k: 100 * v for k, v in per_lang.items()}}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--checkpoint", nargs="+", required=True)
    ap.add_argument("--text-cache", default=None, help="reuse the LLM states of earlier queries")
    ap.add_argument("--drawings", type=int, default=4, help="images per glyph (each a separate retrieval)")
    args = ap.parse_args(argv)

    from flameclip.data.demo.glyphs import vocabulary
    from flameclip.inference import load

    glyphs = vocabulary(100)[50:]
    images = glyph_images(glyphs, args.drawings)
    chance = 100.0 / len(glyphs)
    print(f"{'checkpoint':60s}  name->image R@1  zero-shot acc@1  other languages R@1   (chance {chance:.1f}; "
          f"{len(glyphs)} glyphs x {args.drawings} drawings)")
    for ckpt in args.checkpoint:
        m = load(ckpt, device="cpu", text_cache=args.text_cache, progress=False)
        r = probe(m, glyphs, images)
        print(f"{str(Path(ckpt)):60s}  {r['name_r1']:15.1f}  {r['zero_shot']:15.1f}  {r['languages']:19.1f}", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
