"""Reports of evaluation results: table contents checked against hand-computed numbers, files on disk."""

import copy
import json
import re

import pytest
from matplotlib.colors import to_rgba
from PIL import Image

from flameclip.evaluate.figures import _shared_chance
from flameclip.evaluate.report import (
    checkpoint_colour,
    console_table,
    markdown_table,
    plot_languages,
    plot_retrieval,
    plot_summary,
    write_report,
)


def _retrieval_metrics(t2i, i2t):
    """CLIP_benchmark names: image_retrieval = text->image, text_retrieval = image->text."""
    metrics = {f"image_retrieval_recall@{k}": v for k, v in zip((1, 5, 10), t2i)}
    metrics.update({f"text_retrieval_recall@{k}": v for k, v in zip((1, 5, 10), i2t)})
    return metrics


def _per_language(r1_by_language):
    return {
        lang: {"image_retrieval_recall@1": r1, "text_retrieval_recall@1": r1 / 2}
        for lang, r1 in r1_by_language.items()
    }


FLAME_R1 = {"en": 0.41, "de": 0.22, "fr": 0.18}
CLIP_R1 = {"en": 0.45, "de": 0.10, "fr": 0.08}


def _results():
    """Two checkpoints; CLIP has no "scenes-long" retrieval row."""
    rows = []
    for label, zeroshot, probe, r1s in (
        ("FLAME", {"acc1": 0.41, "acc5": 0.77, "mean_per_class_recall": 0.40}, 0.8, FLAME_R1),
        ("CLIP", {"acc1": 0.287, "acc5": 0.80, "mean_per_class_recall": 0.40}, 0.75, CLIP_R1),
    ):
        rows.append({"checkpoint": label, "task": "zeroshot", "dataset": "emoji-glyphs",
                     "metrics": zeroshot, "counts": {"images": 500, "classes": 100}})
        if label == "FLAME":
            rows.append({"checkpoint": label, "task": "retrieval", "dataset": "scenes-long", "mode": "long7",
                         "metrics": _retrieval_metrics((0.3, 0.6, 0.7), (0.35, 0.62, 0.75)),
                         "counts": {"images": 200, "texts": 200}})
        rows.append({"checkpoint": label, "task": "multilingual", "dataset": "emoji-names", "mode": "single",
                     "metrics": {"image_retrieval_recall@1": sum(r1s.values()) / len(r1s)},
                     "per_language": _per_language(r1s),
                     "counts": {"images": 100, "texts": 300, "languages": 3}})
        rows.append({"checkpoint": label, "task": "linear_probe", "dataset": "fashion-mnist",
                     "metrics": {"acc1": probe, "mean_per_class_recall": probe},
                     "counts": {"train": 1000, "test": 500}})
    return {
        "format": "flameclip-eval/1",
        "checkpoints": [
            {"label": "FLAME", "path": "runs/flame/checkpoints/step-0000100", "text_tower": "llm",
             "llm": "smollm2-135m"},
            {"label": "CLIP", "path": "runs/clip/checkpoints/step-0000100", "text_tower": "clip"},
        ],
        "results": rows,
    }


def _no_retrieval_results():
    results = _results()
    results["results"] = [r for r in results["results"] if r["task"] in ("zeroshot", "linear_probe")]
    return results


def _table_rows(markdown):
    """Cells of every Markdown table row (header and separator included), stripped."""
    return [
        [cell.strip() for cell in line.strip().strip("|").split("|")]
        for line in markdown.splitlines()
        if line.startswith("|")
    ]


def _row(markdown, *keys):
    matches = [cells for cells in _table_rows(markdown) if cells[: len(keys)] == list(keys)]
    assert len(matches) == 1, (keys, matches)
    return matches[0][len(keys):]


# -----------------------------------------------------------------------------
# markdown_table


def test_markdown_header_lists_checkpoints_in_order_with_delta():
    md = markdown_table(_results())
    assert _table_rows(md)[0] == ["Task", "Dataset", "Metric", "FLAME", "CLIP", "Δ (FLAME − CLIP)"]


def test_markdown_percentages_delta_sign_and_bold():
    md = markdown_table(_results())
    # 0.41 vs 0.287: 41.0 vs 28.7, FLAME ahead by 12.3 points.
    assert _row(md, "zero-shot", "emoji-glyphs", "acc@1") == ["**41.0**", "28.7", "+12.3"]
    # 0.77 vs 0.80: CLIP ahead, negative Δ, bold moves to CLIP.
    assert _row(md, "zero-shot", "emoji-glyphs", "acc@5") == ["77.0", "**80.0**", "-3.0"]
    # Equal values: nothing to highlight, Δ is +0.0 (never "-0.0").
    assert _row(md, "zero-shot", "emoji-glyphs", "mean per-class recall") == ["40.0", "40.0", "+0.0"]
    assert _row(md, "linear probe", "fashion-mnist", "acc@1") == ["**80.0**", "75.0", "+5.0"]


