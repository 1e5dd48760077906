"""Contact sheets: a PNG grid of search results, rank and score under each thumbnail, the query on top."""

from __future__ import annotations

import io
import math
import textwrap
from pathlib import Path

import numpy as np
from PIL import Image

from .fileio import UNREADABLE, atomic_write_bytes, open_rgb

THUMB = 256  # thumbnail pixels: enough to recognise an image in a grid cell
SHEET_COLUMNS = 5
TITLE_CHARS = 200
# Sheet geometry in inches (at 100 dpi): square image cells with room for two caption lines.
CELL, CAPTION, GAP = 2.4, 0.5, 0.2


def _shorten(text: str, limit: int) -> str:
    if len(text) <= limit:
        return text
    cut = text[: limit - 1]
    # End at a word boundary when there is one nearby: "a w…" reads worse than "a…".
    if " " in cut[-20:]:
        cut = cut.rsplit(" ", 1)[0]
    return cut.rstrip() + "\u2026"


def _thumbnail(path: Path):
    """A square RGB thumbnail (the image letterboxed on light grey), or None when the file is gone
    or unreadable since indexing. Square cells keep every caption at the same height."""
    try:
        im = open_rgb(path)
        im.thumbnail((THUMB, THUMB))
    except UNREADABLE:
        return None
    cell = Image.new("RGB", (THUMB, THUMB), (236, 236, 236))
    cell.paste(im, ((THUMB - im.width) // 2, (THUMB - im.height) // 2))
    return np.asarray(cell)


def contact_sheet(results, image_root, path, query) -> Path:
    """A PNG grid of the result thumbnails, rank and score under each, the query as the title."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    results = list(results)
    cols = max(1, min(SHEET_COLUMNS, len(results)))
    rows = max(1, math.ceil(len(results) / cols))
    # Wrapped to the sheet's width (about 9 characters per inch at this font size).
    width = GAP + cols * (CELL + GAP)
    title_lines = textwrap.wrap(f"\u201c{_shorten(' '.join(query.split()), TITLE_CHARS)}\u201d",
                                width=max(30, int(width * 9))) or [""]
    title_h = 0.25 * len(title_lines) + 0.35
    height = title_h + rows * (CELL + CAPTION + GAP)
    fig = Figure(figsize=(width, height), dpi=100)
    FigureCanvasAgg(fig)  # a bare Figure with an Agg canvas: no pyplot global state
    fig.text(0.5, 1 - 0.15 / height, "\n".join(title_lines), ha="center", va="top", fontsize=12)
    # Axes placed in inches (converted to figure fractions), so the layout does not depend on
    # matplotlib's automatic spacing, which let captions run into the next row.
    for i in range(max(1, len(results))):
        r, c = divmod(i, cols)
        left = GAP + c * (CELL + GAP)
        bottom = height - title_h - r * (CELL + CAPTION + GAP) - CELL
        ax = fig.add_axes((left / width, bottom / height, CELL / width, CELL / height))
        ax.set_axis_off()
        if not results:
            ax.text(0.5, 0.5, "no results", ha="center", va="center", fontsize=11, transform=ax.transAxes)
            break
        rel, score = results[i]
        thumb = _thumbnail(Path(image_root) / rel)
        if thumb is None:
            ax.imshow(np.full((THUMB, THUMB, 3), 236, dtype=np.uint8))
            ax.text(0.5, 0.5, "missing", ha="center", va="center", color="0.4", transform=ax.transAxes)
        else:
            ax.imshow(thumb)
        name = rel if len(rel) <= 32 else "\u2026" + rel[-31:]  # the end of a path says most
        ax.text(0.5, -0.03, f"#{i + 1}   score {score:.3f}", ha="center", va="top", fontsize=10,
                fontweight="bold", transform=ax.transAxes)
        ax.text(0.5, -0.12, name, ha="center", va="top", fontsize=8.5, color="0.25", transform=ax.transAxes)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", facecolor="white")
    atomic_write_bytes(str(path), buf.getvalue())
    return path
