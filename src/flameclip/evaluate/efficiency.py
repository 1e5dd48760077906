"""The data-efficiency figure: FLAME trained on a fraction of the scenes against CLIP on all of them.

The paper's claim is that FLAME on less data matches CLIP on all of it. Every FLAME run here gets
the same number of optimiser steps, so the fraction of distinct scenes is the only thing that
changes. One panel per headline metric: FLAME's figure against the fraction it saw, CLIP's at 100%
as a dashed line, chance as a dotted one.
"""

from __future__ import annotations

from pathlib import Path

from .targets import evaluate_targets


def plot_data_efficiency(results: dict, fractions: dict[str, float], png: str | Path, clip: str = "CLIP",
                         metrics: tuple[tuple[str, str], ...] = ()) -> Path | None:
    """``fractions`` maps FLAME checkpoint labels to the share of scenes each trained on (0-1].

    ``metrics`` picks (target name, figure) pairs of ``evaluate_targets``; by default every target.
    """
    per_label = {label: {(t.name, t.metric): t for t in evaluate_targets(results, label, clip)}
                 for label in fractions}
    first = next(iter(per_label.values()), {})
    keys = [k for k in (metrics or first.keys()) if k in first and first[k].clip is not None]
    if not keys or len(fractions) < 2:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cols = min(4, len(keys))
    rows = (len(keys) + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(3.4 * cols, 2.9 * rows), squeeze=False)
    order = sorted(fractions, key=fractions.get)
    for ax, key in zip(axes.flat, keys):
        pts = [(100 * fractions[lab], per_label[lab][key].flame) for lab in order if per_label[lab][key].flame is not None]
        if pts:
            ax.plot([x for x, _ in pts], [100 * y for _, y in pts], "o-", color="tab:blue", label="FLAME")
        t = first[key]
        ax.axhline(100 * t.clip, color="tab:orange", linestyle="--", label="CLIP, 100% of scenes")
        if t.chance is not None:
            ax.axhline(100 * t.chance, color="grey", linestyle=":", label="chance")
        ax.set_title(f"{key[0]}\n{key[1]}", fontsize=8)
        ax.set_xlabel("% of training scenes (same steps)", fontsize=8)
        ax.set_ylabel("%", fontsize=8)
        ax.set_xlim(0, 105)
        ax.grid(alpha=0.3)
    for ax in list(axes.flat)[len(keys):]:
        ax.axis("off")
    axes[0][0].legend(fontsize=7)
    fig.tight_layout()
    png = Path(png)
    fig.savefig(png, dpi=110)
    plt.close(fig)
    return png
