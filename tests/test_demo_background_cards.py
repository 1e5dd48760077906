"""Background cards: a background alone, no glyph, captioned by its background only."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from flameclip.data.demo.glyphs import EmojiFontNotFound, find_emoji_font

try:
    find_emoji_font()
except EmojiFontNotFound as e:  # the only reason to skip: a system package we cannot pip-install
    pytest.skip(str(e), allow_module_level=True)

from flameclip.data.demo import build_demo_data  # noqa: E402
from flameclip.data.demo import scenes as SC  # noqa: E402

TINY = dict(vocab_size=20, n_train=30, n_val=5, long_groups=2, group_size=3, n_short=4, n_classes=3, per_class=2,
            n_multilingual=4)


def _jsonl(path):
    return [json.loads(line) for line in Path(path).read_text(encoding="utf-8").splitlines()]


def test_background_cards_show_their_background_alone_and_change_nothing_else(tmp_path):
    p = build_demo_data(tmp_path / "d", "cpu", seed=0, progress=False, **TINY, background_cards=12)
    fit, val = _jsonl(p["fit_manifest"]), _jsonl(p["val_manifest"])
    cards = [r for r in fit if r["id"].startswith("background-")]
    assert len(cards) == 12 and not any(r["id"].startswith("background-") for r in val)
    assert sorted(r["id"] for r in fit + val) == sorted(r["id"] for r in _jsonl(p["train_manifest"]))
    # Spread through the fit list, so a prefix of it (the data-efficiency runs) holds its share.
    assert abs(sum(r["id"].startswith("background-") for r in fit[: len(fit) // 2]) - 6) <= 1

    root = Path(p["fit_manifest"]).parent
    scenes = {s["id"]: s for s in _jsonl(p["train_scenes"])}
    caps = {c["id"]: c for c in _jsonl(p["train_captions"])}
    rgb = dict(SC.COLOURS)
    pictures = set()
    for r in cards:
        scene, cap = scenes[r["id"]], caps[r["id"]]
        assert scene["objects"] == []
        bg = SC.Background(scene["background"]["kind"], tuple(scene["background"]["colours"]))
        pixels = np.asarray(Image.open(root / r["image"]).convert("RGB"))
        pictures.add(pixels.tobytes())
        # No glyph: a solid background is one colour; a gradient runs from the first colour to the
        # second, every line across it one colour (a glyph would break that).
        if bg.kind == "solid":
            assert (pixels == rgb[bg.colours[0]]).all()
        else:
            lines = pixels if bg.kind == "vertical" else pixels.transpose(1, 0, 2)
            assert (lines == lines[:, :1]).all()
            assert (lines[0] == rgb[bg.colours[0]]).all() and (lines[-1] == rgb[bg.colours[1]]).all()
        # Every caption names the colours, in order, and says there is no object.
        for text in (cap["raw"], cap["short"], cap["long"]):
            positions = [text.index(c) for c in bg.colours]
            assert positions == sorted(positions), text
        assert "no objects" in cap["long"] and not any(g in cap["raw"] for g in (",", "object"))
    assert len(pictures) == len(cards)
    counts = json.loads(Path(p["done"]).read_text(encoding="utf-8"))["counts"]
    assert (counts["background_cards"], counts["glyph_cards"]) == (12, 0)

    # The scenes, the validation split and every evaluation file are those of a build without cards.
    plain = build_demo_data(tmp_path / "plain", "cpu", seed=0, progress=False, **TINY)
    assert _jsonl(plain["val_manifest"]) == val
    assert [r for r in fit if not r["id"].startswith("background-")] == _jsonl(plain["fit_manifest"])
    for f in sorted((tmp_path / "plain" / "eval").rglob("*")):
        if f.is_file():
            assert f.read_bytes() == (tmp_path / "d" / "eval" / f.relative_to(tmp_path / "plain" / "eval")).read_bytes()
    with pytest.raises(ValueError, match="background_cards"):
        build_demo_data(tmp_path / "c", "cpu", progress=False, **TINY, background_cards=-1)
