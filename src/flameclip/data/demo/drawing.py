"""Drawing the demo's images so that no picture repeats another: within a split, across splits, and
between training and evaluation sets.

Every image comes from its own seed (the build seed, the split, the index and an attempt number);
a drawing whose pixels equal an image already written is drawn again with the next attempt.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np

from .glyphs import Glyph
from .scenes import (CLIP_TEXT_TOKENS, Scene, clip_pieces, common_prefix, render_scene, sample_background,
                     sample_hard_negative_group, sample_scene)


class Writer:
    """Saves PNGs and refuses pixel-identical repeats (the caller draws again)."""

    def __init__(self):
        self.seen: set[bytes] = set()

    def unique(self, im) -> bool:
        h = hashlib.sha1(im.tobytes()).digest()
        if h in self.seen:
            return False
        self.seen.add(h)
        return True

    @staticmethod
    def save(im, path: Path) -> None:
        # Fixed settings and no metadata: the bytes depend on the pixels only.
        im.save(path, format="PNG", compress_level=6)


def draw_unique(writer: Writer, seed: int, split: int, index: tuple, make):
    """``make(rng)`` -> (scene, image), redrawn with the next attempt while its image is a repeat."""
    for attempt in range(100):
        rng = np.random.default_rng([seed, split, *index, attempt])
        scene, im = make(rng)
        if writer.unique(im):
            return scene, im
    raise RuntimeError(f"could not draw a new image for split {split} item {index}")


def single_glyph(glyph: Glyph, size: int):
    """One glyph alone, at a random cell, size and background."""
    def make(rng):
        scene = sample_scene(rng, [glyph], size, glyphs=[glyph])
        return scene, render_scene(scene)
    return make


def background_alone(size: int):
    """``make(rng)`` -> (scene, image) of a random background with no glyph, ``size`` pixels square."""
    def make(rng):
        scene = Scene(size=size, background=sample_background(rng), objects=(), caption_seed=0)
        return scene, render_scene(scene)
    return make


def hard_negative_groups(writer: Writer, ev: Path, kind: str, seed: int, split: int, p: dict, count: int, vocab,
                          bar, caption) -> tuple[list[dict], list]:
    """``count`` groups of hard negatives, new images only, captioned by ``caption(scene)``: rows and scenes.

    A group is kept only when its captions share more than CLIP's 75 text tokens, so that a text
    tower cut at 77 tokens sees one text for the whole group. Images go to ``ev/kind/``.
    """
    rows, scenes = [], []
    S, gs = p["image_size"], p["group_size"]
    if count:
        (ev / kind).mkdir(parents=True, exist_ok=True)
    for g in range(count):
        for attempt in range(100):
            rng = np.random.default_rng([seed, split, g, attempt])
            group = sample_hard_negative_group(rng, vocab, S, gs)
            texts = [caption(s) for s, _ in group]
            if len(clip_pieces(common_prefix(texts))) - 1 < CLIP_TEXT_TOKENS:
                continue
            images = [render_scene(s) for s, _ in group]
            hashes = [hashlib.sha1(im.tobytes()).digest() for im in images]
            if len(set(hashes)) == len(hashes) and not set(hashes) & writer.seen:
                writer.seen.update(hashes)
                break
        else:
            raise RuntimeError(f"could not draw {kind} hard-negative group {g} with new images")
        for k, ((scene, change), im, text) in enumerate(zip(group, images, texts)):
            name = f"{kind}/{kind}-{g:05d}-{k}.png"
            writer.save(im, ev / name)
            rows.append({"image": name, "caption": text, "group": g, "change": change})
            scenes.append(scene)
            bar.update()
    return rows, scenes