def test_markdown_missing_row_shows_dash():
    md = markdown_table(_results())
    # CLIP never ran scenes-long: its cell and the Δ read "—", and FLAME's lone value is not bold.
    assert _row(md, "retrieval", "scenes-long (long7)", "text→image R@1") == ["30.0", "—", "—"]
    assert _row(md, "retrieval", "scenes-long (long7)", "image→text R@10") == ["75.0", "—", "—"]


def test_markdown_counts_line():
    md = markdown_table(_results())
    counts = [line for line in md.splitlines() if line.startswith("Counts:")]
    assert len(counts) == 1
    assert "emoji-glyphs: 500 images, 100 classes" in counts[0]
    assert "fashion-mnist: 1,000 train, 500 test" in counts[0]
    assert "emoji-names: 100 images, 300 texts, 3 languages" in counts[0]


def test_markdown_language_table_with_average():
    md = markdown_table(_results())
    assert ["Language", "FLAME", "CLIP", "Δ (FLAME − CLIP)"] in _table_rows(md)
    assert _row(md, "en") == ["41.0", "**45.0**", "-4.0"]
    assert _row(md, "de") == ["**22.0**", "10.0", "+12.0"]
    flame_mean = (0.41 + 0.22 + 0.18) / 3  # 27.0 %
    clip_mean = (0.45 + 0.10 + 0.08) / 3  # 21.0 %
    assert _row(md, "average") == [f"**{100 * flame_mean:.1f}**", f"{100 * clip_mean:.1f}", "+6.0"]
    assert _row(md, "average")[0] == "**27.0**"


def test_markdown_without_multilingual_rows_has_one_table():
    md = markdown_table(_no_retrieval_results())
    assert "Language" not in md
    assert sum(1 for cells in _table_rows(md) if cells[0] == "Task") == 1


def test_markdown_single_checkpoint_has_no_delta_and_no_bold():
    results = _results()
    results["checkpoints"] = results["checkpoints"][:1]
    results["results"] = [r for r in results["results"] if r["checkpoint"] == "FLAME"]
    md = markdown_table(results)
    assert _table_rows(md)[0] == ["Task", "Dataset", "Metric", "FLAME"]
    assert "Δ" not in md
    assert not any("**" in cell for cells in _table_rows(md) for cell in cells)
    assert "bold" not in md
    assert _row(md, "zero-shot", "emoji-glyphs", "acc@1") == ["41.0"]


def test_markdown_keeps_a_task_together_when_only_the_second_checkpoint_has_a_dataset():
    results = _results()
    results["results"].append({"checkpoint": "CLIP", "task": "zeroshot", "dataset": "shapes",
                               "metrics": {"acc1": 0.5}})
    md = markdown_table(results)
    assert _row(md, "zero-shot", "shapes", "acc@1") == ["—", "50.0", "—"]
    main_table = md.split("**Multilingual")[0]
    tasks = [cells[0] for cells in _table_rows(main_table)[2:]]
    grouped = [t for i, t in enumerate(tasks) if i == 0 or t != tasks[i - 1]]
    assert grouped == ["zero-shot", "retrieval", "multilingual", "linear probe"]


# -----------------------------------------------------------------------------
# console_table


def test_console_table_is_aligned_plain_text():
    text = console_table(_results())
    assert "|" not in text
    table = text.split("\n\n")[0].splitlines()
    assert table[0].split()[-6:] == ["FLAME", "CLIP", "Δ", "(FLAME", "−", "CLIP)"]
    # Numbers are right-aligned in fixed-width columns: every table line ends at the same column.
    assert len({len(line) for line in table}) == 1
    acc1 = next(line for line in table if "emoji-glyphs" in line and "acc@1" in line)
    assert acc1.split()[-3:] == ["41.0*", "28.7", "+12.3"]
    missing = next(line for line in table if "scenes-long (long7)" in line)
    assert missing.split()[-3:] == ["30.0", "—", "—"]


# -----------------------------------------------------------------------------
# figures and write_report


def _assert_png(path):
    with Image.open(path) as image:
        image.verify()
    with Image.open(path) as image:
        assert image.format == "PNG"
        width, height = image.size
    assert width > 100 and height > 100


def test_checkpoint_colours_are_the_tab10_sequence():
    assert to_rgba(checkpoint_colour(0)) == to_rgba("tab:blue")
    assert to_rgba(checkpoint_colour(1)) == to_rgba("tab:orange")
    assert to_rgba(checkpoint_colour(2)) == to_rgba("tab:green")


def test_plots_write_png_files(tmp_path):
    results = _results()
    for plot, name in ((plot_retrieval, "r.png"), (plot_languages, "l.png"), (plot_summary, "s.png")):
        path = plot(results, tmp_path / "figs" / name)
        assert path == tmp_path / "figs" / name
        _assert_png(path)


