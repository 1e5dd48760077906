"""What a training run writes as it goes: metrics.csv, TensorBoard events and loss_curve.png."""

from __future__ import annotations

import csv
from pathlib import Path

from .evaluate.curves import start_csv




class MetricsLog:
    """metrics.csv (append-only, rows past a resumed step dropped) and TensorBoard events."""

    fields = ["step", "epoch", "loss", "lr", "logit_scale", "logit_bias", "images_per_s", "skipped_images"]

    def __init__(self, out: Path, resume_step: int | None):
        self.path = out / "metrics.csv"
        start_csv(self.path, self.fields, resume_step)
        self.tb = None
        try:
            from torch.utils.tensorboard import SummaryWriter

            self.tb = SummaryWriter(str(out / "tensorboard"))
        except ImportError:  # pragma: no cover - tensorboard is a dependency, but keep training without it
            pass

    def log(self, row: dict) -> None:
        with open(self.path, "a", newline="") as f:
            csv.DictWriter(f, fieldnames=self.fields).writerow(row)
        if self.tb is not None:
            for k, v in row.items():
                if k not in ("step", "epoch"):
                    self.tb.add_scalar(f"train/{k}", v, row["step"])

    def close(self) -> None:
        if self.tb is not None:
            self.tb.close()


def plot_losses(out: Path) -> Path | None:
    """loss_curve.png from metrics.csv (loss and learning rate against step)."""
    path = out / "metrics.csv"
    if not path.exists():
        return None
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    if not rows:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    steps = [int(r["step"]) for r in rows]
    fig, ax = plt.subplots(figsize=(7, 4))
    ax.plot(steps, [float(r["loss"]) for r in rows], color="tab:blue", label="loss")
    ax.set_xlabel("step")
    ax.set_ylabel("training loss")
    ax.grid(alpha=0.3)
    ax2 = ax.twinx()
    ax2.plot(steps, [float(r["lr"]) for r in rows], color="tab:orange", alpha=0.6, label="learning rate")
    ax2.set_ylabel("learning rate")
    handles = ax.get_lines() + ax2.get_lines()
    ax.legend(handles, [h.get_label() for h in handles], loc="center right")
    ax.set_title(out.name)
    fig.tight_layout()
    png = out / "loss_curve.png"
    fig.savefig(png, dpi=120)
    plt.close(fig)
    return png
