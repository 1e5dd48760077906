"""Word maps: read what each image region "says" through the frozen LLM's own output head.

FLAME's projector maps every ViT patch token into the LLM's hidden space, so a projected token can
be decoded like an LLM hidden state: final norm, then ``lm_head``, then a softmax over the
vocabulary (the paper's "semantic interpretability"). Following the paper, the patch tokens are
first average-pooled in non-overlapping windows of 2x2 and 4x4 patches, which gives one word list
per image region.

Pipeline for one image::

    patch tokens [N, D] --reshape--> [g, g, D] (row-major, as the ViT flattens its patches)
      --average pool, window w, stride w--> [g//w, g//w, D]
      --final norm (default on)--> lm_head --> softmax --> top-k readable words

Final norm. FLAME's text target is the hidden state of the second-to-last layer *before* the final
norm, so the image tokens are trained to look like un-normed states. ``lm_head``, however, was only
ever trained on normed states. The final norm is an RMSNorm: a per-token rescale (which changes
the softmax temperature but never the ranking) followed by per-dimension gains, which are far from 1
(SmolLM2-135M's range from about -2 to +3). Skipping the norm would therefore read ``lm_head``
along directions it never saw. So word maps apply the final norm by default, exactly as the LLM does
when it predicts a word from a hidden state ("logit lens"); ``apply_norm=False`` / ``--no-norm``
reads the raw tokens, for comparison.

The LLM must be the checkpoint's own, checked by weights hash: another LLM's head would give
confident nonsense. How its head is loaded and which tokens count as words: ``text/readout.py``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

# Re-exported: the readout is the LLM side of a word map.
from .text.readout import ExplainError, Readout, _load_head_modules, load_readout  # noqa: F401

DEFAULT_WINDOWS = (2, 4)  # the paper's pooling windows, in patches


@dataclass
class WordMap:
    grid: int  # regions per side after pooling
    window: int  # pooling window in patches (2 or 4)
    words: list[list[list[tuple[str, float]]]]  # [row][col] -> top-k (word, probability)
    # Patches per side of the image; larger than grid * window when the remainder was dropped.
    # None means grid * window (the windows tile the image exactly).
    patches: int | None = None

    @property
    def patch_grid(self) -> int:
        return self.patches or self.grid * self.window


def check_explainable(flame) -> None:
    """Refuse checkpoints whose image tokens are not in an LLM's hidden space."""
    cfg = flame.cfg
    if cfg.text_tower != "llm":
        raise ExplainError(
            f"word maps need a FLAME checkpoint (text_tower='llm'); this one is a CLIP baseline "
            f"(text_tower={cfg.text_tower!r}) whose image space belongs to no LLM"
        )
    if cfg.embed_dim is not None:
        raise ExplainError(
            f"this checkpoint compares images and texts in a learned {cfg.embed_dim}-d space (embed_dim is set), "
            f"not in the LLM's hidden space, so its image tokens cannot be read through the LLM's head"
        )
    if cfg.text_adapter_depth:
        raise ExplainError(
            f"this checkpoint passes the LLM states through a trained text adapter (text_adapter_depth="
            f"{cfg.text_adapter_depth}), so its image tokens are not in the LLM's hidden space and cannot be read "
            "through the LLM's head"
        )


def readout_for(flame) -> Readout:
    """The readout of the checkpoint's own LLM, refusing any other (checked by weights hash)."""
    check_explainable(flame)
    record = flame.cfg.llm or {}
    # The name the checkpoint was loaded with (load(..., llm=...) may point elsewhere on this machine).
    name = getattr(flame, "_llm_name", None) or record.get("llm")
    want = record.get("weights_sha256")
    if not name or not want:
        raise ExplainError("this checkpoint does not record its LLM's name and weights hash, so the LLM to read "
                           "its image tokens with cannot be checked")
    from .text.llm import resolve

    have = resolve(name).weights_sha256  # cheap: hashes are memoised; refuse before loading anything
    if have != want:
        raise ExplainError(f"LLM '{name}' is not the one this checkpoint was trained with "
                           f"(weights {have[:12]}... vs {want[:12]}...)")
    readout = load_readout(name)
    if readout.hidden_size != flame.cfg.text_dim:
        raise ExplainError(f"LLM '{name}' has width {readout.hidden_size}, the checkpoint's text_dim is "
                           f"{flame.cfg.text_dim}")
    return readout


