"""A second caption writer, for held-out queries phrased as no training caption is.

The training captions (``scenes.long_caption``) come from a few fixed templates. A text tower trained
on them can learn the templates rather than the language, and the demo's other held-out sets reuse
those templates, so they cannot tell the two apart. Real users write their own queries. This writer
describes the same scene facts in other words and another structure:

* positions: "upper-left corner", "middle of the right edge", "dead centre", ... (never "top left");
* sizes: "tiny", "mid-sized", "big" (never "small", "medium-sized", "large");
* backgrounds: other colour words ("scarlet", "ivory", "charcoal", ...) and "backdrop";
* relations: "further left than", "higher up than", ...;
* structure: the background comes last, the count is spelled as a digit, each object is a clause
  that opens with its position or with its neighbour.

Only glyph names, the one thing a picture's caption cannot avoid saying, are shared with training.
Like ``long_caption``, the object clauses keep the scene's object order and the phrasing depends on
``scene.caption_seed`` only, so scenes that differ in their last object share every earlier word
(hard negatives).
"""

from __future__ import annotations

import numpy as np

from .scenes import Scene, SceneObject, article

# Nine cells, row-major, in words no training caption uses.
CELL_WORDS = (
    "upper-left corner", "middle of the top edge", "upper-right corner",
    "middle of the left edge", "dead centre", "middle of the right edge",
    "lower-left corner", "middle of the bottom edge", "lower-right corner",
)
SIZE_WORDS = {"small": ("tiny", "little"), "medium": ("mid-sized", "moderately big"), "large": ("big", "huge")}
COLOUR_WORDS = {
    "white": "ivory", "light grey": "pale silver", "dark grey": "charcoal", "black": "jet", "red": "scarlet",
    "orange": "tangerine", "yellow": "lemon", "light green": "mint", "dark green": "forest", "light blue": "sky",
    "dark blue": "navy", "purple": "violet", "pink": "rose", "beige": "sand", "brown": "chocolate",
    "teal": "turquoise",
}
COUNT_WORDS = ("no", "a single", "a pair of", "3", "4", "5", "6", "7", "8", "9")


def _relation(a: SceneObject, b: SceneObject) -> str:
    """Where ``a`` is relative to ``b``, in words the training captions do not use."""
    parts = []
    if a.row != b.row:
        parts.append("higher up than" if a.row < b.row else "lower down than")
    if a.col != b.col:
        parts.append("further left than" if a.col < b.col else "further right than")
    return " and ".join(parts)


def _backdrop(scene: Scene) -> str:
    bg = scene.background
    words = [COLOUR_WORDS[c] for c in bg.colours]
    if bg.kind == "solid":
        return f"All of this sits on a flat {words[0]} backdrop."
    axis = "from the upper edge down to the lower edge" if bg.kind == "vertical" else "from the left edge across to the right edge"
    return f"Behind everything, the backdrop shades {axis}, {words[0]} turning into {words[1]}."


def novel_long_caption(scene: Scene) -> str:
    """The scene in other words and another order than ``scenes.long_caption``."""
    rng = np.random.default_rng([scene.caption_seed, 7])
    pick = rng.integers(2, size=20)  # one draw per choice, whatever the content: pick[i] size word, pick[i + 10] clause
    objs = scene.objects
    n = len(objs)
    noun = "picture" if n == 1 else "pictures"
    out = [f"Here we see {COUNT_WORDS[n]} {noun}."]
    for i, o in enumerate(objs):
        size = SIZE_WORDS[o.size][int(pick[i])]
        thing = f"{article(size)} {size} {o.glyph.name}"
        where = CELL_WORDS[o.cell]
        if i == 0 or not _relation(o, objs[i - 1]):
            out.append(f"Over in the {where} you can spot {thing}." if pick[i + 10] else
                       f"Look at the {where}: {thing} is placed there.")
            continue
        rel = _relation(o, objs[i - 1])
        prev = objs[i - 1].glyph.name
        out.append(f"Then, {rel} that {prev}, {thing} occupies the {where}." if pick[i + 10] else
                   f"Occupying the {where}, {rel} the {prev}, is {thing}.")
    out.append(_backdrop(scene))
    return " ".join(out)
