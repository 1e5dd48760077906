"""The evaluation tasks, each a function of a loaded model and a dataset returning a result row.

Image features are computed once per (model, dataset) and reused across tasks; text features
come through :class:`flameclip.inference.FlameCLIP`, whose LLM outputs are cached on disk.
"""

from __future__ import annotations

import difflib
import time
import tomllib
from dataclasses import dataclass, fields
from pathlib import Path

import torch

from ..data.images import DataError
from ..inference import FlameCLIP
from .datasets import RetrievalSet, iterate_images, load_classification, load_retrieval
from .metrics import group_scores, linear_probe, retrieval_metrics, zero_shot_metrics
from .results import RESULTS_FORMAT, Results  # noqa: F401 - RESULTS_FORMAT re-exported

TASKS = ("zeroshot", "retrieval", "multilingual", "linear_probe")


@dataclass
class TaskSpec:
    task: str
    name: str
    path: str = ""
    mode: str = "single"  # prompt set for text queries: single | short3 | long7
    templates: list[str] | None = None  # zero-shot templates with "{}"; None: the 80 CLIP ImageNet templates
    classnames: list[str] | None = None
    train: str = ""  # linear probe
    test: str = ""
    language_column: str = "language"


# What each task cannot run without.
REQUIRED = {"zeroshot": ("path",), "retrieval": ("path",), "multilingual": ("path",), "linear_probe": ("train", "test")}


def _check_task(p: Path, i: int, t: dict) -> None:
    """One line naming the task and the key for every mistake a hand-written suite can hold."""
    where = f"{p}: task {i + 1}" + (f" ({t['name']!r})" if isinstance(t.get("name"), str) else "")
    if t.get("task") not in TASKS:
        raise ValueError(f"{where} has task = {t.get('task')!r}; choose one of {', '.join(TASKS)}")
    known = [f.name for f in fields(TaskSpec)]
    for key in t:
        if key not in known:
            close = difflib.get_close_matches(key, known, n=1)
            hint = f"; did you mean '{close[0]}'?" if close else f"; known keys: {', '.join(known)}"
            raise ValueError(f"{where}: unknown key '{key}'{hint}")
    if not isinstance(t.get("name"), str) or not t["name"].strip():
        raise ValueError(f"{where}: needs name = \"...\" (the dataset's name in the results)")
    for key in REQUIRED[t["task"]]:
        if not isinstance(t.get(key), str) or not t[key].strip():
            raise ValueError(f"{where}: a {t['task']} task needs {key} = \"...\" (relative to the suite's folder)")
    types = {"mode": str, "language_column": str, "templates": list, "classnames": list}
    for key, tp in types.items():
        if key in t and not isinstance(t[key], tp):
            raise ValueError(f"{where}: {key} must be a {tp.__name__}, got {t[key]!r}")
    for key in ("templates", "classnames"):
        if key in t and not all(isinstance(x, str) for x in t[key]):
            raise ValueError(f"{where}: every entry of {key} must be a string")


