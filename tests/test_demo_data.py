"""The demo data builders: emoji glyphs, scenes with captions, and the evaluation sets."""

from __future__ import annotations

import hashlib
import json
import os
import re
import tomllib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from flameclip.data.demo import glyphs as G
from flameclip.data.demo.glyphs import EmojiFontNotFound, find_emoji_font
from flameclip.demo import DEMO_PROMPTS

try:
    find_emoji_font()
except EmojiFontNotFound as e:  # the only reason to skip: a system package we cannot pip-install
    pytest.skip(str(e), allow_module_level=True)

from flameclip.data.demo import build_demo_data  # noqa: E402
from flameclip.data.demo import scenes as SC  # noqa: E402

# Small but not trivial: enough scenes for the caption statistics, a few of every evaluation set.
SIZES = dict(vocab_size=40, n_train=150, long_groups=6, group_size=4, n_short=10, n_classes=5, per_class=2,
             n_multilingual=12)
TINY = dict(vocab_size=20, n_train=10, long_groups=2, group_size=3, n_short=4, n_classes=3, per_class=2,
            n_multilingual=4)


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    root = tmp_path_factory.mktemp("demo")
    return build_demo_data(root, "cpu", seed=0, progress=False, **SIZES)


@pytest.fixture(scope="module")
def clip_tok():
    import open_clip  # a dependency: a broken install must fail here, not skip

    return open_clip.get_tokenizer("ViT-B-32")


def _jsonl(path):
    return [json.loads(line) for line in Path(path).read_text(encoding="utf-8").splitlines() if line.strip()]


def _files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


# ------------------------------------------------------------------ glyphs

