"""The evaluation tasks, each a function of a loaded model and a dataset returning a result row.

Image features are computed once per (model, dataset) and reused across tasks; text features
come through :class:`flameclip.inference.FlameCLIP`, whose LLM outputs are cached on disk.
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass, field
from pathlib import Path

import torch

from ..data.images import DataError
from ..inference import FlameCLIP
from .datasets import RetrievalSet, iterate_images, load_classification, load_retrieval
from .metrics import group_scores, linear_probe, retrieval_metrics, zero_shot_metrics

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
    options: dict = field(default_factory=dict)


def load_suite(path: str | Path) -> list[TaskSpec]:
    """An evaluation suite: a TOML file with ``[[task]]`` tables (task, name, path, ...)."""
    p = Path(path)
    if not p.exists():
        raise FileNotFoundError(f"{p}: evaluation suite not found")
    data = tomllib.loads(p.read_text(encoding="utf-8"))
    specs = []
    for i, t in enumerate(data.get("task", [])):
        if t.get("task") not in TASKS:
            raise ValueError(f"{p}: task {i + 1} has task = {t.get('task')!r}; choose one of {', '.join(TASKS)}")
        known = set(TaskSpec.__dataclass_fields__)
        extra = {k: v for k, v in t.items() if k not in known}
        spec = TaskSpec(**{k: v for k, v in t.items() if k in known}, options=extra)
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
        metrics = retrieval_metrics(img, txt, torch.tensor(ds.text_to_image))
        if ds.image_groups is not None:
            metrics.update(group_scores(img, txt, ds.text_to_image, ds.image_groups))
        return metrics

    def retrieval(self, spec: TaskSpec) -> dict:
        ds = load_retrieval(spec.name, spec.path)
        return {"mode": spec.mode, "metrics": self._retrieval(ds, spec.mode), "counts": ds.counts()}

    def multilingual(self, spec: TaskSpec) -> dict:
        """Per language: that language's queries against the images they describe; then the mean."""
        ds = load_retrieval(spec.name, spec.path, language_column=spec.language_column)
        per = {}
        for lang in sorted(set(ds.languages)):
            idx = [i for i, l in enumerate(ds.languages) if l == lang]
            used = sorted({ds.text_to_image[i] for i in idx})
            remap = {g: j for j, g in enumerate(used)}
            sub = RetrievalSet(f"{ds.name}/{lang}", [ds.images[g] for g in used], [ds.texts[i] for i in idx],
                               [remap[ds.text_to_image[i]] for i in idx])
            per[lang] = self._retrieval(sub, spec.mode)
        keys = next(iter(per.values())).keys()
        mean = {k: sum(v[k] for v in per.values()) / len(per) for k in keys}
        return {"mode": spec.mode, "metrics": mean, "per_language": per, "counts": ds.counts()}

    def linear_probe(self, spec: TaskSpec) -> dict:
        tr = load_classification(spec.name, spec.train, spec.classnames)
        te = load_classification(spec.name, spec.test, tr.classnames)
        res = linear_probe(self.image_features(tr.images, pooled=True), torch.tensor(tr.labels),
                           self.image_features(te.images, pooled=True), torch.tensor(te.labels))
        metrics = {k: res[k] for k in ("acc1", "mean_per_class_recall")}
        return {"metrics": metrics, "counts": {"train": len(tr.images), "test": len(te.images)},
                "details": {"best_C": res.get("best_C")}}

    def run(self, spec: TaskSpec) -> dict:
        if spec.task not in TASKS:
            raise DataError(f"unknown task '{spec.task}'")
        row = getattr(self, spec.task)(spec)
        return {"task": spec.task, "dataset": spec.name, **row}
