"""The demo's caption writers: what a caption says is true of its scene, in good English."""

from __future__ import annotations

import numpy as np
import pytest

from flameclip.data.demo import glyphs as G
from flameclip.data.demo.glyphs import EmojiFontNotFound, find_emoji_font

try:
    find_emoji_font()
except EmojiFontNotFound as e:  # the only reason to skip: a system package we cannot pip-install
    pytest.skip(str(e), allow_module_level=True)

from flameclip.data.demo import scenes as SC  # noqa: E402


def test_short_captions_take_the_article_of_their_first_colour():
    """ "an orange background", never "a orange": the article is written from the colour's word."""
    assert SC.Background("solid", ("orange",)).short() == "an orange background"
    assert SC.Background("vertical", ("orange", "teal")).short() == "an orange and teal gradient background"
    assert SC.Background("horizontal", ("teal", "orange")).short() == "a teal and orange gradient background"


def test_relations_match_the_grid():
    vocab = G.vocabulary(30)
    rng = np.random.default_rng(5)
    scene = SC.sample_scene(rng, vocab, 64, n=9)  # every cell used: reading order = cell order
    a, b, e = scene.objects[0], scene.objects[1], scene.objects[4]
    assert a.position == "top left" and e.position == "centre"
    assert SC.relation(a, b) == "to the left of" and SC.relation(b, a) == "to the right of"
    assert SC.relation(a, scene.objects[3]) == "above"
    assert SC.relation(scene.objects[8], a) == "below and to the right of"


def test_novel_caption_says_what_is_in_the_scene():
    from flameclip.data.demo.rephrase import CELL_WORDS, novel_long_caption

    vocab = G.vocabulary(30)
    for seed in range(20):
        scene = SC.sample_scene(np.random.default_rng(seed), vocab, 64)
        text = novel_long_caption(scene)
        for o in scene.objects:
            assert f"{o.glyph.name} " in text or f"{o.glyph.name}." in text or f"{o.glyph.name}," in text
            assert CELL_WORDS[o.cell] in text
        # Each object's clause names its own cell: the k-th cell phrase belongs to the k-th object.
        found = sorted((text.index(f"the {CELL_WORDS[o.cell]}"), o.cell) for o in scene.objects)
        assert [c for _, c in found] == [o.cell for o in scene.objects]