# ------------------------------------------------------------------------------------- word maps


@torch.no_grad()
def _patch_tokens(flame, image) -> torch.Tensor:
    """Projected patch tokens [N, D] of one PIL image, preprocessed as at evaluation."""
    pixels = flame.preprocess(image.convert("RGB"))[None].to(flame.device)
    tokens = flame.model.image_tokens(pixels)[0].float().cpu()
    if flame.cfg.text_whiten:
        # Trained against whitened states x @ W: undo W (symmetric, eigenvalues floored, so invertible).
        w = flame.model.text_whitening.double().cpu()
        tokens = torch.linalg.solve(w, tokens.double().T).T.float()
    if flame.cfg.center_mode != "none":
        # The tokens were trained against centred text states: add the mean back to read them as
        # the LLM's own hidden states (with per-facet means, the single prompt's: a word map reads
        # regions as one-word answers).
        zero = torch.zeros(1, 1, tokens.shape[-1]).to(flame.model.text_mean)
        mean = flame.model.text_mean if flame.cfg.center_mode == "global" else -flame.model.center_states(zero, "single")[0, 0]
        tokens = tokens + mean.float().cpu()
    return tokens


def pool_tokens(tokens: torch.Tensor, window: int) -> torch.Tensor:
    """[N, D] patch tokens -> [r, r, D] means over non-overlapping window x window blocks.

    The ViT flattens its patch grid row by row, so token i sits at (i // g, i % g). When g is not a
    multiple of the window, the last g % window rows and columns are dropped (every region then
    averages the same number of patches); a window larger than the grid is refused.
    """
    n, d = tokens.shape
    g = math.isqrt(n)
    if g * g != n:
        raise ExplainError(f"{n} patch tokens do not form a square grid")
    if not 1 <= window <= g:
        raise ExplainError(f"a {window}x{window}-patch window does not fit the {g}x{g} patch grid")
    grid = tokens.reshape(g, g, d).permute(2, 0, 1)  # [D, g, g]: channels first for avg_pool2d
    pooled = F.avg_pool2d(grid[None], kernel_size=window, stride=window)[0]  # floor: drops the remainder
    return pooled.permute(1, 2, 0)


def word_maps(flame, image, windows=DEFAULT_WINDOWS, top_k: int = 5, apply_norm: bool = True,
              readout: Readout | None = None) -> list[WordMap]:
    """Top-k words per region of ``image`` for each pooling window, read through the checkpoint's LLM.

    ``flame`` is a :class:`flameclip.inference.FlameCLIP`, ``image`` a PIL image. ``apply_norm``
    applies the LLM's final norm before ``lm_head`` (default; see the module docstring for why).
    ``readout`` skips loading and checking the LLM (it must be the checkpoint's own).
    """
    if top_k < 1:
        raise ExplainError(f"top_k must be at least 1, got {top_k}")
    check_explainable(flame)
    readout = readout or readout_for(flame)
    tokens = _patch_tokens(flame, image)
    patches = math.isqrt(tokens.shape[0])
    maps = []
    for window in windows:
        pooled = pool_tokens(tokens, int(window))
        r = pooled.shape[0]
        probs = readout.probs(pooled.reshape(r * r, -1), apply_norm=apply_norm)
        cells = [readout.top_words(p, top_k) for p in probs]
        maps.append(WordMap(grid=r, window=int(window), words=[cells[i * r:(i + 1) * r] for i in range(r)],
                            patches=patches))
    return maps


def word_table(maps: list[WordMap]) -> str:
    """A printable table: for every window, region (row, col) -> top words with probabilities."""
    lines = []
    for m in maps:
        dropped = m.patch_grid - m.grid * m.window
        note = f" (last {dropped} patch rows/cols not covered)" if dropped else ""
        lines.append(f"window {m.window}x{m.window} patches: {m.grid}x{m.grid} regions{note}")
        for i, row in enumerate(m.words):
            for j, cell in enumerate(row):
                words = "  ".join(f"{w} {p:.3f}" for w, p in cell) or "-"
                lines.append(f"  ({i}, {j})  {words}")
        lines.append("")
    return "\n".join(lines).rstrip() + "\n"


