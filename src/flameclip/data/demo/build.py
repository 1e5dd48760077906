"""Build the demo data set: emoji scenes for training and four held-out evaluation sets.

    build_demo_data("runs/demo-data", scale="cpu", seed=0)

writes, under the root::

    train/images/*.png  train/manifest.jsonl (id, image)  train/captions.jsonl (id, raw, short, long)
    train/fit.jsonl, train/val.jsonl  the same scenes split: the last n_val are held out for validation
                        (learning curves, choosing settings); the evaluation sets below are never used for that
                        fit.jsonl also holds the glyph cards (glyph_cards per vocabulary glyph: the glyph
                        alone in 1 + card_views drawings, captioned by its name only) and the background
                        cards (background_cards of them: a background with no glyph, captioned by it),
                        spread through it
    train/scenes.jsonl  (id and what is in each image: glyphs, positions, sizes, boxes, background)
                        with train_groups: groups of group_size scenes that differ only in their last-named
                        object (as the hard negatives below), in fit.jsonl with a "group" column
    train/val_groups.jsonl, train/val_groups_novel.jsonl, train/val_suite.toml  with val_groups:
                        held-out groups of the same kind, captioned like the training scenes and by
                        the other writer (below), as two retrieval tasks for choosing settings
    eval/long_retrieval.jsonl   long captions; groups of hard negatives that differ late in the text
    eval/novel_retrieval.jsonl  the same kind of groups, captioned by another writer (rephrase.py):
                                words and sentence structures that no training caption uses
    eval/short_retrieval.jsonl  short captions
    eval/zeroshot/<class>/*.png one glyph alone, one folder per English name (spaces as "_")
    eval/multilingual.jsonl     one glyph alone, captioned by its name in up to 14 languages
    eval/suite.toml             the evaluation suite over the four sets (and Fashion-MNIST, below)
    DONE.json                   the parameters: a second call with the same ones returns at once
    fashion-mnist/              when the Debian package dataset-fashion-mnist is installed: a
                                class-balanced subset (flameclip.data.fashion_mnist) for a zero-shot
                                and a linear-probe task, added to the suite; without it they are left
                                out with a one-line note

Every image comes from its own seed (the build seed, the split and the index), and an image whose
pixels equal an image already written is redrawn, so the evaluation images are disjoint from the
training images and from each other. Same seed and sizes give byte-identical files.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from ...fileio import marker_matches, write_marker
from . import glyphs as G
from .cards import background_cards, glyph_cards, interleave
from .drawing import Writer, background_alone, draw_unique, hard_negative_groups, single_glyph
from .rephrase import novel_long_caption
from .scenes import captions, jitter_view, long_caption, random_scene, render_scene, short_caption
from .suite import SUITE_TOML, VAL_SUITE_TOML, write_suites

# Bump when the output changes for the same parameters, so old builds are rebuilt.
BUILD_VERSION = 4

# cpu: builds in well under a minute on 2 cores; gpu: ten times larger. fashion_train/fashion_test:
# the Fashion-MNIST subset (train split for the linear probe, t10k for the probe's test and zero-shot).
SCALES = {
    "cpu": dict(image_size=64, vocab_size=100, n_train=2000, n_val=200, sparse_percent=0, train_views=0,
                glyph_cards=0, card_views=0, background_cards=0, train_groups=0, val_groups=0, long_groups=50, group_size=4, n_short=200,
                n_classes=50, per_class=4, n_multilingual=50, fashion_train=2000, fashion_test=1000),
    "gpu": dict(image_size=64, vocab_size=1000, n_train=20000, n_val=1000, sparse_percent=0, train_views=0,
                glyph_cards=0, card_views=0, background_cards=0, train_groups=0, val_groups=0, long_groups=500, group_size=4, n_short=2000,
                n_classes=500, per_class=4, n_multilingual=500, fashion_train=2000, fashion_test=1000),
}

# Sizes of the Fashion-MNIST subset: kept out of the emoji build's DONE.json, so that installing
# the package or changing its sizes rebuilds only that subset, never the emoji scenes.
FASHION_SIZES = ("fashion_train", "fashion_test")

# Part of every image's seed, so that the splits never share a random stream.
(SPLIT_TRAIN, SPLIT_LONG, SPLIT_SHORT, SPLIT_ZEROSHOT, SPLIT_MULTI, SPLIT_NOVEL, SPLIT_TRAIN_VIEWS, SPLIT_CARDS,
 SPLIT_TRAIN_GROUPS, SPLIT_VAL_GROUPS, SPLIT_BACKGROUNDS) = range(11)



# Where each part of the demo's data lives: the training set's files, then the evaluation sets'.
TRAIN_FILES = {"train_images": "images", "train_manifest": "manifest.jsonl", "fit_manifest": "fit.jsonl",
               "val_manifest": "val.jsonl", "train_captions": "captions.jsonl", "train_scenes": "scenes.jsonl",
               "val_groups": "val_groups.jsonl", "val_groups_novel": "val_groups_novel.jsonl",
               "val_suite": "val_suite.toml"}
EVAL_FILES = {"long_retrieval": "long_retrieval.jsonl", "novel_retrieval": "novel_retrieval.jsonl",
              "short_retrieval": "short_retrieval.jsonl", "zeroshot": "zeroshot",
              "multilingual": "multilingual.jsonl", "suite": "suite.toml"}


def _paths(root: Path) -> dict[str, Path]:
    return {"root": root, **{k: root / "train" / v for k, v in TRAIN_FILES.items()},
            **{k: root / "eval" / v for k, v in EVAL_FILES.items()},
            "done": root / "DONE.json", "fashion_mnist": root / "fashion-mnist"}  # the latter only with the package


def _write_jsonl(path: Path, records: list[dict]) -> None:
    with open(path, "w", encoding="utf-8", newline="\n") as f:
        for r in records:
            f.write(json.dumps(r, ensure_ascii=False) + "\n")


def resolve_params(scale: str = "cpu", seed: int = 0, **sizes) -> dict:
    """The scale's sizes with any given ones replacing them, plus the seed and the data versions."""
    if scale not in SCALES:
        raise ValueError(f"scale must be one of {', '.join(SCALES)}, not {scale!r}")
    unknown = set(sizes) - set(SCALES[scale])
    if unknown:
        raise TypeError(f"unknown size parameter(s): {', '.join(sorted(unknown))}")
    params = {"scale": scale, "seed": int(seed), **SCALES[scale]}
    params.update({k: int(v) for k, v in sizes.items() if v is not None})
    if sizes.get("n_val") is None:  # a tenth of the scenes at most, when only n_train is given
        params["n_val"] = min(params["n_val"], params["n_train"] // 10)
    if params["n_classes"] > params["vocab_size"] or params["n_multilingual"] > params["vocab_size"]:
        raise ValueError("n_classes and n_multilingual are drawn from the vocabulary: keep them <= vocab_size")
    if not 0 <= params["sparse_percent"] <= 100:
        raise ValueError(f"sparse_percent must be in 0..100, not {params['sparse_percent']}")
    if params["train_groups"] < 0 or params["val_groups"] < 0:
        raise ValueError("train_groups and val_groups must be >= 0 (groups of hard negatives)")
    if params["glyph_cards"] < 0 or params["card_views"] < 0:
        raise ValueError("glyph_cards and card_views must be >= 0 (records per glyph, extra drawings per record)")
    if params["background_cards"] < 0:
        raise ValueError(f"background_cards must be >= 0 (records of a background alone), not {params['background_cards']}")
    if params["train_views"] < 0:
        raise ValueError(f"train_views must be >= 0 (extra drawings of each training scene), not {params['train_views']}")
    if not 0 <= params["n_val"] < params["n_train"]:
        raise ValueError(f"n_val must be at least 0 and below n_train ({params['n_train']}), not {params['n_val']}")
    if params["group_size"] < 2:
        raise ValueError("a hard-negative group needs group_size >= 2")
    if params["fashion_train"] < 0 or params["fashion_test"] < 0:
        raise ValueError("fashion_train and fashion_test must be >= 0 (0 leaves the Fashion-MNIST tasks out)")
    # The font and the emoji package fix the pixels and names: another version means another build.
    params["glyphs"] = G.cache_key()
    params["build_version"] = BUILD_VERSION
    return params


def build_demo_data(root: str | Path, scale: str = "cpu", seed: int = 0, *, progress: bool = True,
                    image_size: int | None = None, vocab_size: int | None = None, n_train: int | None = None,
                    n_val: int | None = None, sparse_percent: int | None = None, train_views: int | None = None,
                    glyph_cards: int | None = None, card_views: int | None = None,
                    background_cards: int | None = None, train_groups: int | None = None, val_groups: int | None = None, long_groups: int | None = None, group_size: int | None = None, n_short: int | None = None,
                    n_classes: int | None = None, per_class: int | None = None,
                    n_multilingual: int | None = None, fashion_train: int | None = None,
                    fashion_test: int | None = None) -> dict[str, Path]:
    """Write the demo training and evaluation data under ``root`` (once) and return its paths.

    ``scale`` picks the sizes (see ``SCALES``); the keyword sizes override single ones (tests
    use tiny ones). If ``root/DONE.json`` records the same parameters, nothing is rebuilt;
    otherwise ``root/train`` and ``root/eval`` are replaced. When Fashion-MNIST is installed
    (``flameclip.data.fashion_mnist.find_fashion_mnist``) its subset is built once under
    ``root/fashion-mnist`` and its two tasks are added to the suite; otherwise one line says they
    are skipped. Nothing else under ``root`` is touched.
    """
    root = Path(root)
    params = resolve_params(scale, seed, image_size=image_size, vocab_size=vocab_size, n_train=n_train, n_val=n_val,
                            sparse_percent=sparse_percent, train_views=train_views, glyph_cards=glyph_cards,
                            card_views=card_views, background_cards=background_cards, train_groups=train_groups, val_groups=val_groups,
                            long_groups=long_groups, group_size=group_size, n_short=n_short, n_classes=n_classes,
                            per_class=per_class, n_multilingual=n_multilingual, fashion_train=fashion_train,
                            fashion_test=fashion_test)
    paths = _paths(root)
    emoji_params = {k: v for k, v in params.items() if k not in FASHION_SIZES}
    if not marker_matches(paths["done"], emoji_params):
        _build_emoji(root, paths["done"], emoji_params, progress)
    # Checked on every call, not recorded in DONE.json: the package may be installed or removed
    # between runs, and the suites should follow without rebuilding the emoji sets.
    write_suites(paths["suite"], root / "train" / "val_suite.toml", paths, params, progress)
    return paths


def _build_emoji(root: Path, done: Path, params: dict, progress: bool) -> None:
    # Build into a scratch folder and move it into place at the end, so that an interrupted
    # build never leaves a half-written set next to a DONE.json.
    root.mkdir(parents=True, exist_ok=True)
    scratch = root / ".partial"
    shutil.rmtree(scratch, ignore_errors=True)
    counts = _build(scratch, params, progress)
    done.unlink(missing_ok=True)
    for part in ("train", "eval"):
        shutil.rmtree(root / part, ignore_errors=True)
        (scratch / part).rename(root / part)
    shutil.rmtree(scratch)
    write_marker(done, params, counts)


def _build(out: Path, p: dict, progress: bool) -> dict:
    seed, S, gs = p["seed"], p["image_size"], p["group_size"]
    vocab = G.vocabulary(p["vocab_size"])
    total = (p["n_train"] + len(vocab) * p["glyph_cards"] * (1 + p["card_views"]) + p["background_cards"]
             + (2 * p["long_groups"] + p["train_groups"] + p["val_groups"]) * gs
             + p["n_short"] + p["n_classes"] * p["per_class"] + p["n_multilingual"])
    bar = tqdm(total=total, desc="demo data", unit="img", disable=not progress)
    writer = Writer()
    train, ev = out / "train", out / "eval"
    (train / "images").mkdir(parents=True)
    for sub in ("long", "novel", "short", "zeroshot", "multilingual"):
        (ev / sub).mkdir(parents=True)

    # Training scenes: 1-9 glyphs from the vocabulary; captions in English only. sparse_percent of
    # them (spread evenly) hold only 1-3 glyphs: there each glyph is large in the picture and in the
    # caption, which is where a model learns what a glyph looks like (and their captions are short,
    # so cheaper to embed).
    manifest, caps, scenes = [], [], []
    fit_count = p["n_train"] - p["n_val"]
    for i in range(p["n_train"]):
        sparse = (i * p["sparse_percent"]) // 100 != ((i + 1) * p["sparse_percent"]) // 100
        scene, im = draw_unique(writer, seed, SPLIT_TRAIN, (i,),
                                 lambda rng: random_scene(rng, vocab, S, max_glyphs=3 if sparse else 9))
        sid = f"train-{i:06d}"
        writer.save(im, train / "images" / f"{sid}.png")
        record = {"id": sid, "image": f"images/{sid}.png"}
        if i < fit_count and p["train_views"]:
            # Other drawings of the same scene (glyphs moved within their cells): every caption stays
            # true, and training picks one drawing per epoch. Held-out scenes keep their one image.
            rng = np.random.default_rng([seed, SPLIT_TRAIN_VIEWS, i])
            record["views"] = []
            for v in range(1, p["train_views"] + 1):
                writer.save(render_scene(jitter_view(scene, rng)), train / "images" / f"{sid}-v{v}.png")
                record["views"].append(f"images/{sid}-v{v}.png")
        manifest.append(record)
        caps.append({"id": sid, **captions(scene)})
        scenes.append({"id": sid, **scene.to_json()})
        bar.update()
    cut = len(manifest) - p["n_val"]
    fit, val = manifest[:cut], manifest[cut:]
    def draw_card(j: int, glyph, sid: str, r: int, v: int):  # one drawing of a card, saved; its scene
        scene, im = draw_unique(writer, seed, SPLIT_CARDS, (j, r, v), single_glyph(glyph, S))
        writer.save(im, train / f"images/{sid}-v{v}.png")
        bar.update()
        return scene, f"images/{sid}-v{v}.png"

    cards = glyph_cards(vocab, p["glyph_cards"], p["card_views"], draw_card, caps, scenes)

    def draw_background(i: int, sid: str):  # a background alone, saved; its scene
        scene, im = draw_unique(writer, seed, SPLIT_BACKGROUNDS, (i,), background_alone(S))
        writer.save(im, train / f"images/{sid}.png")
        bar.update()
        return scene, f"images/{sid}.png"

    backgrounds = background_cards(p["background_cards"], draw_background, caps, scenes)
    cards = interleave(cards, backgrounds)
    manifest += cards

    # Long-caption retrieval with hard negatives: each group differs only in its last-named object.
    # The novel set is built the same way from its own seeds and captioned by the other writer.
    long_rows, _ = hard_negative_groups(writer, ev, "long", seed, SPLIT_LONG, p, p["long_groups"], vocab, bar,
                                         long_caption)
    _write_jsonl(ev / "long_retrieval.jsonl", long_rows)
    novel_rows, _ = hard_negative_groups(writer, ev, "novel", seed, SPLIT_NOVEL, p, p["long_groups"], vocab, bar,
                                          novel_long_caption)
    _write_jsonl(ev / "novel_retrieval.jsonl", novel_rows)

    # Groups of the same kind for training (drawn after the evaluation sets, which they never
    # change): in one batch (``batch_groups``) each scene is a negative of the others, which differ
    # from it only past the first 75 CLIP tokens. Held-out groups make a validation retrieval task.
    group_rows, group_scenes = hard_negative_groups(writer, train, "groups", seed, SPLIT_TRAIN_GROUPS, p,
                                                     p["train_groups"], vocab, bar, long_caption)
    grouped = []
    for row, scene in zip(group_rows, group_scenes):
        sid = Path(row["image"]).stem
        grouped.append({"id": sid, "image": row["image"], "group": f"group-{row['group']:05d}"})
        caps.append({"id": sid, **captions(scene)})
        scenes.append({"id": sid, **scene.to_json()})
    manifest += grouped
    if p["val_groups"]:
        val_rows, val_scenes = hard_negative_groups(writer, train, "val_groups", seed, SPLIT_VAL_GROUPS, p,
                                                     p["val_groups"], vocab, bar, long_caption)
        _write_jsonl(train / "val_groups.jsonl", val_rows)  # and in the other writer's words (unseen phrasing):
        _write_jsonl(train / "val_groups_novel.jsonl", [{**r, "caption": novel_long_caption(s)}
                                                        for r, s in zip(val_rows, val_scenes)])
        (train / "val_suite.toml").write_text(VAL_SUITE_TOML, encoding="utf-8")
    _write_jsonl(train / "manifest.jsonl", manifest)
    _write_jsonl(train / "fit.jsonl", interleave(interleave(fit, cards), grouped) if grouped else interleave(fit, cards))
    _write_jsonl(train / "val.jsonl", val)
    _write_jsonl(train / "captions.jsonl", caps)
    _write_jsonl(train / "scenes.jsonl", scenes)

    # Short-caption retrieval: ordinary scenes, captioned in one sentence.
    short_rows = []
    for i in range(p["n_short"]):
        scene, im = draw_unique(writer, seed, SPLIT_SHORT, (i,), lambda rng: random_scene(rng, vocab, S))
        name = f"short/short-{i:05d}.png"
        writer.save(im, ev / name)
        short_rows.append({"image": name, "caption": short_caption(scene)})
        bar.update()
    _write_jsonl(ev / "short_retrieval.jsonl", short_rows)

    # Zero-shot classification: the first n_classes vocabulary glyphs, each alone.
    for j, glyph in enumerate(vocab[:p["n_classes"]]):
        folder = ev / "zeroshot" / glyph.name.replace(" ", "_")  # the evaluator reads "_" as a space
        folder.mkdir()
        for k in range(p["per_class"]):
            _, im = draw_unique(writer, seed, SPLIT_ZEROSHOT, (j, k), single_glyph(glyph, S))
            writer.save(im, folder / f"{k:03d}.png")
            bar.update()

    # Multilingual retrieval: one image per glyph, one row per language that names it. A name
    # equal to the English one is no translation (often the package's fallback), so it is left out.
    multi_rows = []
    for j, glyph in enumerate(vocab[:p["n_multilingual"]]):
        _, im = draw_unique(writer, seed, SPLIT_MULTI, (j,), single_glyph(glyph, S))
        name = f"multilingual/glyph-{j:05d}.png"
        writer.save(im, ev / name)
        english = glyph.names["en"]
        for lang in G.LANGUAGES:
            text = glyph.names.get(lang)
            if not text or (lang != "en" and text.casefold() == english.casefold()):
                continue
            multi_rows.append({"image": name, "caption": text, "language": lang})
        bar.update()
    _write_jsonl(ev / "multilingual.jsonl", multi_rows)
    (ev / "suite.toml").write_text(SUITE_TOML, encoding="utf-8")
    bar.close()

    return {
        "train_images": len(manifest),
        "glyph_cards": len(cards) - len(backgrounds),
        "background_cards": len(backgrounds),
        "train_groups": {"images": len(grouped), "groups": p["train_groups"]},
        "val_groups": {"images": p["val_groups"] * gs, "groups": p["val_groups"]},
        "held_out_for_validation": p["n_val"],
        "long_retrieval": {"images": len(long_rows), "groups": p["long_groups"]},
        "novel_retrieval": {"images": len(novel_rows), "groups": p["long_groups"]},
        "short_retrieval": {"images": len(short_rows)},
        "zeroshot": {"classes": p["n_classes"], "images": p["n_classes"] * p["per_class"]},
        "multilingual": {"images": p["n_multilingual"], "captions": len(multi_rows),
                         "languages": len({r["language"] for r in multi_rows})},
    }
