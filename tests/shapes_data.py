"""A small image-text set for training tests: coloured shapes drawn with Pillow, described in words."""

from __future__ import annotations

import json
import random
from pathlib import Path

from PIL import Image, ImageDraw

COLOURS = {"red": (220, 40, 40), "green": (40, 170, 60), "blue": (40, 70, 220), "yellow": (240, 210, 40),
           "purple": (140, 60, 170), "orange": (245, 140, 30)}
SHAPES = ("circle", "square", "triangle")


def draw(shape: str, colour: str, bg: str, size: int, rng: random.Random) -> Image.Image:
    im = Image.new("RGB", (size, size), COLOURS[bg])
    d = ImageDraw.Draw(im)
    r = rng.randint(size // 5, size // 3)
    cx, cy = rng.randint(r, size - r), rng.randint(r, size - r)
    box = (cx - r, cy - r, cx + r, cy + r)
    if shape == "circle":
        d.ellipse(box, fill=COLOURS[colour])
    elif shape == "square":
        d.rectangle(box, fill=COLOURS[colour])
    else:
        d.polygon([(cx, cy - r), (cx - r, cy + r), (cx + r, cy + r)], fill=COLOURS[colour])
    return im


def make_shapes(folder: Path, n: int = 48, size: int = 64, seed: int = 0, corrupt: int = 0) -> dict:
    """Write images, manifest.jsonl (id, image) and captions.jsonl (id, raw, short)."""
    rng = random.Random(seed)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "images").mkdir(exist_ok=True)
    manifest, captions = [], []
    for i in range(n):
        shape, colour = rng.choice(SHAPES), rng.choice(list(COLOURS))
        bg = rng.choice([c for c in COLOURS if c != colour])
        sid = f"img{i:03d}"
        path = folder / "images" / f"{sid}.png"
        if i < corrupt:
            path.write_bytes(b"this is not a png")
        else:
            draw(shape, colour, bg, size, rng).save(path)
        manifest.append({"id": sid, "image": f"images/{sid}.png"})
        captions.append({"id": sid, "raw": f"{colour} {shape}",
                         "short": f"A {colour} {shape} on a {bg} background."})
    for name, rows in (("manifest.jsonl", manifest), ("captions.jsonl", captions)):
        (folder / name).write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return {"manifest": folder / "manifest.jsonl", "captions": folder / "captions.jsonl", "n": n}
