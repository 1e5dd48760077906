"""Side-by-side reports of evaluation results: Markdown and console tables, figures, report.md.

Input is the results dict that ``flameclip eval`` writes as results.json::

    {"format": "flameclip-eval/1",
     "checkpoints": [{"label": "FLAME", ...}, {"label": "CLIP", ...}],
     "results": [{"checkpoint": "FLAME", "task": "zeroshot", "dataset": "emoji-glyphs",
                  "mode": None or "long7" ..., "metrics": {"acc1": 0.41, ...},
                  "per_language": {...} (multilingual only), "counts": {"images": 500, ...}},
                 ...]}

Metric values are fractions in [0, 1] named as in CLIP_benchmark; everything shown to a
person is in percent. Note CLIP_benchmark's naming: ``image_retrieval_recall@K`` is
text->image retrieval (the images are retrieved), ``text_retrieval_recall@K`` image->text.
Every metric here is higher-is-better, which the "best value" highlighting relies on.

Any checkpoint may lack rows (a task not run for it) or metrics; those cells read "—".
"""

from __future__ import annotations

import json
import math
import numbers
import re
from dataclasses import dataclass
from pathlib import Path

from matplotlib import colormaps
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.patches import Patch

__all__ = [
    "checkpoint_colour",
    "console_table",
    "markdown_table",
    "metric_name",
    "plot_languages",
    "plot_retrieval",
    "plot_summary",
    "write_report",
]

MISSING = "—"
DPI = 120

# Tasks are listed in this order; tasks not named here follow in order of first appearance.
_TASK_ORDER = ("zeroshot", "retrieval", "multilingual", "linear_probe")
_TASK_NAMES = {
    "zeroshot": "zero-shot",
    "retrieval": "retrieval",
    "multilingual": "multilingual",
    "linear_probe": "linear probe",
}
_RETRIEVAL_TASKS = ("retrieval", "multilingual")

T2I = "image_retrieval_recall@"  # CLIP_benchmark's name for text->image recall
I2T = "text_retrieval_recall@"  # and for image->text recall
LANGUAGE_METRIC = T2I + "1"
_RECALL = re.compile(r"^(image|text)_retrieval_recall@(\d+)$")

# Metrics are listed in this order within a (task, dataset, mode); recall@K sorts by K.
_METRIC_ORDER = ("acc1", "acc5", "mean_per_class_recall")
_METRIC_NAMES = {"acc1": "acc@1", "acc5": "acc@5", "mean_per_class_recall": "mean per-class recall",
                 "group_image_retrieval_acc": "text→image group score",
                 "group_text_retrieval_acc": "image→text group score",
                 "group_image_retrieval_chance": "text→image group score, chance",
                 "group_text_retrieval_chance": "image→text group score, chance"}


# -----------------------------------------------------------------------------
# reading the results dict


@dataclass(frozen=True)
class _Group:
    """One (task, dataset, mode) and the result entry of each checkpoint (None where missing)."""

    task: str
    dataset: str
    mode: str | None
    entries: tuple[dict | None, ...]

    @property
    def title(self) -> str:
        return self.dataset if not self.mode else f"{self.dataset} ({self.mode})"


def _labels(results: dict) -> list[str]:
    """Checkpoint labels in the order of results["checkpoints"], then any only named by a row."""
    labels = [c["label"] for c in results.get("checkpoints", [])]
    for row in results.get("results", []):
        if row["checkpoint"] not in labels:
            labels.append(row["checkpoint"])
    return labels


def _groups(results: dict) -> list[_Group]:
    labels = _labels(results)
    by_key: dict[tuple, dict[str, dict]] = {}
    for row in results.get("results", []):
        key = (row["task"], row["dataset"], row.get("mode"))
        # A duplicated row keeps the first one, like every other "first seen" rule here.
        by_key.setdefault(key, {}).setdefault(row["checkpoint"], row)

    first_seen = {key: i for i, key in enumerate(by_key)}
    task_first_seen: dict[str, int] = {}
    for task, _, _ in by_key:
        task_first_seen.setdefault(task, len(task_first_seen))

    def order(key):
        task = key[0]
        rank = _TASK_ORDER.index(task) if task in _TASK_ORDER else len(_TASK_ORDER)
        # Grouping by task first keeps a task's datasets together even when a later
        # checkpoint brings a row the first one lacks.
        return (rank, task_first_seen[task], first_seen[key])

    return [
        _Group(task, dataset, mode, tuple(by_key[(task, dataset, mode)].get(label) for label in labels))
        for task, dataset, mode in sorted(by_key, key=order)
    ]


