"""Emoji scenes: a few glyphs on a background, with three captions of increasing detail.

Layout: the image is a 3x3 grid and every glyph sits in its own cell (jittered inside it), so the
position words ("top left", "centre", ...) and the relations between objects ("to the left of",
"above") are true of the pixels by construction. Per scene:

* ``raw``: alt-text, the glyph names joined by commas, in shuffled order;
* ``short``: one sentence naming the main objects and the background;
* ``long``: every object with its position, size and its relation to the previous object, the
  background, and the largest and smallest object. Scenes with five or more objects give long
  captions past CLIP's 77-token context, which is what FLAME's LLM text encoder is meant to read.

Everything is drawn from a ``numpy.random.Generator`` given by the caller, so a seed fixes the scene.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field, replace

import numpy as np
from PIL import Image

from .glyphs import Glyph, glyph_at

# (name, RGB). Names are what captions say, so keep them ordinary colour words.
COLOURS = (
    ("white", (248, 248, 248)), ("light grey", (200, 200, 200)), ("dark grey", (80, 80, 80)),
    ("black", (18, 18, 18)), ("red", (210, 40, 40)), ("orange", (245, 145, 40)),
    ("yellow", (245, 220, 60)), ("light green", (160, 225, 140)), ("dark green", (30, 110, 50)),
    ("light blue", (160, 205, 245)), ("dark blue", (25, 50, 140)), ("purple", (120, 60, 160)),
    ("pink", (245, 170, 200)), ("beige", (235, 220, 185)), ("brown", (120, 80, 45)), ("teal", (30, 140, 140)),
)
BACKGROUND_KINDS = ("solid", "vertical", "horizontal")  # vertical: top to bottom

ROWS = ("top", "centre", "bottom")
COLS = ("left", "centre", "right")
SIZE_CLASSES = ("small", "medium", "large")
SIZE_WORDS = {"small": "small", "medium": "medium-sized", "large": "large"}
# Longer side of a glyph as a fraction of the image side. Gaps between the ranges keep the size
# words apart; "large" stays under two thirds so a clamped glyph never leaves its grid column/row.
SIZE_RANGES = {"small": (0.16, 0.24), "medium": (0.27, 0.36), "large": (0.40, 0.56)}
NUMBER_WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")

# A glyph may have at most this share of its box covered by glyphs drawn over it.
MAX_OCCLUSION = 0.3
# CLIP's context is 77 tokens: start, 75 text tokens, end.
CLIP_TEXT_TOKENS = 75


@dataclass(frozen=True)
class Background:
    kind: str  # solid | vertical | horizontal
    colours: tuple[str, ...]  # one colour name, or two for a gradient (first at top / left)

    def short(self) -> str:
        first = f"{article(self.colours[0])} {self.colours[0]}"  # "an orange", "a teal"
        if self.kind == "solid":
            return f"{first} background"
        return f"{first} and {self.colours[1]} gradient background"

    def long(self) -> str:
        if self.kind == "solid":
            return f"a plain {self.colours[0]} background"
        a, b = self.colours
        where = ("at the top", "at the bottom") if self.kind == "vertical" else ("on the left", "on the right")
        return f"a background that fades from {a} {where[0]} to {b} {where[1]}"


@dataclass(frozen=True)
class SceneObject:
    glyph: Glyph
    cell: int  # 0..8, row-major: 0 top left, 4 centre, 8 bottom right
    size: str  # small | medium | large
    px: int  # longer side in pixels
    cx: int  # centre in pixels
    cy: int

    @property
    def row(self) -> int:
        return self.cell // 3

    @property
    def col(self) -> int:
        return self.cell % 3

    @property
    def position(self) -> str:
        r, c = ROWS[self.row], COLS[self.col]
        if r == c:
            return "centre"
        return f"{r} {c}"

    def box(self) -> tuple[int, int, int, int]:
        """(left, top, right, bottom) of the resized glyph, as drawn."""
        w, h = glyph_at(self.glyph.key, self.px).size
        x, y = self.cx - w // 2, self.cy - h // 2
        return x, y, x + w, y + h


@dataclass(frozen=True)
class Scene:
    size: int
    background: Background
    # In the order the long caption mentions them: reading order (by cell) for sampled scenes; a
    # hard negative keeps its moved object last.
    objects: tuple[SceneObject, ...]
    caption_seed: int  # fixes the phrasing, apart from the content
    alt_order: tuple[int, ...] = field(default=())  # order of names in the alt-text

    def names(self) -> list[str]:
        return [o.glyph.name for o in self.objects]

    def to_json(self) -> dict:
        return {
            "size": self.size,
            "background": {"kind": self.background.kind, "colours": list(self.background.colours)},
            "objects": [{"emoji": o.glyph.char, "name": o.glyph.name, "position": o.position, "size": o.size,
                         "box": list(o.box())} for o in self.objects],
        }


# ------------------------------------------------------------------ sampling

def sample_background(rng: np.random.Generator) -> Background:
    kind = BACKGROUND_KINDS[rng.choice(3, p=[0.5, 0.25, 0.25])]
    if kind == "solid":
        return Background(kind, (COLOURS[rng.integers(len(COLOURS))][0],))
    i, j = rng.choice(len(COLOURS), size=2, replace=False)
    return Background(kind, (COLOURS[i][0], COLOURS[j][0]))


def _size_weights(n: int) -> list[float]:
    # Crowded scenes get fewer large glyphs, so that glyphs rarely hide each other.
    if n <= 2:
        return [0.2, 0.4, 0.4]
    if n <= 5:
        return [0.35, 0.45, 0.2]
    return [0.5, 0.4, 0.1]


def _place(rng: np.random.Generator, glyph: Glyph, cell: int, size_class: str, S: int,
           px: int | None = None) -> SceneObject:
    """The glyph in ``cell`` at a random size of its class (or ``px``) and a jittered centre."""
    if px is None:
        lo, hi = SIZE_RANGES[size_class]
        px = max(6, int(round(rng.uniform(lo, hi) * S)))
    # The centre stays in the middle 60% of its cell. It is clamped by the square of side px, not
    # the glyph's own box, so that any other glyph at this size fits there too (hard negatives).
    cx = (cell % 3 + 0.5 + rng.uniform(-0.3, 0.3)) * S / 3
    cy = (cell // 3 + 0.5 + rng.uniform(-0.3, 0.3)) * S / 3
    lo, hi = px // 2, S - (px - px // 2)  # in whole pixels, as SceneObject.box() places the glyph
    cx = min(max(int(round(cx)), lo), hi)
    cy = min(max(int(round(cy)), lo), hi)
    return SceneObject(glyph, cell, size_class, px, cx, cy)


def draw_order(objects) -> list[SceneObject]:
    """Largest first, so that small glyphs are drawn over large ones and stay visible."""
    return sorted(objects, key=lambda o: (-o.px, o.cell))


def max_occlusion(objects, S: int) -> float:
    """The largest share of any glyph's box that glyphs drawn after it cover."""
    order = draw_order(objects)
    cover = np.zeros((S, S), bool)
    worst = 0.0
    for o in reversed(order):  # topmost first: what is above each glyph is already in ``cover``
        x0, y0, x1, y1 = (min(max(v, 0), S) for v in o.box())
        area = max(1, (x1 - x0) * (y1 - y0))
        worst = max(worst, cover[y0:y1, x0:x1].sum() / area)
        cover[y0:y1, x0:x1] = True
    return worst


