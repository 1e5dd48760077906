"""The demo's headline targets, read from a results dict written by hand."""

import math

import pytest

from flameclip.evaluate.efficiency import plot_data_efficiency
from flameclip.evaluate.targets import evaluate_targets, targets_table

T2I = "image_retrieval_recall@"


def _results(flame_long_r1=0.30, clip_long_r1=0.20, flame_group=0.60, clip_group=0.25, extra_flame=()):
    rows = []
    for label, long_r1, group, en, de, zs, short, probe in (
        ("FLAME", flame_long_r1, flame_group, 0.40, 0.12, 0.20, 0.30, 0.60),
        ("CLIP", clip_long_r1, clip_group, 0.10, 0.03, 0.10, 0.33, 0.62),
        *extra_flame,
    ):
        rows += [
            {"checkpoint": label, "task": "zeroshot", "dataset": "emoji-glyphs", "metrics": {"acc1": zs},
             "counts": {"images": 200, "classes": 50}},
            {"checkpoint": label, "task": "multilingual", "dataset": "emoji-names",
             "metrics": {T2I + "1": (en + de) / 2},
             "per_language": {"en": {T2I + "1": en}, "de": {T2I + "1": de}},
             "counts": {"images": 50, "texts": 100, "languages": 2}},
            {"checkpoint": label, "task": "retrieval", "dataset": "scenes-short", "metrics": {T2I + "1": short},
             "counts": {"images": 200, "texts": 200}},
            {"checkpoint": label, "task": "linear_probe", "dataset": "fashion-mnist-probe", "metrics": {"acc1": probe},
             "counts": {"train": 2000, "test": 1000, "classes": 10}},
        ]
        for ds in ("scenes-long", "scenes-novel-phrasing"):
            rows.append({"checkpoint": label, "task": "retrieval", "dataset": ds,
                         "metrics": {T2I + "1": long_r1, T2I + "5": long_r1 + 0.2, "group_image_retrieval_acc": group,
                                     "group_image_retrieval_chance": 0.25},
                         "counts": {"images": 200, "texts": 200, "groups": 50}})
    return {"results": rows}


def _by(targets):
    return {(t.name, t.metric): t for t in targets}


def test_targets_read_the_right_figures_and_apply_the_rules():
    t = _by(evaluate_targets(_results()))
    en = t[("glyph name -> image (English)", "text→image R@1")]
    assert (en.flame, en.clip, en.chance, en.met) == (0.40, 0.10, 1 / 50, True)
    other = t[("glyph names in the other languages", "mean text→image R@1")]
    assert (other.flame, other.clip, other.met) == (0.12, 0.03, True)  # 0.12 >= 3 x 0.03
    zs = t[("zero-shot glyph names", "acc@1")]
    assert zs.chance == 1 / 50 and zs.met
    # Novel phrasing needs a lead of more than two standard errors: 0.30 vs 0.20 over 200 queries
    # is 10 points against 2 x 3.1.
    novel = t[("long captions in unseen phrasing", "text→image R@1")]
    assert novel.stderr == pytest.approx(math.sqrt(0.25 * 0.75 / 200)) and novel.met
    group = t[("long captions, hard negatives", "group score (caption picks its image in its group)")]
    assert group.chance == 0.25 and group.met
    # Short retrieval: 0.30 vs 0.33 over 200 is 3 points behind, more than one s.e. (3.2)? No: 3.0 < 3.2.
    short = t[("short captions", "text→image R@1")]
    assert short.met and short.stderr == pytest.approx(math.sqrt(0.315 * 0.685 / 200))
    probe = t[("Fashion-MNIST linear probe", "acc@1")]
    assert probe.met is False  # 2 points behind over 1000 images, one s.e. is 1.5
    # Chance from each set's counts: K of 200 images, 1 of 10 classes.
    assert t[("long captions, hard negatives", "text→image R@5")].chance == 5 / 200
    assert short.chance == 1 / 200 and probe.chance == 1 / 10