# ------------------------------------------------------------------------------------- rendering


def _centre_square(image, side: int):
    """The region the model sees (short side resized, centre crop), at ``side`` pixels for display."""
    image = image.convert("RGB")
    w, h = image.size
    s = min(w, h)
    left, top = (w - s) // 2, (h - s) // 2
    return image.crop((left, top, left + s, top + s)).resize((side, side))


def _fit_font(word: str, cell_pt: float) -> tuple[str, float]:
    """A font size (points) at which ``word`` fits in a cell; very long words are shortened.

    0.68 em is about the mean advance of a bold DejaVu Sans letter (matplotlib's default font).
    """
    def fitting(w: str) -> float:
        return min(0.30 * cell_pt, 0.9 * cell_pt / (0.68 * max(len(w), 1)), 22.0)

    while fitting(word) < 7.5 and len(word) > 4:  # too long to read at any fitting size: shorten it
        word = word[: max(3, len(word) * 2 // 3)] + "…"
    return word, max(fitting(word), 6.0)


def render_word_map(image, maps: list[WordMap], path, title: str | None = None) -> Path:
    """Save a PNG: one panel per window, the image with its region grid and each region's top word.

    Text is white with a dark outline so it reads on any image; the probability is written under
    the word. Patches not covered by any window (grid not a multiple of the window) are hatched.
    """
    from matplotlib import patheffects
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.patches import Rectangle

    if not maps:
        raise ExplainError("no word maps to render")
    panel_px, dpi = 480, 100
    shown = _centre_square(image, panel_px)
    # The constrained layout keeps the suptitle clear of the panel titles.
    fig = Figure(figsize=(len(maps) * 5.0, 5.6), dpi=dpi, layout="constrained")
    FigureCanvasAgg(fig)
    for k, m in enumerate(maps):
        ax = fig.add_subplot(1, len(maps), k + 1)
        p = m.patch_grid
        # Axes in patch units: cell (i, j) spans rows i*w..(i+1)*w and columns j*w..(j+1)*w.
        ax.imshow(shown, extent=(0, p, p, 0), interpolation="lanczos")
        covered = m.grid * m.window
        line_style = dict(color="white", lw=1.2, alpha=0.9,
                          path_effects=[patheffects.withStroke(linewidth=2.4, foreground="black", alpha=0.5)])
        for t in range(m.grid + 1):
            x = t * m.window
            ax.plot([x, x], [0, covered], **line_style)
            ax.plot([0, covered], [x, x], **line_style)
        if covered < p:
            for box in ((covered, 0, p - covered, p), (0, covered, covered, p - covered)):
                ax.add_patch(Rectangle(box[:2], box[2], box[3], facecolor="black", alpha=0.45,
                                       hatch="//", edgecolor="white", lw=0))
        cell_pt = panel_px * m.window / p * 72 / dpi
        for i, row in enumerate(m.words):
            for j, cell in enumerate(row):
                if not cell:
                    continue
                word, prob = cell[0]
                text, size = _fit_font(word, cell_pt)
                centre = ((j + 0.5) * m.window, (i + 0.5) * m.window)
                small = max(size * 0.6, 6.0)
                # An outline as thick for small text as for large would swallow the letters.
                outline = [patheffects.withStroke(linewidth=min(3.0, max(1.5, size / 6)), foreground="black")]
                # Offsets in points keep the word and its probability together at any cell size.
                ax.annotate(text, centre, xytext=(0, small * 0.55), textcoords="offset points", ha="center",
                            va="center", color="white", fontsize=size, fontweight="bold", path_effects=outline)
                ax.annotate(f"{prob:.0%}", centre, xytext=(0, -size * 0.75), textcoords="offset points",
                            ha="center", va="center", color="white", fontsize=small, path_effects=outline)
        ax.set_xlim(0, p)
        ax.set_ylim(p, 0)
        ax.set_axis_off()
        ax.set_title(f"{m.window}×{m.window}-patch windows · {m.grid}×{m.grid} regions", fontsize=12)
    if title:
        fig.suptitle(title, fontsize=13)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=dpi, bbox_inches="tight", facecolor="white")
    return path