def _number(value) -> float | None:
    """A finite number as float, anything else (None, NaN, strings) as None, shown as "—"."""
    # numbers.Real rather than (int, float): numpy's float32 scalars are not floats.
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        return None
    return float(value) if math.isfinite(value) else None


def _metric(entry: dict | None, name: str) -> float | None:
    if entry is None:
        return None
    return _number(entry.get("metrics", {}).get(name))


def _metric_names(group: _Group) -> list[str]:
    seen: dict[str, int] = {}
    for entry in group.entries:
        for name in (entry or {}).get("metrics", {}):
            seen.setdefault(name, len(seen))

    def order(name):
        if name in _METRIC_ORDER:
            return (0, _METRIC_ORDER.index(name), 0, 0)
        recall = _RECALL.match(name)
        if recall:  # text->image before image->text, each by K
            return (1, 0 if recall.group(1) == "image" else 1, int(recall.group(2)), 0)
        return (2, 0, 0, seen[name])

    return sorted(seen, key=order)


def metric_name(name: str) -> str:
    """A metric's name for people: "image_retrieval_recall@5" -> "text→image R@5"."""
    recall = _RECALL.match(name)
    if recall:
        direction = "text→image" if recall.group(1) == "image" else "image→text"
        return f"{direction} R@{recall.group(2)}"
    return _METRIC_NAMES.get(name, name)


def _task_name(task: str) -> str:
    return _TASK_NAMES.get(task, task)


def _recall_ks(entries, prefix: str) -> list[int]:
    ks = set()
    for entry in entries:
        for name in (entry or {}).get("metrics", {}):
            if name.startswith(prefix) and _RECALL.match(name):
                ks.add(int(name[len(prefix):]))
    return sorted(ks)


# -----------------------------------------------------------------------------
# tables


def _pct(value: float | None) -> str:
    return MISSING if value is None else f"{100 * value:.1f}"


@dataclass(frozen=True)
class _Line:
    """One table row, already formatted: leading key cells, then one cell per checkpoint."""

    keys: tuple[str, ...]
    values: tuple[str, ...]
    best: tuple[bool, ...]
    delta: str | None  # None when there is no Δ column (fewer than two checkpoints)


def _line(keys: tuple[str, ...], values: list[float | None]) -> _Line:
    shown = [_pct(v) for v in values]
    # Best and Δ are taken from the shown (rounded) numbers so the table agrees with itself:
    # a reader checking "41.0 − 28.7" must find "+12.3", and equal-looking values tie.
    rounded = [None if s == MISSING else float(s) for s in shown]
    present = [r for r in rounded if r is not None]
    # Nothing is highlighted when there is nothing to choose: a lone value (the others are
    # missing) or all values equal. Values tied at the top are all highlighted.
    top = max(present) if len(set(present)) >= 2 else None
    best = tuple(r is not None and r == top for r in rounded)

    delta = None
    if len(values) >= 2:
        a, b = rounded[0], rounded[1]
        # "+0.0" rather than "-0.0" when the two round to the same value.
        delta = MISSING if a is None or b is None else f"{round(a - b, 1) + 0.0:+.1f}"
    return _Line(keys, tuple(shown), best, delta)


def _main_lines(results: dict) -> list[_Line]:
    lines = []
    for group in _groups(results):
        for name in _metric_names(group):
            values = [_metric(entry, name) for entry in group.entries]
            lines.append(_line((_task_name(group.task), group.title, metric_name(name)), values))
    return lines


def _delta_header(labels: list[str]) -> str:
    return f"Δ ({labels[0]} − {labels[1]})"


