"""Figures of an evaluation results dict: headline bars, recall@K curves, recall per language.

Each figure is a bare matplotlib Figure on an Agg canvas (never pyplot), one colour per checkpoint
in every figure, and is not written when the results hold nothing for it. Bar charts draw chance
as a dashed grey line wherever the rows' counts give it (``tables.chance_level``).
"""

from __future__ import annotations

import math
from pathlib import Path

from matplotlib import colormaps
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.patches import Patch

from .tables import (
    I2T,
    LANGUAGE_METRIC,
    T2I,
    _RETRIEVAL_TASKS,
    _Group,
    _groups,
    _labels,
    _languages,
    _metric,
    _recall_ks,
    _task_name,
    chance_level,
    metric_name,
)

DPI = 120


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


CHANCE_COLOUR, CHANCE_STYLE = "0.25", (0, (2, 2))


def _shared_chance(entries, name: str) -> float | None:
    """Chance on ``name`` of a (task, dataset): the checkpoints' rows agree on it, or it is not drawn."""
    levels = {chance_level(e, name) for e in entries if e is not None} - {None}
    return levels.pop() if len(levels) == 1 else None


def _chance_handle(drawn: bool) -> list:
    """The legend entry of the chance lines, when at least one was drawn."""
    return [Line2D([], [], color=CHANCE_COLOUR, linestyle=CHANCE_STYLE, lw=1.5, label="chance")] if drawn else []


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
    drawn = False
    for ax, table in zip(axes, tables):
        languages = list(table.languages)
        values = [list(row) + [average] for row, average in zip(table.values, table.averages)]
        # The average sits a little apart from the languages, after a dotted divider.
        centres = list(range(len(languages))) + [len(languages) + 0.5]
        _bars(ax, centres, values, labels, width=0.8 / len(labels), annotate=False)
        ax.axvline(len(languages) - 0.25, color="0.6", linestyle=":", lw=1)
        chance = _shared_chance(table.group.entries, LANGUAGE_METRIC)
        drawn = drawn or chance is not None
        if chance is not None:
            ax.axhline(100 * chance, color=CHANCE_COLOUR, linestyle=CHANCE_STYLE, lw=1.2)
        ax.set_xticks(centres, languages + ["avg"])
        ax.set_xlim(-0.6, centres[-1] + 0.6)
        ax.set_ylim(0, _upper_limit([100 * v for row in values for v in row if v is not None], 5))
        ax.set_xlabel("language")
        ax.set_ylabel("text→image R@1 (%)")
        ax.set_title(f"{table.group.title}: text→image R@1 per language")
        ax.grid(axis="y", alpha=0.3)
        ax.set_axisbelow(True)
    _legend(figure, _checkpoint_handles(labels, patch=True) + _chance_handle(drawn))
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
    # Chance differs per task (classes, images), so each group of bars gets its own short line.
    drawn = False
    for centre, (group, name) in zip(centres, items):
        chance = _shared_chance(group.entries, name)
        drawn = drawn or chance is not None
        if chance is not None:
            ax.hlines(100 * chance, centre - 0.45, centre + 0.45, color=CHANCE_COLOUR, linestyle=CHANCE_STYLE, lw=1.5)
    ticks = [f"{group.title}\n{_task_name(group.task)}\n{metric_name(name)}" for group, name in items]
    ax.set_xticks(centres, ticks, fontsize=8.5)
    ax.set_ylim(0, _upper_limit([100 * v for row in values for v in row if v is not None], 8))
    ax.set_ylabel("score (%)")
    ax.set_title("Headline metric per task and dataset")
    ax.grid(axis="y", alpha=0.3)
    ax.set_axisbelow(True)
    _legend(figure, _checkpoint_handles(labels, patch=True) + _chance_handle(drawn))
    return _save(figure, path)