def test_chance_levels_come_from_the_counts():
    from flameclip.evaluate.tables import chance_level

    zeroshot = {"counts": {"images": 500, "classes": 100}}
    assert chance_level(zeroshot, "acc1") == 0.01
    assert chance_level(zeroshot, "acc5") == 0.05
    assert chance_level(zeroshot, "mean_per_class_recall") == 0.01
    retrieval = {"counts": {"images": 200, "texts": 800}}
    assert chance_level(retrieval, "image_retrieval_recall@1") == 0.005
    assert chance_level(retrieval, "image_retrieval_recall@10") == 0.05
    assert chance_level({"counts": {"images": 4}}, "image_retrieval_recall@10") == 1.0
    # image->text recall depends on how many captions an image has; a probe without a class count
    # and unknown metrics have no chance level rather than a wrong one
    assert chance_level(retrieval, "text_retrieval_recall@1") is None
    assert chance_level({"counts": {"train": 10, "test": 5}}, "acc1") is None
    assert chance_level(zeroshot, "group_image_retrieval_acc") is None
    assert chance_level(None, "acc1") is None
    # multilingual: each language against the images it names (one language names 49 of 50)
    multilingual = {"counts": {"images": 50}, "images_per_language": {"en": 50, "fr": 49}}
    assert chance_level(multilingual, "image_retrieval_recall@1") == pytest.approx((1 / 50 + 1 / 49) / 2)
    # a figure draws one line per (task, dataset): only where the checkpoints' counts agree
    assert _shared_chance([zeroshot, None, zeroshot], "acc1") == 0.01
    assert _shared_chance([zeroshot, {"counts": {"classes": 50}}], "acc1") is None


def test_write_report(tmp_path):
    results = _results()
    original = copy.deepcopy(results)
    paths = write_report(results, tmp_path / "out")

    assert results == original  # the input is not modified
    assert json.loads(paths["results"].read_text(encoding="utf-8")) == original
    assert paths["results"] == tmp_path / "out" / "results.json"

    pngs = [p for p in paths.values() if p.suffix == ".png"]
    assert {p.name for p in pngs} == {"summary.png", "retrieval.png", "languages.png"}
    report = paths["report"].read_text(encoding="utf-8")
    assert report.startswith("# ")
    for png in pngs:
        assert png.parent == tmp_path / "out"
        assert f"]({png.name})" in report  # relative link
        _assert_png(png)
    # the tables are in the report too
    assert "| **41.0** | 28.7 | +12.3 |" in report
    assert "| average |" in report


def test_no_retrieval_rows(tmp_path):
    results = _no_retrieval_results()
    assert plot_retrieval(results, tmp_path / "retrieval.png") is None
    assert plot_languages(results, tmp_path / "languages.png") is None
    assert not (tmp_path / "retrieval.png").exists()

    out = tmp_path / "out"
    paths = write_report(results, out)
    assert set(paths) == {"results", "report", "summary"}
    report = paths["report"].read_text(encoding="utf-8")
    links = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", report)
    assert links == ["summary.png"]
    for link in links:
        assert (out / link).is_file()
    assert "retrieval.png" not in report and "languages.png" not in report
    assert not (out / "retrieval.png").exists()


def test_empty_results_have_no_figures(tmp_path):
    results = {"format": "flameclip-eval/1", "checkpoints": [{"label": "A"}], "results": []}
    assert plot_summary(results, tmp_path / "s.png") is None
    paths = write_report(results, tmp_path)
    assert set(paths) == {"results", "report"}
    assert "![" not in paths["report"].read_text(encoding="utf-8")


def test_group_scores_have_names_for_people():
    results = _results()
    results["results"].append({"checkpoint": "FLAME", "task": "retrieval", "dataset": "groups", "mode": "long7",
                               "metrics": {"group_image_retrieval_acc": 0.37, "group_image_retrieval_chance": 0.25}})
    md = markdown_table(results)
    assert _row(md, "retrieval", "groups (long7)", "text→image group score")[0] == "37.0"
    assert _row(md, "retrieval", "groups (long7)", "text→image group score, chance")[0] == "25.0"


def test_results_save_load_and_restrict(tmp_path):
    import pytest

    from flameclip.evaluate.results import Results

    r = Results()
    r.checkpoints.extend([{"label": "FLAME", "path": "a"}, {"label": "CLIP", "path": "b"}])
    r.rows.extend([{"checkpoint": "FLAME", "task": "zeroshot", "dataset": "d", "metrics": {"acc1": 0.5}},
                   {"checkpoint": "CLIP", "task": "zeroshot", "dataset": "d", "metrics": {"acc1": 0.25}}])
    r["demo"] = {"seconds": {"total": 1.0}}  # a run's extras travel with the rows
    back = Results.load(r.save(tmp_path / "results.json"))
    assert back == r and back.labels == ["FLAME", "CLIP"]
    assert back.row("CLIP", "zeroshot", "d")["metrics"]["acc1"] == 0.25 and back.row("CLIP", "x", "d") is None
    only = back.only(["CLIP"])
    assert only.labels == ["CLIP"] and [x["checkpoint"] for x in only.rows] == ["CLIP"] and only["demo"] == r["demo"]
    (tmp_path / "other.json").write_text('{"format": "something-else/2", "results": []}')
    with pytest.raises(ValueError, match="format 'something-else/2'"):
        Results.load(tmp_path / "other.json")
