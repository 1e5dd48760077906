"""Reading an evaluation results dict, and its Markdown and console tables.

The results dict is described in :mod:`flameclip.evaluate.report`. Metric values are fractions in
[0, 1] named as in CLIP_benchmark; everything shown to a person is in percent. Note CLIP_benchmark's
naming: ``image_retrieval_recall@K`` is text->image retrieval (the images are retrieved),
``text_retrieval_recall@K`` image->text. Every metric here is higher-is-better, which the "best
value" highlighting relies on. Any checkpoint may lack rows or metrics; those cells read "—".
"""

from __future__ import annotations

import math
import numbers
import re
from dataclasses import dataclass

MISSING = "—"

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
_RECALL_STDERR = re.compile(r"^image_retrieval_recall@(\d+)_stderr$")  # by group, where texts come in groups

# Metrics are listed in this order within a (task, dataset, mode); recall@K sorts by K.
_METRIC_ORDER = ("acc1", "acc5", "mean_per_class_recall")
_METRIC_NAMES = {"acc1": "acc@1", "acc5": "acc@5", "mean_per_class_recall": "mean per-class recall",
                 "group_image_retrieval_acc": "text→image group score",
                 "group_text_retrieval_acc": "image→text group score",
                 "group_image_retrieval_chance": "text→image group score, chance",
                 "group_text_retrieval_chance": "image→text group score, chance",
                 "group_image_retrieval_stderr": "text→image group score, 1 s.e. by group"}


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


def chance_level(entry: dict | None, name: str) -> float | None:
    """What guessing scores on metric ``name`` of one result row, from the row's counts.

    acc@K and mean per-class recall: K / classes (1 / classes); text->image R@K: K / images, each
    text having one right image; for a multilingual row, the mean over languages of each one's
    chance (a language is scored against the images it names). None when the counts do not say.
    """
    per_language = (entry or {}).get("images_per_language")
    if per_language and (m := _RECALL.match(name)) and m.group(1) == "image":
        k = int(m.group(2))
        return sum(min(1.0, k / n) for n in per_language.values()) / len(per_language)
    counts = (entry or {}).get("counts", {})
    k = None
    if name == "mean_per_class_recall":
        n, k = counts.get("classes"), 1
    elif name.startswith("acc") and name[3:].isdigit():
        n, k = counts.get("classes"), int(name[3:])
    elif (m := _RECALL.match(name)) and m.group(1) == "image":
        n, k = counts.get("images"), int(m.group(2))
    else:
        return None
    return min(1.0, k / n) if isinstance(n, int) and n > 0 else None


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
    if stderr := _RECALL_STDERR.match(name):
        return f"text→image R@{stderr.group(1)}, 1 s.e. by group"
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


def _line(keys: tuple[str, ...], values: list[float | None], rank: bool = True) -> _Line:
    """A row of figures; ``rank=False`` for one that is not a score (a chance level, a standard
    error), where no value is best and a difference means nothing."""
    shown = [_pct(v) for v in values]
    if not rank:
        return _Line(keys, tuple(shown), (False,) * len(shown), "" if len(values) >= 2 else None)
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
            lines.append(_line((_task_name(group.task), group.title, metric_name(name)), values,
                               rank=not name.endswith(("_chance", "_stderr"))))
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