def sample_scene(rng: np.random.Generator, vocab: list[Glyph], size: int = 64, n: int | None = None,
                 glyphs: list[Glyph] | None = None) -> Scene:
    """A scene of ``n`` (default: 1-9) distinct glyphs from ``vocab`` (or exactly ``glyphs``)."""
    if glyphs is None:
        n = int(rng.integers(1, 10)) if n is None else n
        glyphs = [vocab[i] for i in rng.choice(len(vocab), size=n, replace=False)]
    n = len(glyphs)
    if not 1 <= n <= 9:
        raise ValueError(f"a scene holds 1 to 9 glyphs, not {n}")
    background = sample_background(rng)
    cells = sorted(int(c) for c in rng.choice(9, size=n, replace=False))
    order = rng.permutation(n)  # which glyph goes to which cell
    for attempt in range(30):
        sizes = [SIZE_CLASSES[k] for k in rng.choice(3, size=n, p=_size_weights(n))]
        if attempt >= 20:  # give up on large glyphs before giving up on the layout
            sizes = ["small"] * n
        objects = [_place(rng, glyphs[order[k]], cells[k], sizes[k], size) for k in range(n)]
        if max_occlusion(objects, size) <= MAX_OCCLUSION:
            break
    else:
        # Small glyphs centred in their cells cannot overlap (0.24 S < S / 3).
        objects = [SceneObject(glyphs[order[k]], c, "small", int(round(0.2 * size)),
                               int(round((c % 3 + 0.5) * size / 3)), int(round((c // 3 + 0.5) * size / 3)))
                   for k, c in enumerate(cells)]
    return Scene(size, background, tuple(objects), int(rng.integers(2**31)), tuple(int(i) for i in rng.permutation(n)))


def jitter_view(scene: Scene, rng: np.random.Generator, attempts: int = 20) -> Scene:
    """The same scene with every glyph moved to a fresh spot in its own cell, at the same size.

    Everything the captions say stays true: cells (so positions and relations), size classes and
    pixel sizes (so the largest and smallest), background, names. Only the pixels change, which
    is what a model that memorises an image by its exact pixels cannot follow. Returns the scene
    unchanged if no placement keeps glyphs as visible as sampling does.
    """
    for _ in range(attempts):
        objects = tuple(_place(rng, o.glyph, o.cell, o.size, scene.size, px=o.px) for o in scene.objects)
        if max_occlusion(objects, scene.size) <= MAX_OCCLUSION:
            return replace(scene, objects=objects)
    return scene


# ------------------------------------------------------------------ drawing

def _background_pixels(bg: Background, S: int) -> np.ndarray:
    rgb = dict(COLOURS)
    a = np.array(rgb[bg.colours[0]], np.float32)
    if bg.kind == "solid":
        return np.broadcast_to(a, (S, S, 3)).astype(np.uint8)
    b = np.array(rgb[bg.colours[1]], np.float32)
    t = np.linspace(0.0, 1.0, S, dtype=np.float32)
    t = t[:, None, None] if bg.kind == "vertical" else t[None, :, None]
    return np.broadcast_to(np.rint(a + (b - a) * t), (S, S, 3)).astype(np.uint8)


def render_scene(scene: Scene) -> Image.Image:
    """The scene as an RGB image of ``scene.size`` pixels square."""
    S = scene.size
    canvas = Image.fromarray(_background_pixels(scene.background, S), "RGB").convert("RGBA")
    for o in draw_order(scene.objects):
        x0, y0, _, _ = o.box()
        canvas.alpha_composite(glyph_at(o.glyph.key, o.px), (x0, y0))
    return canvas.convert("RGB")


def random_scene(rng: np.random.Generator, vocab: list[Glyph], size: int, max_glyphs: int = 9):
    """A scene of 1 to ``max_glyphs`` glyphs and its image."""
    scene = sample_scene(rng, vocab, size, n=int(rng.integers(1, max_glyphs + 1)))
    return scene, render_scene(scene)


# ------------------------------------------------------------------ captions

def article(phrase: str) -> str:
    """'a' or 'an' for a phrase (letter names for acronyms: 'an OK hand', 'an x-ray')."""
    word = phrase.split()[0]
    if word.isupper() and len(word) > 1:
        return "an" if word[0] in "AEFHILMNORSX" else "a"
    return "an" if word[0].lower() in "aeiou" else "a"


def _cap(s: str) -> str:
    return s[:1].upper() + s[1:]


def relation(a: SceneObject, b: SceneObject) -> str:
    """Where ``a`` is relative to ``b``: 'to the left of', 'above', 'below and to the right of', ..."""
    vertical = "above" if a.row < b.row else "below" if a.row > b.row else ""
    horizontal = "to the left of" if a.col < b.col else "to the right of" if a.col > b.col else ""
    if vertical and horizontal:
        return f"{vertical} and {horizontal}"
    return vertical or horizontal


def raw_caption(scene: Scene) -> str:
    names = scene.names()
    order = scene.alt_order or tuple(range(len(names)))
    return ", ".join(names[i] for i in order)


def _listing(phrases: list[str]) -> str:
    return phrases[0] if len(phrases) == 1 else ", ".join(phrases[:-1]) + " and " + phrases[-1]


def short_caption(scene: Scene) -> str:
    """One sentence: up to four objects (the three largest when there are more) and the background."""
    objs = list(scene.objects)
    if len(objs) > 4:
        largest = set(id(o) for o in draw_order(objs)[:3])
        named = [o for o in objs if id(o) in largest]
        rest = len(objs) - 3
        tail = [f"{NUMBER_WORDS[rest]} other objects"]
    else:
        named, tail = objs, []
    phrases = [f"{article(o.glyph.name)} {o.glyph.name}" for o in named] + tail
    return _cap(f"{_listing(phrases)} on {scene.background.short()}.")


def long_caption(scene: Scene) -> str:
    """A paragraph: background, every object (in ``scene.objects`` order) with position, size and relation.

    The phrasing (one of three templates per sentence) is drawn from ``scene.caption_seed`` only,
    so two scenes with the same seed that differ in their last object share every earlier word:
    that is what makes the hard negatives of the long-caption retrieval set.
    """
    rng = np.random.default_rng(scene.caption_seed)
    template = rng.integers(3, size=16)  # one draw per sentence, whatever the content
    objs = scene.objects
    n = len(objs)
    noun = "object" if n == 1 else "objects"
    out = [f"The image shows {NUMBER_WORDS[n]} {noun} on {scene.background.long()}."]
    for i, o in enumerate(objs):
        thing = f"{article(SIZE_WORDS[o.size])} {SIZE_WORDS[o.size]} {o.glyph.name}"
        t = template[i + 1]
        if i == 0:
            out.append([f"In the {o.position} there is {thing}.", f"{_cap(thing)} is in the {o.position}.",
                        f"The {o.position} holds {thing}."][t])
            continue
        prev = objs[i - 1].glyph.name
        out.append([
            f"{_cap(relation(o, objs[i - 1]))} the {prev}, in the {o.position}, there is {thing}.",
            f"In the {o.position} there is {thing}; the {prev} is {relation(objs[i - 1], o)} it.",
            f"{_cap(thing)} sits in the {o.position}, {relation(o, objs[i - 1])} the {prev}.",
        ][t])
    if n >= 2:
        largest, smallest = draw_order(objs)[0], draw_order(objs)[-1]
        out.append(f"The largest object is the {largest.glyph.name} and the smallest is the {smallest.glyph.name}.")
    return " ".join(out)


def captions(scene: Scene) -> dict[str, str]:
    return {"raw": raw_caption(scene), "short": short_caption(scene), "long": long_caption(scene)}


# CLIP's pre-tokenizer (open_clip's SimpleTokenizer pattern, for ASCII text): every piece becomes
# at least one BPE token, so counting pieces gives a lower bound on CLIP's token count.
_CLIP_PIECES = re.compile(r"'s|'t|'re|'ve|'m|'ll|'d|[^\W\d_]+|\d|(?:[^\s\w]|_)+")


def clip_pieces(text: str) -> list[str]:
    return _CLIP_PIECES.findall(" ".join(text.lower().split()))


# ------------------------------------------------------------------ hard negatives

def common_prefix(texts: list[str]) -> str:
    first = texts[0]
    k = 0
    while k < len(first) and all(len(t) > k and t[k] == first[k] for t in texts):
        k += 1
    return first[:k]


def sample_hard_negative_group(rng: np.random.Generator, vocab: list[Glyph], size: int = 64,
                               group_size: int = 4, max_tries: int = 100) -> list[tuple[Scene, str]]:
    """Scenes that differ only in their LAST object (the last one the long caption names): its glyph or its cell.

    Returns (scene, what changed: "original" | "object" | "position"). The last object is named
    last in the long caption, and groups are kept only when the captions' common prefix is
    longer than CLIP's 75 text tokens, so a CLIP text encoder truncated at 77 tokens sees the
    same text for every scene of the group while the images differ.
    """
    for _ in range(max_tries):
        scene = sample_scene(rng, vocab, size, n=int(rng.integers(6, 10)))
        objs = list(scene.objects)
        last = objs[-1]
        used_glyphs = {o.glyph.key for o in objs}
        used_cells = {o.cell for o in objs}
        group = [(scene, "original")]
        for _k in range(group_size - 1):
            # Any empty cell: the moved object stays last in the caption even if it is no longer
            # last in reading order, and its relation to the previous object is recomputed.
            free = [c for c in range(9) if c not in used_cells]
            kind = "position" if free and rng.random() < 0.5 else "object"
            new = None
            if kind == "position":
                cell = int(free[rng.integers(len(free))])
                new = _place(rng, last.glyph, cell, last.size, size, px=last.px)  # same glyph and size
                if max_occlusion(objs[:-1] + [new], size) > MAX_OCCLUSION:
                    kind, new = "object", None
            if kind == "object":
                options = [g for g in vocab if g.key not in used_glyphs]
                g = options[int(rng.integers(len(options)))]
                new = replace(last, glyph=g)
                if max_occlusion(objs[:-1] + [new], size) > MAX_OCCLUSION:
                    continue  # an odd aspect ratio; this group will be smaller and is redrawn below
            used_glyphs.add(new.glyph.key)
            used_cells.add(new.cell)
            group.append((replace(scene, objects=tuple(objs[:-1] + [new])), kind))
        if len(group) < group_size:
            continue
        prefix = common_prefix([long_caption(s) for s, _ in group])
        # The piece where the texts part may be cut short, so it does not count.
        if len(clip_pieces(prefix)) - 1 >= CLIP_TEXT_TOKENS:
            return group
    raise RuntimeError("could not draw a hard-negative group; is the vocabulary too small?")

