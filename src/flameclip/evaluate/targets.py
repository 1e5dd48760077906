"""The demo's headline: what FLAME should win at this size, checked against the measured results.

Each target reads figures from a results dict (the one ``flameclip eval`` and the demo write) for
two checkpoints, FLAME and CLIP, and says whether the rule holds. Chance is printed beside every
figure, and so is one standard error, so a reader can tell a lead from noise. The rules are the
paper's claims at this scale: frozen LLM text generalises across phrasing, across languages and
past CLIP's 77-token context, while staying level where CLIP is strong.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from .tables import T2I, _metric, _pct, chance_level


@dataclass
class Target:
    name: str  # what is measured
    metric: str  # how, in words
    flame: float | None  # fractions in [0, 1]
    clip: float | None
    chance: float | None
    n: int  # queries behind each figure (for the standard error)
    rule: str  # the claim, in words
    met: bool | None  # None: a figure is missing
    se: float | None = None  # one standard error measured with the figures (hard-negative sets: by group)

    @property
    def stderr(self) -> float | None:
        if self.se is not None:
            return self.se
        if self.flame is None or self.clip is None or not self.n:
            return None
        return stderr(self.flame, self.clip, self.n)


def stderr(a: float, b: float, n: int) -> float:
    """One standard error of a proportion near a and b over n queries: sqrt(p (1 - p) / n), p their mean."""
    p = (a + b) / 2
    return math.sqrt(max(p * (1 - p), 1e-12) / max(n, 1))


def _row(results: dict, label: str, task: str, dataset: str) -> dict | None:
    for r in results.get("results", []):
        if r["checkpoint"] == label and r["task"] == task and r["dataset"] == dataset:
            return r
    return None


def _non_english_mean(row: dict | None, name: str) -> float | None:
    if row is None or "per_language" not in row:
        return None
    values = [m[name] for lang, m in row["per_language"].items() if lang != "en"]
    return sum(values) / len(values) if values else None


def _both(fn, results, flame, clip, *args):
    return fn(_row(results, flame, *args[:2]), *args[2:]), fn(_row(results, clip, *args[:2]), *args[2:])


def _either_row(results, flame, clip, task, dataset) -> dict | None:
    """FLAME's row, else CLIP's: for what both share (the set's counts and chance)."""
    return _row(results, flame, task, dataset) or _row(results, clip, task, dataset)


def _chance(results, flame, clip, task, dataset, name) -> float | None:
    """Chance on a metric, from the counts of either model's row (both score the same set)."""
    return chance_level(_either_row(results, flame, clip, task, dataset), name)


def evaluate_targets(results: dict, flame: str = "FLAME", clip: str = "CLIP") -> list[Target]:
    """The demo's targets, each with both figures, chance and whether it is met."""
    out: list[Target] = []

    def add(name, metric, f, c, chance, n, rule, check, se=None):
        met = None if f is None or c is None else bool(check(f, c))
        out.append(Target(name, metric, f, c, chance, n, rule, met, se))

    multi = _row(results, flame, "multilingual", "emoji-names")
    if multi is not None and "en" in multi.get("per_language", {}):
        en_f = multi["per_language"]["en"][T2I + "1"]
        en_c = (_row(results, clip, "multilingual", "emoji-names") or {}).get("per_language", {}).get("en", {}).get(T2I + "1")
        n_en = _counts(results, "emoji-names", "images")
        add("glyph name -> image (English)", "text→image R@1", en_f, en_c, 1 / n_en if n_en else None, n_en or 0,
            "FLAME >= 30%", lambda f, c: f >= 0.30)
    f, c = _both(_non_english_mean, results, flame, clip, "multilingual", "emoji-names", T2I + "1")
    n_img = _counts(results, "emoji-names", "images")
    add("glyph names in the other languages", "mean text→image R@1", f, c, 1 / n_img if n_img else None, n_img or 0,
        "FLAME >= 3x CLIP", lambda f, c: f >= 3 * c and f > 0)
    f, c = _both(_metric, results, flame, clip, "zeroshot", "emoji-glyphs", "acc1")
    add("zero-shot glyph names", "acc@1", f, c, _chance(results, flame, clip, "zeroshot", "emoji-glyphs", "acc1"),
        _counts(results, "emoji-glyphs", "images") or 0, "FLAME ahead", lambda f, c: f > c)
    for dataset, label, wide in (("scenes-long", "long captions, hard negatives", False),
                                 ("scenes-novel-phrasing", "long captions in unseen phrasing", True)):
        n = _counts(results, dataset, "texts") or 0
        for k in (1, 5):
            f, c = _both(_metric, results, flame, clip, "retrieval", dataset, T2I + str(k))
            se = _group_stderr(results, flame, clip, dataset, f"{T2I}{k}_stderr")
            rule = "FLAME ahead by > 2 s.e." if wide else "FLAME ahead"
            add(label, f"text→image R@{k}", f, c, _chance(results, flame, clip, "retrieval", dataset, T2I + str(k)), n,
                rule,
                (lambda f, c, n=n, se=se: f - c > 2 * (se or stderr(f, c, n))) if wide else (lambda f, c: f > c), se)
        f, c = _both(_metric, results, flame, clip, "retrieval", dataset, "group_image_retrieval_acc")
        chance = _metric(_either_row(results, flame, clip, "retrieval", dataset), "group_image_retrieval_chance")
        se = _group_stderr(results, flame, clip, dataset, "group_image_retrieval_stderr")
        add(label, "group score (caption picks its image in its group)", f, c, chance, n,
            "FLAME ahead by > 2 s.e.", lambda f, c, n=n, se=se: f - c > 2 * (se or stderr(f, c, n)), se)
    f, c = _both(_metric, results, flame, clip, "retrieval", "scenes-short", T2I + "1")
    n = _counts(results, "scenes-short", "texts") or 0
    add("short captions", "text→image R@1", f, c, _chance(results, flame, clip, "retrieval", "scenes-short", T2I + "1"), n,
        "FLAME not behind by > 1 s.e.", lambda f, c, n=n: c - f <= stderr(f, c, n))
    f, c = _both(_metric, results, flame, clip, "linear_probe", "fashion-mnist-probe", "acc1")
    if f is not None or c is not None:
        n = _counts(results, "fashion-mnist-probe", "test") or 0
        chance = _chance(results, flame, clip, "linear_probe", "fashion-mnist-probe", "acc1")
        add("Fashion-MNIST linear probe", "acc@1", f, c, chance, n, "FLAME not behind by > 1 s.e.",
            lambda f, c, n=n: c - f <= stderr(f, c, n))
    return out


def _group_stderr(results: dict, flame: str, clip: str, dataset: str, name: str) -> float | None:
    """The larger of the two models' standard errors ``name`` measured by group, or None where either
    lacks it. The captions of one hard-negative group are not independent draws, so a standard error
    over all captions (``stderr``) understates the noise (metrics.cluster_stderr)."""
    se = [x for x in _both(_metric, results, flame, clip, "retrieval", dataset, name) if x is not None]
    return max(se) if len(se) == 2 else None


def _counts(results: dict, dataset: str, key: str) -> int | None:
    for r in results.get("results", []):
        if r["dataset"] == dataset and key in r.get("counts", {}):
            return int(r["counts"][key])
    return None


def targets_table(targets: list[Target], markdown: bool = False) -> str:
    """The targets as a table: figure, FLAME, CLIP, chance, one standard error, the rule, met."""
    header = ["target", "figure", "FLAME", "CLIP", "chance", "1 s.e.", "rule", "met"]
    rows = [[t.name, t.metric, _pct(t.flame), _pct(t.clip), _pct(t.chance), _pct(t.stderr), t.rule,
             {True: "yes", False: "NO", None: "—"}[t.met]] for t in targets]
    if markdown:
        lines = ["| " + " | ".join(header) + " |", "|" + "|".join(["---"] * 2 + ["---:"] * 4 + ["---"] * 2) + "|"]
        lines += ["| " + " | ".join(r) + " |" for r in rows]
        return "\n".join(lines) + ("\n\nValues in %; 1 s.e. is one standard error of a proportion near these figures "
                                   "(for the hard-negative sets: by group, the larger of the two models').\n")
    widths = [max(len(x) for x in col) for col in zip(header, *rows)]
    render = lambda cells: "  ".join(c.ljust(w) if i in (0, 1, 6, 7) else c.rjust(w)  # noqa: E731
                                     for i, (c, w) in enumerate(zip(cells, widths))).rstrip()
    met = sum(t.met is True for t in targets)
    return "\n".join([render(header), "  ".join("-" * w for w in widths), *map(render, rows),
                      f"\n{met} of {len(targets)} targets met; values in %"]) + "\n"