def test_glyphs_render_as_nonempty_rgba():
    glyphs = G.list_glyphs()
    assert len(glyphs) > 1000  # Noto Color Emoji draws well over a thousand simple emoji
    for g in glyphs[:: len(glyphs) // 25]:
        im = G.glyph_image(g.key)
        assert im.mode == "RGBA" and min(im.size) >= 20
        alpha = np.asarray(im)[..., 3]
        assert alpha.max() == 255 and (alpha > 0).mean() > 0.1, g
        small = G.glyph_at(g.key, 16)
        assert max(small.size) == 16 and small.mode == "RGBA"
    # The font draws nothing for a code point it lacks, and such glyphs are not listed.
    from PIL import ImageFont

    font = ImageFont.truetype(str(find_emoji_font()), G.NATIVE_SIZE)
    assert G.render_glyph(font, "\ue000") is None
    assert G.render_glyph(font, "🍎") is not None


def test_glyph_names_are_clean_english():
    assert G.clean_name(":red_apple:") == "red apple"
    assert G.clean_name(":man’s_shoe:") == "man's shoe"
    by_char = {g.char: g for g in G.list_glyphs()}
    apple = by_char["🍎"]
    assert apple.name == "red apple" and apple.names["en"] == "red apple"
    assert apple.names["de"] == "roter apfel" and apple.names["fr"] == "pomme rouge"
    for g in G.list_glyphs():
        assert g.name and g.name == g.name.strip() and not re.search(r"[:_]|\s\s", g.name), g
    vocab = G.vocabulary()
    assert len(vocab) > 1000
    assert all(re.fullmatch(r"[A-Za-z][A-Za-z' \-]*", g.name) for g in vocab)
    assert len({g.name.lower() for g in vocab}) == len(vocab)  # a name identifies one glyph
    assert G.vocabulary(30) == vocab[:30]  # smaller vocabularies are prefixes of larger ones


# ------------------------------------------------------------------ scenes and captions

def test_positions_and_sizes_are_true_of_the_pixels(built):
    S = 64
    for rec in _jsonl(built["train_scenes"]):
        assert 1 <= len(rec["objects"]) <= 9
        for o in rec["objects"]:
            x0, y0, x1, y1 = o["box"]
            assert 0 <= x0 < x1 <= S and 0 <= y0 < y1 <= S, rec["id"]
            cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
            row, col = SC.ROWS[min(2, int(cy * 3 // S))], SC.COLS[min(2, int(cx * 3 // S))]
            expected = "centre" if row == col == "centre" else f"{row} {col}"
            assert o["position"] == expected, (rec["id"], o)
            lo, hi = SC.SIZE_RANGES[o["size"]]
            assert lo * S - 1 <= max(x1 - x0, y1 - y0) <= hi * S + 1, (rec["id"], o)


def test_long_captions_exceed_clip_context_and_name_every_object(built, clip_tok):
    caps = {r["id"]: r for r in _jsonl(built["train_captions"])}
    scenes = {r["id"]: r for r in _jsonl(built["train_scenes"])}
    assert caps.keys() == scenes.keys()
    over = 0
    for sid, rec in caps.items():
        n_tokens = len(clip_tok.encode(rec["long"])) + 2  # plus start and end of text
        over += n_tokens > 77
        # The piece count used to place hard negatives is a lower bound on CLIP's token count.
        assert len(SC.clip_pieces(rec["long"])) + 2 <= n_tokens
        objs = scenes[sid]["objects"]
        sentences = rec["long"].split(". ")
        for o in objs:
            assert o["name"] in rec["raw"], (sid, o["name"])
            # The object is named with its size, in a sentence that gives its position.
            named = [t for t in sentences if f"{SC.SIZE_WORDS[o['size']]} {o['name']}" in t]
            where = re.compile(rf"the {o['position']}(?! left| right)", re.IGNORECASE)
            assert any(where.search(t) for t in named), (sid, o, rec["long"])
        assert rec["raw"].count(",") == len(objs) - 1
        assert rec["short"].endswith(".") and rec["short"].count(".") == 1
        assert f"The image shows {SC.NUMBER_WORDS[len(objs)]} object" in rec["long"]
    assert over / len(caps) > 0.3, f"only {over}/{len(caps)} long captions exceed 77 CLIP tokens"


@pytest.mark.parametrize("which", ["long_retrieval", "novel_retrieval"])
def test_hard_negatives_differ_only_after_clip_context(built, clip_tok, which):
    rows = _jsonl(built[which])
    root = built[which].parent
    groups = {}
    for r in rows:
        groups.setdefault(r["group"], []).append(r)
    assert len(groups) == SIZES["long_groups"] and all(len(g) == SIZES["group_size"] for g in groups.values())
    kinds = {r["change"] for r in rows}
    assert "original" in kinds and kinds <= {"original", "object", "position"}
    for g in groups.values():
        caps = [r["caption"] for r in g]
        assert len(set(caps)) == len(caps)  # the full texts tell the scenes apart
        truncated = clip_tok(caps)  # what a CLIP text encoder sees: 77 tokens
        assert all(torch_equal(truncated[0], t) for t in truncated[1:]), "texts differ within CLIP's context"
        prefix = os.path.commonprefix(caps)
        assert len(prefix) > 0.5 * max(len(c) for c in caps)
        pixels = [np.asarray(Image.open(root / r["image"])) for r in g]
        for i in range(len(pixels)):
            for j in range(i + 1, len(pixels)):
                assert not np.array_equal(pixels[i], pixels[j])


def test_novel_captions_avoid_the_training_phrasing(built):
    train_text = " ".join(c for r in _jsonl(built["train_captions"]) for c in (r["short"], r["long"])).lower()
    # The words the training captions use for positions, sizes and backgrounds...
    for phrase in ("top left", "bottom right", "centre left", "medium-sized", "small", "large", "background",
                   "to the left of", "in the centre"):
        assert phrase in train_text, phrase
    names = {g.name.lower() for g in G.vocabulary(SIZES["vocab_size"])}
    for r in _jsonl(built["novel_retrieval"]):
        text = r["caption"].lower()
        for name in names:  # glyph names are the content, the one thing both writers share
            text = text.replace(name, " ")
        # ...never appear in a novel caption, and neither do the training colour words.
        for phrase in ("top left", "bottom right", "centre left", "medium-sized", "small", "large", "background",
                       "to the left of", "in the centre", " red ", "light blue", "dark green"):
            assert phrase not in text, (phrase, r["caption"])
    # The same images are not reused: the novel set is its own draw.
    long_images = {r["image"] for r in _jsonl(built["long_retrieval"])}
    assert not long_images & {r["image"] for r in _jsonl(built["novel_retrieval"])}


def torch_equal(a, b) -> bool:
    return bool((a == b).all())


# ------------------------------------------------------------------ evaluation sets and suite

def test_multilingual_manifest(built):
    rows = _jsonl(built["multilingual"])
    langs = {r["language"] for r in rows}
    assert len(langs) >= 10 and langs <= set(G.LANGUAGES)
    english = {r["image"]: r["caption"] for r in rows if r["language"] == "en"}
    assert len(english) == SIZES["n_multilingual"]
    for r in rows:
        assert r["caption"].strip() and r["image"] in english
        if r["language"] != "en":
            assert r["caption"].casefold() != english[r["image"]].casefold(), r
    # No duplicate (image, language) rows.
    assert len({(r["image"], r["language"]) for r in rows}) == len(rows)


def test_zeroshot_folders_and_disjoint_images(built):
    folders = sorted(p for p in built["zeroshot"].iterdir() if p.is_dir())
    vocab_names = {g.name for g in G.vocabulary(SIZES["vocab_size"])}
    assert len(folders) == SIZES["n_classes"]
    for f in folders:
        assert f.name.replace("_", " ") in vocab_names
        assert len(list(f.glob("*.png"))) == SIZES["per_class"]
    # Evaluation images are never training images (nor each other).
    root = built["root"]
    digests = [hashlib.sha1(np.asarray(Image.open(p)).tobytes()).hexdigest() for p in sorted(root.rglob("*.png"))]
    assert len(set(digests)) == len(digests)


def test_suite_parses_and_points_at_files(built):
    suite = built["suite"]
    data = tomllib.loads(suite.read_text(encoding="utf-8"))
    tasks = {t["name"]: t for t in data["task"]}
    # (plus the Fashion-MNIST tasks where that dataset is installed: tests/test_fashion_mnist.py)
    assert {"emoji-glyphs", "scenes-long", "scenes-novel-phrasing", "scenes-short", "emoji-names"} <= set(tasks)
    # each caption column is queried with the prompt set the demo stores it with
    assert tasks["scenes-long"]["mode"] == tasks["scenes-novel-phrasing"]["mode"] == DEMO_PROMPTS["long"]
    assert tasks["scenes-short"]["mode"] == DEMO_PROMPTS["short"]
    for t in data["task"]:
        for key in ("path", "train", "test"):
            assert key not in t or (suite.parent / t[key]).exists(), t
    # The evaluator's own loaders accept every set and find every image.
    from flameclip.evaluate.datasets import load_classification, load_retrieval
    from flameclip.evaluate.tasks import load_suite

    specs = {s.name: s for s in load_suite(suite)}
    zs = load_classification("z", specs["emoji-glyphs"].path)
    assert zs.counts() == {"images": SIZES["n_classes"] * SIZES["per_class"], "classes": SIZES["n_classes"]}
    long = load_retrieval("l", specs["scenes-long"].path)
    short = load_retrieval("s", specs["scenes-short"].path)
    multi = load_retrieval("m", specs["emoji-names"].path, language_column="language")
    assert len(long.images) == SIZES["long_groups"] * SIZES["group_size"] and len(short.images) == SIZES["n_short"]
    assert len(multi.images) == SIZES["n_multilingual"]
    for ds in (zs, long, short, multi):
        assert all(Path(p).is_file() for p in ds.images)
    # Training manifest and captions join by id and point at images.
    manifest = _jsonl(built["train_manifest"])
    assert [r["id"] for r in manifest] == [r["id"] for r in _jsonl(built["train_captions"])]
    assert all((built["train_manifest"].parent / r["image"]).is_file() for r in manifest)


# ------------------------------------------------------------------ building

def test_build_is_deterministic_and_built_once(tmp_path, monkeypatch):
    a = build_demo_data(tmp_path / "a", "cpu", seed=0, progress=False, **TINY)
    b = build_demo_data(tmp_path / "b", "cpu", seed=0, progress=False, **TINY)
    c = build_demo_data(tmp_path / "c", "cpu", seed=1, progress=False, **TINY)
    fa, fb, fc = _files(a["root"]), _files(b["root"]), _files(c["root"])
    assert len(fa) > 20 and fa == fb  # same seed: byte-identical files, DONE.json included
    differ = [k for k in fa if fa[k] != fc.get(k)]
    assert any(k.startswith("train/images/") for k in differ) and "train/captions.jsonl" in differ

    # Built once: the same parameters do not build again; other ones do, replacing the old set.
    from flameclip.data.demo import build as B

    def fail(*args, **kwargs):
        raise AssertionError("rebuilt although DONE.json matches")

    monkeypatch.setattr(B, "_build", fail)
    assert build_demo_data(tmp_path / "a", "cpu", seed=0, progress=False, **TINY) == a
    monkeypatch.undo()
    build_demo_data(tmp_path / "a", "cpu", seed=0, progress=False, **{**TINY, "n_train": 5})
    assert len(list((tmp_path / "a" / "train" / "images").glob("*.png"))) == 5
    assert not (tmp_path / "a" / ".partial").exists()


def test_bad_parameters_are_refused(tmp_path):
    with pytest.raises(ValueError, match="scale"):
        build_demo_data(tmp_path, "tpu")
    with pytest.raises(ValueError, match="vocab_size"):
        build_demo_data(tmp_path, "cpu", progress=False, **{**TINY, "n_classes": 50})


def test_sparse_scenes_and_the_validation_split(tmp_path):
    p = build_demo_data(tmp_path / "d", "cpu", seed=0, progress=False, **{**TINY, "n_train": 40, "n_val": 6},
                        sparse_percent=50)
    scenes = _jsonl(p["train_scenes"])
    counts = [len(s["objects"]) for s in scenes]
    # Every other scene is sparse (1-3 glyphs); the others may hold up to 9.
    assert all(c <= 3 for c in counts[1::2]), counts
    assert max(counts[0::2]) > 3
    fit, val = _jsonl(p["fit_manifest"]), _jsonl(p["val_manifest"])
    manifest = _jsonl(p["train_manifest"])
    assert fit + val == manifest and len(val) == 6
    # Without sparse scenes the training images are those of the plain build (same seeds).
    a = build_demo_data(tmp_path / "a", "cpu", seed=0, progress=False, **TINY)
    b = build_demo_data(tmp_path / "b", "cpu", seed=0, progress=False, **TINY, sparse_percent=0)
    assert _files(a["train_images"]) == _files(b["train_images"])
    with pytest.raises(ValueError, match="sparse_percent"):
        build_demo_data(tmp_path / "c", "cpu", progress=False, **TINY, sparse_percent=101)
    with pytest.raises(ValueError, match="n_val"):
        build_demo_data(tmp_path / "c", "cpu", progress=False, **{**TINY, "n_val": TINY["n_train"]})


def test_views_redraw_fit_scenes_and_keep_every_caption_true(tmp_path):
    p = build_demo_data(tmp_path / "d", "cpu", seed=0, progress=False, **{**TINY, "n_train": 30, "n_val": 5},
                        train_views=2)
    fit, val = _jsonl(p["fit_manifest"]), _jsonl(p["val_manifest"])
    assert all(len(r["views"]) == 2 for r in fit) and not any("views" in r for r in val)
    root = Path(p["fit_manifest"]).parent
    moved = 0
    for r in fit:
        main = np.asarray(Image.open(root / r["image"]))
        for v in r["views"]:
            moved += not np.array_equal(main, np.asarray(Image.open(root / v)))
    assert moved >= len(fit)  # most drawings differ from their scene's first image
    # The glyphs move, the captions do not: every redrawn scene says exactly what the first one says.
    rng = np.random.default_rng(0)
    vocab = G.vocabulary(100)
    for _ in range(50):
        scene = SC.sample_scene(rng, vocab, 64)
        view = SC.jitter_view(scene, rng)
        assert SC.captions(view) == SC.captions(scene)
        assert [(o.cell, o.size, o.px) for o in view.objects] == [(o.cell, o.size, o.px) for o in scene.objects]
        assert SC.max_occlusion(view.objects, 64) <= SC.MAX_OCCLUSION
    with pytest.raises(ValueError, match="train_views"):
        build_demo_data(tmp_path / "c", "cpu", progress=False, **TINY, train_views=-1)


def test_glyph_cards_show_one_named_glyph_in_fresh_drawings_and_stay_out_of_validation(tmp_path):
    sizes = {**TINY, "n_train": 30, "n_val": 5}
    p = build_demo_data(tmp_path / "d", "cpu", seed=0, progress=False, **sizes, glyph_cards=2, card_views=3)
    fit, val, manifest = _jsonl(p["fit_manifest"]), _jsonl(p["val_manifest"]), _jsonl(p["train_manifest"])
    cards = [r for r in fit if r["id"].startswith("card-")]
    vocab = G.vocabulary(TINY["vocab_size"])
    assert len(cards) == 2 * len(vocab) and all(len(r["views"]) == 3 for r in cards)
    assert not any(r["id"].startswith("card-") for r in val)
    assert sorted(r["id"] for r in fit + val) == sorted(r["id"] for r in manifest)
    # Cards are spread through the fit list, so a prefix of it (the data-efficiency runs) holds its share.
    first_half = fit[: len(fit) // 2]
    assert abs(sum(r["id"].startswith("card-") for r in first_half) - len(cards) / 2) <= 1
    # Captions name the glyph only: the same text for both records of a glyph, whatever the drawing.
    caps = {r["id"]: r for r in _jsonl(p["train_captions"])}
    for j, g in enumerate(vocab):
        a, b = caps[f"card-{j:05d}-0"], caps[f"card-{j:05d}-1"]
        assert a["raw"] == g.name and a == {**b, "id": a["id"]}
        assert g.name in a["short"] and g.name in a["long"]
    # Every drawing is a different picture of one glyph alone.
    root = Path(p["fit_manifest"]).parent
    pixels = [np.asarray(Image.open(root / f)).tobytes() for r in cards for f in [r["image"], *r["views"]]]
    assert len(set(pixels)) == len(pixels)
    scenes = {s["id"]: s for s in _jsonl(p["train_scenes"])}
    assert all(len(scenes[r["id"]]["objects"]) == 1 for r in cards)
    # The scenes themselves are those of the build without cards.
    plain = build_demo_data(tmp_path / "plain", "cpu", seed=0, progress=False, **sizes)
    assert _jsonl(plain["val_manifest"]) == val
    assert [r for r in fit if not r["id"].startswith("card-")] == _jsonl(plain["fit_manifest"])
    with pytest.raises(ValueError, match="glyph_cards"):
        build_demo_data(tmp_path / "c", "cpu", progress=False, **TINY, glyph_cards=-1)


def test_training_groups_differ_late_and_leave_every_other_set_unchanged(tmp_path, clip_tok):
    sizes = {**TINY, "n_train": 20, "n_val": 4, "vocab_size": 30}
    p = build_demo_data(tmp_path / "d", "cpu", seed=0, progress=False, **sizes, train_groups=3, val_groups=2)
    fit, manifest = _jsonl(p["fit_manifest"]), _jsonl(p["train_manifest"])
    grouped = [r for r in fit if "group" in r]
    assert len(grouped) == 3 * TINY["group_size"] and len({r["group"] for r in grouped}) == 3
    assert sorted(r["id"] for r in fit + _jsonl(p["val_manifest"])) == sorted(r["id"] for r in manifest)
    caps = {r["id"]: r for r in _jsonl(p["train_captions"])}
    for g in {r["group"] for r in grouped}:
        longs = [caps[r["id"]]["long"] for r in grouped if r["group"] == g]
        assert len(set(longs)) == len(longs)  # every scene of a group has its own caption...
        ids = [clip_tok(t)[0] for t in longs]  # ...but one text for CLIP's 77 tokens
        assert all(np.array_equal(ids[0], x) for x in ids[1:])
    # Held-out groups: a retrieval task in the evaluation format, images under train/.
    rows = _jsonl(p["val_groups"])
    assert len(rows) == 2 * TINY["group_size"] and {r["group"] for r in rows} == {0, 1}
    assert all((Path(p["val_groups"]).parent / r["image"]).is_file() for r in rows)
    assert not {r["caption"] for r in rows} & {c["long"] for c in caps.values()}
    specs = tomllib.loads(Path(p["val_suite"]).read_text())["task"]
    assert [(t["path"], t["mode"]) for t in specs] == [("val_groups.jsonl", DEMO_PROMPTS["long"]),
                                                        ("val_groups_novel.jsonl", DEMO_PROMPTS["long"])]
    # Its twin in unseen phrasing: the same images and groups, other words than any training caption.
    novel = _jsonl(p["val_groups_novel"])
    assert [(r["image"], r["group"]) for r in novel] == [(r["image"], r["group"]) for r in rows]
    assert all(a["caption"] != b["caption"] for a, b in zip(novel, rows))
    assert not any(" top left" in r["caption"] or "background" in r["caption"] for r in novel)
    # The evaluation sets and the plain scenes are those of the build without groups.
    plain = build_demo_data(tmp_path / "plain", "cpu", seed=0, progress=False, **sizes)
    assert _files(tmp_path / "plain" / "eval") == _files(tmp_path / "d" / "eval")
    assert [r for r in fit if "group" not in r] == _jsonl(plain["fit_manifest"])
    assert not Path(plain["val_groups"]).exists()
    with pytest.raises(ValueError, match="train_groups"):
        build_demo_data(tmp_path / "c", "cpu", progress=False, **TINY, val_groups=-1)