@dataclass(frozen=True)
class _Languages:
    """Text->image R@1 per language of one multilingual (dataset, mode)."""

    group: _Group
    languages: tuple[str, ...]
    values: tuple[tuple[float | None, ...], ...]  # [checkpoint][language]
    averages: tuple[float | None, ...]  # [checkpoint]


def _languages(results: dict) -> list[_Languages]:
    out = []
    for group in _groups(results):
        if group.task != "multilingual":
            continue
        per_checkpoint = [(entry or {}).get("per_language", {}) for entry in group.entries]
        languages = tuple(dict.fromkeys(lang for per_language in per_checkpoint for lang in per_language))
        if not languages:
            continue
        values = tuple(
            tuple(_number(per_language.get(lang, {}).get(LANGUAGE_METRIC)) for lang in languages)
            for per_language in per_checkpoint
        )
        # The mean over the languages shown, so the average can be checked against them
        # (rather than the row's own averaged metric); a checkpoint missing a language
        # averages over those it has.
        averages = []
        for row in values:
            present = [v for v in row if v is not None]
            averages.append(sum(present) / len(present) if present else None)
        out.append(_Languages(group, languages, values, tuple(averages)))
    return out


def _counts_text(counts: dict) -> str:
    parts = []
    for key, value in counts.items():
        shown = f"{value:,}" if isinstance(value, int) and not isinstance(value, bool) else str(value)
        parts.append(f"{shown} {key.replace('_', ' ')}")
    return ", ".join(parts)


def _counts_line(results: dict) -> str:
    """ "dataset: 500 images, 100 classes; ..." with each distinct count set once.

    A dataset used by several tasks with different counts (say fashion-mnist for zero-shot
    and for the linear probe) is named with the task.
    """
    distinct: dict[str, list[tuple[dict, list[str]]]] = {}
    for group in _groups(results):
        for entry in group.entries:
            if not entry or not entry.get("counts"):
                continue
            seen = distinct.setdefault(group.dataset, [])
            for counts, tasks in seen:
                if counts == entry["counts"]:
                    if group.task not in tasks:
                        tasks.append(group.task)
                    break
            else:
                seen.append((entry["counts"], [group.task]))

    parts = []
    for dataset, seen in distinct.items():
        for counts, tasks in seen:
            name = dataset if len(seen) == 1 else f"{dataset} ({', '.join(_task_name(t) for t in tasks)})"
            parts.append(f"{name}: {_counts_text(counts)}")
    return "; ".join(parts)


def _md_cell(text: str) -> str:
    return text.replace("|", "\\|")


def _md_table(header: list[str], lines: list[_Line], n_keys: int) -> list[str]:
    out = ["| " + " | ".join(_md_cell(h) for h in header) + " |"]
    out.append("|" + "|".join(["---"] * n_keys + ["---:"] * (len(header) - n_keys)) + "|")
    for line in lines:
        values = [f"**{v}**" if best else v for v, best in zip(line.values, line.best)]
        cells = [*line.keys, *values] + ([line.delta] if line.delta is not None else [])
        out.append("| " + " | ".join(_md_cell(c) for c in cells) + " |")
    return out


def markdown_table(results: dict) -> str:
    """The main comparison table, the dataset sizes, and per-language tables, as Markdown.

    One row per (task, dataset[, mode], metric), one column per checkpoint (in percent, the
    best of each row in bold) and, with two or more checkpoints, the difference
    first − second in points.
    """
    labels = _labels(results)
    with_delta = len(labels) >= 2
    header = ["Task", "Dataset", "Metric", *labels] + ([_delta_header(labels)] if with_delta else [])
    out = _md_table(header, _main_lines(results), n_keys=3)

    notes = "Values in %" + ("; Δ in percentage points; best of each row in bold." if with_delta else ".")
    out += ["", notes]
    counts = _counts_line(results)
    if counts:
        out += ["", f"Counts: {counts}."]

    for table in _languages(results):
        header = ["Language", *labels] + ([_delta_header(labels)] if with_delta else [])
        lines = [_line((lang,), [row[j] for row in table.values]) for j, lang in enumerate(table.languages)]
        lines.append(_line(("average",), list(table.averages)))
        out += ["", f"**Multilingual text→image R@1 (%), {table.group.title}**", ""]
        out += _md_table(header, lines, n_keys=1)
    return "\n".join(out) + "\n"


