"""Glyph cards: each vocabulary glyph alone, in fresh drawings, captioned by its name only.

The captions name the glyph and nothing else, so every drawing (another cell, size and background)
keeps them true, and training draws one drawing per epoch. 100 glyphs give 100 texts per prompt,
which the embedding step encodes once each, and an endless stream of images of them: a target the
image tower can only hit by knowing the glyph, not by remembering one picture.
"""

from __future__ import annotations

from .glyphs import Glyph
from .scenes import Background, _cap, article


def card_captions(glyph: Glyph) -> dict[str, str]:
    """A card's captions: its name, true of every drawing whatever its place, size and background."""
    name = glyph.name
    return {"raw": name, "short": f"{article(name).capitalize()} {name}.",
            "long": f"The image shows one object: {article(name)} {name}."}


def glyph_cards(vocab: list[Glyph], per_glyph: int, views: int, draw, caps: list, scenes: list) -> list[dict]:
    """``per_glyph`` manifest records per glyph, each in 1 + ``views`` drawings.

    ``draw(glyph index, glyph, sid, record, view)`` saves one drawing and returns (its scene, its path); captions
    and the first drawing's scene are appended to ``caps`` and ``scenes``.
    """
    out = []
    for j, glyph in enumerate(vocab):
        for r in range(per_glyph):
            sid = f"card-{j:05d}-{r}"
            files = []
            for v in range(1 + views):
                scene, path = draw(j, glyph, sid, r, v)
                files.append(path)
                if v == 0:
                    scenes.append({"id": sid, **scene.to_json()})
            out.append({"id": sid, "image": files[0], **({"views": files[1:]} if files[1:] else {})})
            caps.append({"id": sid, **card_captions(glyph)})
    return out


def background_captions(background: Background) -> dict[str, str]:
    """A background card's captions: what the image holds, a background and no object."""
    return {"raw": background.short().removeprefix("a ").removeprefix("an "),
            "short": f"{_cap(background.short())}.",
            "long": f"The image shows no objects on {background.long()}."}


def background_cards(count: int, draw, caps: list, scenes: list) -> list[dict]:
    """``count`` manifest records of a background alone (no glyph), each its own background.

    The training scenes' captions name their background in a short phrase beside several glyph
    names, where a frozen LLM's state of the caption holds the colours faintly. A card whose
    captions say only the background gives the image tower a target that is the colours alone.
    ``draw(index, sid)`` saves the drawing and returns (its scene, its path).
    """
    out = []
    for i in range(count):
        sid = f"background-{i:05d}"
        scene, path = draw(i, sid)
        scenes.append({"id": sid, **scene.to_json()})
        out.append({"id": sid, "image": path})
        caps.append({"id": sid, **background_captions(scene.background)})
    return out


def interleave(a: list, b: list) -> list:
    """``a`` and ``b`` merged in proportion (each keeps its order), so any prefix holds a fair share of both."""
    keyed = [((i + 0.5) / len(a), 0, i) for i in range(len(a))] + [((i + 0.5) / len(b), 1, i) for i in range(len(b))]
    return [(a, b)[side][i] for _, side, i in sorted(keyed)]