def load_suite(path: str | Path) -> list[TaskSpec]:
    """An evaluation suite: a TOML file with ``[[task]]`` tables (task, name, path, ...)."""
    p = Path(path)
    if not p.exists():
        raise FileNotFoundError(f"{p}: evaluation suite not found")
    try:
        data = tomllib.loads(p.read_text(encoding="utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f"{p}: not valid TOML ({e})") from None
    unknown = sorted(set(data) - {"task"})
    if unknown:
        raise ValueError(f"{p}: unknown top-level key(s) {', '.join(unknown)}; a suite holds only [[task]] tables")
    tasks = data.get("task", [])
    if not isinstance(tasks, list) or not all(isinstance(t, dict) for t in tasks):
        raise ValueError(f"{p}: 'task' must be [[task]] tables")
    specs = []
    for i, t in enumerate(tasks):
        _check_task(p, i, t)
        spec = TaskSpec(**t)
        for key in ("path", "train", "test"):  # relative paths start at the suite's folder
            v = getattr(spec, key)
            if v and not Path(v).is_absolute():
                setattr(spec, key, str(p.parent / v))
        specs.append(spec)
    if not specs:
        raise ValueError(f"{p}: no [[task]] tables")
    return specs


class Evaluator:
    """Runs task specs against one model, caching image features per image list."""

    def __init__(self, model: FlameCLIP, batch_size: int = 64, workers: int = 0):
        self.m, self.batch_size, self.workers = model, batch_size, workers
        self._features: dict[tuple, torch.Tensor] = {}

    def image_features(self, paths: list[str], pooled: bool = False) -> torch.Tensor:
        key = (tuple(paths), pooled)
        if key not in self._features:
            feats = []
            for x, _ in iterate_images(paths, self.m.preprocess, self.batch_size, self.workers):
                feats.append(self.m.pooled_features(x) if pooled else self.m.encode_image(x))
            self._features[key] = torch.cat(feats)
        return self._features[key]

    # -------------------------------------------------------------- tasks
    def zeroshot(self, spec: TaskSpec) -> dict:
        ds = load_classification(spec.name, spec.path, spec.classnames)
        weights = self.m.zero_shot_classifier(ds.classnames, spec.templates)
        logits = self.image_features(ds.images) @ weights.T
        return {"metrics": zero_shot_metrics(logits, torch.tensor(ds.labels)), "counts": ds.counts()}

    def _retrieval(self, ds: RetrievalSet, mode: str) -> dict:
        img = self.image_features(ds.images)
        txt = self.m.encode_text(ds.texts, mode=mode)
        groups = None if ds.image_groups is None else [ds.image_groups[i] for i in ds.text_to_image]
        metrics = retrieval_metrics(img, txt, torch.tensor(ds.text_to_image), text_groups=groups)
        if ds.image_groups is not None:
            metrics.update(group_scores(img, txt, ds.text_to_image, ds.image_groups))
        return metrics

    def retrieval(self, spec: TaskSpec) -> dict:
        ds = load_retrieval(spec.name, spec.path)
        return {"mode": spec.mode, "metrics": self._retrieval(ds, spec.mode), "counts": ds.counts()}

    def multilingual(self, spec: TaskSpec) -> dict:
        """Per language: that language's queries against the images they describe; then the mean."""
        ds = load_retrieval(spec.name, spec.path, language_column=spec.language_column)
        per, images_per_language = {}, {}
        for lang in sorted(set(ds.languages)):
            idx = [i for i, l in enumerate(ds.languages) if l == lang]
            used = sorted({ds.text_to_image[i] for i in idx})
            remap = {g: j for j, g in enumerate(used)}
            sub = RetrievalSet(f"{ds.name}/{lang}", [ds.images[g] for g in used], [ds.texts[i] for i in idx],
                               [remap[ds.text_to_image[i]] for i in idx])
            per[lang] = self._retrieval(sub, spec.mode)
            images_per_language[lang] = len(used)  # what each language's chance is read from
        keys = next(iter(per.values())).keys()
        mean = {k: sum(v[k] for v in per.values()) / len(per) for k in keys}
        return {"mode": spec.mode, "metrics": mean, "per_language": per, "counts": ds.counts(),
                "images_per_language": images_per_language}

    def linear_probe(self, spec: TaskSpec) -> dict:
        tr = load_classification(spec.name, spec.train, spec.classnames)
        te = load_classification(spec.name, spec.test, tr.classnames)
        res = linear_probe(self.image_features(tr.images, pooled=True), torch.tensor(tr.labels),
                           self.image_features(te.images, pooled=True), torch.tensor(te.labels))
        metrics = {k: res[k] for k in ("acc1", "mean_per_class_recall")}
        return {"metrics": metrics, "counts": {"train": len(tr.images), "test": len(te.images),
                                                "classes": len(tr.classnames)},
                "details": {"best_C": res.get("best_C")}}

    def run(self, spec: TaskSpec) -> dict:
        if spec.task not in TASKS:
            raise DataError(f"unknown task '{spec.task}'")
        row = getattr(self, spec.task)(spec)
        return {"task": spec.task, "dataset": spec.name, **row}


def new_results() -> Results:
    """Empty results, the shape ``report.py`` reads."""
    return Results()


def run_suite(models, specs: list[TaskSpec], results: Results | None = None, batch_size: int = 64, workers: int = 0,
              log=None, after_task=None) -> Results:
    """Every task of ``specs`` against every model: the one evaluation loop of eval, demo and ablate.

    ``models`` yields (label, checkpoint path, FlameCLIP); a generator may load each model only
    when its turn comes, so that one model at a time is in memory. Rows are appended to
    ``results`` (a new dict if None), which is returned. ``log(line)`` is called before every task;
    ``after_task(results)`` after it, e.g. to write the report so far (an error later then loses
    nothing finished).
    """
    results = Results() if results is None else results
    for label, path, m in models:
        results.checkpoints.append({"label": label, "path": str(path), "text_tower": m.cfg.text_tower,
                                       "llm": (m.cfg.llm or {}).get("llm")})
        ev = Evaluator(m, batch_size=batch_size, workers=workers)
        for spec in specs:
            if log is not None:
                log(f"[{label}] {spec.task}: {spec.name}")
            t0 = time.perf_counter()
            row = ev.run(spec)
            results.rows.append({"checkpoint": label, **row, "seconds": round(time.perf_counter() - t0, 2)})
            if after_task is not None:
                after_task(results)
    return results