def console_table(results: dict) -> str:
    """The main comparison table as fixed-width text; "*" marks the best value of a row."""
    labels = _labels(results)
    lines = _main_lines(results)
    with_delta = len(labels) >= 2
    header = ["Task", "Dataset", "Metric", *labels] + ([_delta_header(labels)] if with_delta else [])

    rows = []
    previous = (None, None)
    for line in lines:
        task, dataset, metric = line.keys
        # Blank a task/dataset repeated from the row above: the eye finds the groups faster.
        shown_task = "" if task == previous[0] else task
        shown_dataset = "" if (task, dataset) == previous else dataset
        previous = (task, dataset)
        # A trailing space on the others keeps the digits of a column aligned with "41.0*".
        values = [v + ("*" if best else " ") for v, best in zip(line.values, line.best)]
        rows.append([shown_task, shown_dataset, metric, *values] + ([line.delta] if with_delta else []))

    widths = [max(len(str(cell)) for cell in column) for column in zip(header, *rows)]

    def render(cells):
        # Key columns left-aligned, numbers right-aligned.
        return "  ".join(
            cell.ljust(w) if i < 3 else cell.rjust(w) for i, (cell, w) in enumerate(zip(cells, widths))
        ).rstrip()

    out = [render(header), "  ".join("-" * w for w in widths)]
    out += [render(row) for row in rows]
    notes = "values in %" + ("; Δ in points; * best of row" if with_delta else "")
    out += ["", notes]
    return "\n".join(out) + "\n"


# -----------------------------------------------------------------------------
# figures


def checkpoint_colour(index: int):
    """The colour of the index-th checkpoint in every figure: tab:blue, tab:orange, ..."""
    return colormaps["tab10"](index % 10)


def _figure(width: float, height: float) -> Figure:
    # A bare Figure with an Agg canvas, not pyplot: no global backend switch for whoever
    # imports this, and nothing left open in pyplot's figure registry.
    figure = Figure(figsize=(width, height), dpi=DPI, layout="constrained")
    FigureCanvasAgg(figure)
    return figure


