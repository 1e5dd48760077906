"""Recall while training: fixed image sets scored against their own captions, for learning curves.

A learning curve puts recall on images the model trains on beside recall on held-out images of the
same kind. Memorising shows at a glance: the first climbs to 100% while the second stalls or falls.

Both model kinds read exactly the texts they were trained on, so no LLM runs during training:
FLAME the stored rows of a caption column, averaged over the column's facets as inference averages
a query's facets; the CLIP baseline the caption of that column, tokenised. Each set holds at most
``max_images`` images (the first ones of its manifest), decoded once and kept as pixels.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path

import torch

from ..data.images import UNREADABLE, DataError, ImageRecord


@dataclass
class RecallSet:
    name: str  # "train" or "val"
    pixels: torch.Tensor  # [N, 3, H, W], the evaluation transform applied
    texts: dict[str, torch.Tensor]  # column -> FLAME: [N, D] mean stored rows; CLIP: [N, L] token ids


def build_recall_set(name: str, dataset, columns: list[str], max_images: int) -> RecallSet:
    """The first ``max_images`` readable images of ``dataset`` (an ImageTextDataset) and their texts."""
    from ..data.images import CaptionTokens, StoreText, open_record

    records: list[ImageRecord] = []
    pixels = []
    for rec in dataset.records:
        if len(records) >= max_images:
            break
        try:
            image = open_record(rec)  # the image itself, never one of its views
        except UNREADABLE:  # left out here; training reports it
            continue
        records.append(rec)
        pixels.append(dataset.transform(image))
    if not records:
        raise DataError(f"no readable image among the first records of the {name} recall set "
                        f"({dataset.records[0].path}, ...): check its manifest and image_root")
    text = dataset.text
    texts = {}
    for col in columns:
        if isinstance(text, StoreText):
            lo, hi = text.store.columns[col]
            texts[col] = torch.from_numpy(text.store.get_many([r.id for r in records])[:, lo:hi].mean(axis=1))
        elif isinstance(text, CaptionTokens):
            k = text.columns.index(col)
            texts[col] = text.tokenizer([text.by_id[r.id][k] for r in records])
        else:  # pragma: no cover - the two text sources above are all training knows
            raise TypeError(f"no recall texts for {type(text).__name__}")
    return RecallSet(name, torch.stack(pixels), texts)


@torch.no_grad()
def recall(model, rs: RecallSet, device, batch_size: int = 64) -> dict[str, float]:
    """Text-to-image R@1 and R@5 and image-to-text R@1 per column, keyed ``{set}/{column}/{metric}``."""
    was_training = model.training
    model.eval()
    img = torch.cat([model.encode_image(rs.pixels[i : i + batch_size].to(device)).float()
                     for i in range(0, len(rs.pixels), batch_size)])
    out = {}
    target = torch.arange(len(img), device=img.device)
    for col, t in rs.texts.items():
        txt = torch.cat([model.encode_text(t[i : i + batch_size].to(device)).float()
                         for i in range(0, len(t), batch_size)])
        sim = txt @ img.T  # [texts, images]
        top5 = sim.topk(min(5, sim.shape[1]), dim=1).indices
        out[f"{rs.name}/{col}/t2i_r1"] = (sim.argmax(1) == target).float().mean().item()
        out[f"{rs.name}/{col}/t2i_r5"] = (top5 == target[:, None]).any(1).float().mean().item()
        out[f"{rs.name}/{col}/i2t_r1"] = (sim.argmax(0) == target).float().mean().item()
    model.train(was_training)
    return out


def start_csv(path: Path, fields: list[str], resume_step: int | None) -> None:
    """Start an append-only per-step CSV: empty, or on resume its rows up to ``resume_step`` (a
    resumed run writes the later steps again, so they must not appear twice)."""
    rows = []
    if resume_step is not None and path.exists():
        with open(path, newline="") as f:
            rows = [r for r in csv.DictReader(f) if int(r["step"]) <= resume_step]
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=fields)
        w.writeheader()
        w.writerows(rows)


class CurveLog:
    """``curves.csv`` in a run folder: one row per (step, set, column) with its recall figures."""

    fields = ["step", "set", "column", "images", "t2i_r1", "t2i_r5", "i2t_r1"]

    def __init__(self, out: Path, resume_step: int | None):
        self.path = Path(out) / "curves.csv"
        start_csv(self.path, self.fields, resume_step)

    def log(self, step: int, sizes: dict[str, int], result: dict[str, float]) -> None:
        by_key: dict[tuple[str, str], dict] = {}
        for key, v in result.items():
            s, col, metric = key.split("/")
            by_key.setdefault((s, col), {"step": step, "set": s, "column": col, "images": sizes[s]})[metric] = v
        with open(self.path, "a", newline="") as f:
            csv.DictWriter(f, fieldnames=self.fields).writerows(by_key.values())


def read_curves(path: str | Path) -> list[dict]:
    """The rows of a ``curves.csv`` with numbers as numbers."""
    with open(path, newline="") as f:
        return [{k: (v if k in ("set", "column") else float(v)) for k, v in r.items()} for r in csv.DictReader(f)]


def plot_learning_curves(runs: dict[str, str | Path], png: str | Path, metric: str = "t2i_r1") -> Path | None:
    """One panel per caption column: training and held-out recall against step, every run on it.

    ``runs`` maps a label (FLAME, CLIP) to its ``curves.csv``. Solid lines are training images,
    dashed lines held-out ones; the dotted grey line is chance (1 / images). A run whose
    training line climbs while its held-out line stays flat or falls is memorising.
    """
    data = {label: read_curves(p) for label, p in runs.items() if Path(p).exists()}
    data = {k: v for k, v in data.items() if v}
    if not data:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    columns = sorted({r["column"] for rows in data.values() for r in rows})
    fig, axes = plt.subplots(1, len(columns), figsize=(4.2 * len(columns), 4.0), squeeze=False,
                             layout="constrained")
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for ax, col in zip(axes[0], columns):
        chance = None
        for c, (label, rows) in enumerate(data.items()):
            for s, style in (("train", "-"), ("val", "--")):
                pts = sorted((r["step"], 100 * r[metric]) for r in rows if r["column"] == col and r["set"] == s)
                if pts:
                    ax.plot(*zip(*pts), style, color=colours[c % len(colours)], marker=".",
                            label=f"{label} {'training' if s == 'train' else 'held-out'}")
            sizes = [r["images"] for r in rows if r["column"] == col and r["set"] == "val"]
            chance = 100 / sizes[0] if sizes else chance
        if chance is not None:
            ax.axhline(chance, color="grey", linestyle=":", label=f"held-out chance ({chance:.1f}%)")
        ax.set_title(f"caption column '{col}'")
        ax.set_xlabel("optimiser step")
        ax.set_ylabel(f"text->image {'R@1' if metric.endswith('r1') else 'R@5'} (%)")
        ax.set_ylim(0, 100)
        ax.grid(alpha=0.3)
    # Below the panels, not on them: inside, it hid the early training curve.
    handles, labels = axes[0][0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="outside lower center", ncol=min(len(handles), 3), fontsize=8, frameon=False)
    png = Path(png)
    fig.savefig(png, dpi=110)
    plt.close(fig)
    return png