def test_a_group_score_uses_its_standard_error_by_group():
    # 0.60 vs 0.25 over 200 captions is a wide lead by the proportion's s.e. (3.4)...
    res = _results()
    assert _by(evaluate_targets(res))[("long captions, hard negatives",
                                       "group score (caption picks its image in its group)")].met
    # ...but not when the captions' hits are so correlated within groups that one s.e. is 0.2.
    for row in res["results"]:
        if row["dataset"] == "scenes-long":
            row["metrics"]["group_image_retrieval_stderr"] = 0.2 if row["checkpoint"] == "CLIP" else 0.1
    group = _by(evaluate_targets(res))[("long captions, hard negatives",
                                        "group score (caption picks its image in its group)")]
    assert group.stderr == 0.2 and group.met is False  # the larger of the two


def test_recall_in_unseen_phrasing_uses_its_standard_error_by_group():
    # 0.30 vs 0.20 over 200 captions: a lead of 10 points against 2 x 3.1 by the proportion...
    res = _results()
    assert _by(evaluate_targets(res))[("long captions in unseen phrasing", "text→image R@1")].met
    # ...but 50 groups of four whose hits go together have one s.e. of 0.06: 10 < 2 x 6.
    for row in res["results"]:
        if row["dataset"] == "scenes-novel-phrasing":
            row["metrics"][T2I + "1_stderr"] = 0.06 if row["checkpoint"] == "FLAME" else 0.05
    t = _by(evaluate_targets(res))
    r1 = t[("long captions in unseen phrasing", "text→image R@1")]
    assert r1.stderr == 0.06 and r1.met is False
    # The hard-negative set's R@1 has none here: the proportion's s.e. stays, and the table says which.
    assert t[("long captions, hard negatives", "text→image R@1")].stderr == pytest.approx(math.sqrt(0.25 * 0.75 / 200))
    assert "by group" in targets_table(list(t.values()), markdown=True)


def test_a_lead_within_noise_is_not_a_wide_lead():
    t = _by(evaluate_targets(_results(flame_long_r1=0.22, clip_long_r1=0.20)))
    assert t[("long captions, hard negatives", "text→image R@1")].met  # "ahead" only
    assert not t[("long captions in unseen phrasing", "text→image R@1")].met  # needs > 2 s.e.


def test_missing_figures_are_not_met_and_the_table_says_so():
    res = _results()
    res["results"] = [r for r in res["results"] if not (r["checkpoint"] == "CLIP" and r["task"] == "zeroshot")]
    t = _by(evaluate_targets(res))
    assert t[("zero-shot glyph names", "acc@1")].met is None
    table = targets_table(list(t.values()))
    assert "zero-shot glyph names" in table and "—" in table
    assert "targets met" in table
    md = targets_table(list(t.values()), markdown=True)
    assert md.splitlines()[0].startswith("| target | figure | FLAME | CLIP | chance")


def test_chance_comes_from_either_models_counts_and_a_nan_figure_is_missing():
    """Without FLAME's rows, chance is still read from CLIP's; a NaN figure is no figure."""
    res = _results()
    res["results"] = [r for r in res["results"] if not (r["checkpoint"] == "FLAME" and r["task"] == "retrieval")]
    for r in res["results"]:
        if r["checkpoint"] == "CLIP" and r["dataset"] == "scenes-short":
            r["metrics"][T2I + "1"] = float("nan")
    t = _by(evaluate_targets(res))
    assert t[("long captions, hard negatives", "text→image R@5")].chance == 5 / 200
    assert t[("long captions, hard negatives", "group score (caption picks its image in its group)")].chance == 0.25
    short = t[("short captions", "text→image R@1")]
    assert short.chance == 1 / 200 and short.flame is None and short.clip is None and short.met is None


def test_data_efficiency_figure(tmp_path):
    res = _results(extra_flame=(("FLAME 25%", 0.1, 0.3, 0.2, 0.05, 0.1, 0.2, 0.5),))
    png = plot_data_efficiency(res, {"FLAME 25%": 0.25, "FLAME": 1.0}, tmp_path / "eff.png")
    assert png is not None and png.stat().st_size > 5000
    assert plot_data_efficiency(res, {"FLAME": 1.0}, tmp_path / "none.png") is None