def _save(figure: Figure, path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # "tight" as a safety net: the saved image grows rather than clip a long label.
    figure.savefig(path, dpi=DPI, bbox_inches="tight", pad_inches=0.1)
    return path


def _legend(figure: Figure, handles: list) -> None:
    """A figure legend below the axes, so it never hides data, in as many columns as fit."""
    # Roughly 0.08 inch per character at the default 10 pt, plus the handle and the gap.
    entry_width = 0.08 * max(len(h.get_label()) for h in handles) + 0.8
    columns = max(1, min(len(handles), int(figure.get_figwidth() // entry_width)))
    figure.legend(handles=handles, loc="outside lower center", ncol=columns, frameon=False)


def _upper_limit(values: list[float], headroom: float) -> float:
    """A y-axis top in percent that leaves room above the highest value (for labels)."""
    top = max(values, default=0.0)
    return max(10.0, min(100.0 + headroom, top * 1.08 + headroom))


def _checkpoint_handles(labels: list[str], patch: bool):
    if patch:
        return [Patch(color=checkpoint_colour(i), label=label) for i, label in enumerate(labels)]
    return [Line2D([], [], color=checkpoint_colour(i), lw=2, label=label) for i, label in enumerate(labels)]


def plot_retrieval(results: dict, path) -> Path | None:
    """Recall@K curves, a subplot per retrieval/multilingual dataset; None without such rows.

    One colour per checkpoint; solid lines are text->image, dashed lines image->text.
    """
    labels = _labels(results)
    groups = [
        g
        for g in _groups(results)
        if g.task in _RETRIEVAL_TASKS and (_recall_ks(g.entries, T2I) or _recall_ks(g.entries, I2T))
    ]
    if not groups:
        return None

    columns = min(len(groups), 3)
    rows = math.ceil(len(groups) / columns)
    # At least 6.5 inches wide so that a lone subplot still leaves the legend room to spread.
    figure = _figure(max(6.5, 4.4 * columns + 0.4), 3.6 * rows + 1.0)
    axes = figure.subplots(rows, columns, squeeze=False).ravel()

    for ax, group in zip(axes, groups):
        plotted = []
        for i, entry in enumerate(group.entries):
            if entry is None:
                continue
            for prefix, style in ((T2I, "-"), (I2T, "--")):
                points = [(k, _metric(entry, f"{prefix}{k}")) for k in _recall_ks([entry], prefix)]
                points = [(k, 100 * v) for k, v in points if v is not None]
                if points:
                    ks, ys = zip(*points)
                    colour = checkpoint_colour(i)
                    ax.plot(ks, ys, linestyle=style, marker="o", markersize=4, lw=1.8, color=colour)
                    plotted += ys
        ks = sorted(set(_recall_ks(group.entries, T2I)) | set(_recall_ks(group.entries, I2T)))
        ax.set_xticks(ks)
        ax.set_ylim(0, _upper_limit(plotted, 5))
        ax.set_xlabel("K")
        ax.set_ylabel("recall@K (%)")
        title = group.title
        if group.task == "multilingual":
            title += "\nmultilingual, mean over languages"
        ax.set_title(title)
        ax.grid(alpha=0.3)
    for ax in axes[len(groups):]:
        ax.set_visible(False)

    direction_handles = [
        Line2D([], [], color="0.35", lw=1.8, linestyle="-", label="text→image"),
        Line2D([], [], color="0.35", lw=1.8, linestyle="--", label="image→text"),
    ]
    handles = _checkpoint_handles(labels, patch=False) + direction_handles
    _legend(figure, handles)
    figure.suptitle("Retrieval recall@K")
    return _save(figure, path)


def _bars(ax, centres, values, labels, width, annotate: bool):
    """Grouped bars: values[i][j] is checkpoint i at group j (None = missing, marked n/a)."""
    n = len(labels)
    for i, row in enumerate(values):
        offsets = [c + (i - (n - 1) / 2) * width for c in centres]
        heights = [0.0 if v is None else 100 * v for v in row]
        bars = ax.bar(offsets, heights, width, color=checkpoint_colour(i), label=labels[i])
        texts = ["n/a" if v is None else (f"{100 * v:.1f}" if annotate else "") for v in row]
        ax.bar_label(bars, texts, padding=2, fontsize=7.5, rotation=90 if not annotate else 0)


def plot_languages(results: dict, path) -> Path | None:
    """Text->image R@1 per language as grouped bars, a colour per checkpoint; None if no
    multilingual rows. The mean over languages closes each chart as "avg"."""
    labels = _labels(results)
    tables = _languages(results)
    if not tables:
        return None

    widest = max(len(table.languages) for table in tables) + 1
    figure = _figure(min(22.0, max(7.0, 0.3 * widest * max(len(labels), 2) + 2.0)), 3.6 * len(tables) + 0.8)
    axes = figure.subplots(len(tables), 1, squeeze=False).ravel()
    for ax, table in zip(axes, tables):
        languages = list(table.languages)
        values = [list(row) + [average] for row, average in zip(table.values, table.averages)]
        # The average sits a little apart from the languages, after a dotted divider.
        centres = list(range(len(languages))) + [len(languages) + 0.5]
        _bars(ax, centres, values, labels, width=0.8 / len(labels), annotate=False)
        ax.axvline(len(languages) - 0.25, color="0.6", linestyle=":", lw=1)
        ax.set_xticks(centres, languages + ["avg"])
        ax.set_xlim(-0.6, centres[-1] + 0.6)
        ax.set_ylim(0, _upper_limit([100 * v for row in values for v in row if v is not None], 5))
        ax.set_xlabel("language")
        ax.set_ylabel("text→image R@1 (%)")
        ax.set_title(f"{table.group.title}: text→image R@1 per language")
        ax.grid(axis="y", alpha=0.3)
        ax.set_axisbelow(True)
    _legend(figure, _checkpoint_handles(labels, patch=True))
    return _save(figure, path)


def _headline(group: _Group) -> str | None:
    """The one metric that stands for a (task, dataset) in the summary figure."""
    if group.task in _RETRIEVAL_TASKS:
        return LANGUAGE_METRIC
    if group.task in ("zeroshot", "linear_probe"):
        return "acc1"
    # Unknown tasks: acc1 when they report it, else nothing to put in a summary.
    return "acc1" if any(_metric(e, "acc1") is not None for e in group.entries) else None


def plot_summary(results: dict, path) -> Path | None:
    """Grouped bars of the headline metric per (task, dataset[, mode]), a colour per checkpoint:
    acc@1 for zero-shot and linear probe, text->image R@1 for (multilingual) retrieval.
    None when no row has its headline metric."""
    labels = _labels(results)
    items = []
    for group in _groups(results):
        name = _headline(group)
        if name is not None and any(_metric(e, name) is not None for e in group.entries):
            items.append((group, name))
    if not items:
        return None

    figure = _figure(max(6.5, 0.75 * len(items) * max(len(labels), 2) + 2.0), 4.6)
    ax = figure.subplots()
    values = [[_metric(group.entries[i], name) for group, name in items] for i in range(len(labels))]
    centres = list(range(len(items)))
    _bars(ax, centres, values, labels, width=0.8 / len(labels), annotate=True)
    ticks = [f"{group.title}\n{_task_name(group.task)}\n{metric_name(name)}" for group, name in items]
    ax.set_xticks(centres, ticks, fontsize=8.5)
    ax.set_ylim(0, _upper_limit([100 * v for row in values for v in row if v is not None], 8))
    ax.set_ylabel("score (%)")
    ax.set_title("Headline metric per task and dataset")
    ax.grid(axis="y", alpha=0.3)
    ax.set_axisbelow(True)
    _legend(figure, _checkpoint_handles(labels, patch=True))
    return _save(figure, path)


# -----------------------------------------------------------------------------
# the report


def _json_default(value):
    # results may carry numpy scalars or Paths straight from the evaluation code.
    if hasattr(value, "item"):
        return value.item()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


def _checkpoint_line(checkpoint: dict) -> str:
    details = [f"{k.replace('_', ' ')}: {v}" for k, v in checkpoint.items() if k not in ("label", "path")]
    line = f"- **{checkpoint['label']}**"
    if checkpoint.get("path"):
        line += f" — `{checkpoint['path']}`"
    return line + (f" ({', '.join(details)})" if details else "")


# (name in the returned dict, file name, plot function, heading in report.md)
_FIGURES = (
    ("summary", "summary.png", plot_summary, "Headline metrics"),
    ("retrieval", "retrieval.png", plot_retrieval, "Retrieval recall@K"),
    ("languages", "languages.png", plot_languages, "Multilingual retrieval per language"),
)


def write_report(results: dict, out_dir) -> dict[str, Path]:
    """Write results.json, the figures and report.md (which embeds them) into out_dir.

    Returns the paths written by name: "results", "report", and "summary", "retrieval",
    "languages" for the figures that had data. A figure without data is neither written nor
    linked from report.md.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths: dict[str, Path] = {}

    paths["results"] = out_dir / "results.json"
    text = json.dumps(results, indent=2, ensure_ascii=False, default=_json_default)
    paths["results"].write_text(text + "\n", encoding="utf-8")

    figures = []
    for name, filename, plot, heading in _FIGURES:
        written = plot(results, out_dir / filename)
        if written is not None:
            paths[name] = written
            figures.append((heading, filename))

    md = ["# flameclip evaluation report", ""]
    if results.get("checkpoints"):
        md += ["## Checkpoints", ""]
        md += [_checkpoint_line(c) for c in results["checkpoints"]]
        md += [""]
    md += ["## Results", "", markdown_table(results).rstrip("\n"), ""]
    if figures:
        md += ["## Figures", ""]
        for heading, filename in figures:
            # Relative links: the report stays valid when the folder is moved or published.
            md += [f"### {heading}", "", f"![{heading}]({filename})", ""]

    paths["report"] = out_dir / "report.md"
    paths["report"].write_text("\n".join(md), encoding="utf-8")
    return paths
