"""Side-by-side reports of evaluation results: report.md with its tables and figures, results.json.

The tables are in ``tables.py``, the figures in ``figures.py``; this module writes them together.

Input is the results dict that ``flameclip eval`` writes as results.json::

    {"format": "flameclip-eval/1",
     "checkpoints": [{"label": "FLAME", ...}, {"label": "CLIP", ...}],
     "results": [{"checkpoint": "FLAME", "task": "zeroshot", "dataset": "emoji-glyphs",
                  "mode": None or "long7" ..., "metrics": {"acc1": 0.41, ...},
                  "per_language": {...} (multilingual only), "counts": {"images": 500, ...}},
                 ...]}

Metric values are fractions in [0, 1] named as in CLIP_benchmark; everything shown to a
person is in percent. Note CLIP_benchmark's naming: ``image_retrieval_recall@K`` is
text->image retrieval (the images are retrieved), ``text_retrieval_recall@K`` image->text.
Every metric here is higher-is-better, which the "best value" highlighting relies on.

Any checkpoint may lack rows (a task not run for it) or metrics; those cells read "—".
"""

from __future__ import annotations

import json
from pathlib import Path

from .figures import checkpoint_colour, plot_languages, plot_retrieval, plot_summary
from .tables import console_table, markdown_table, metric_name

__all__ = [
    "checkpoint_colour",
    "console_table",
    "markdown_table",
    "metric_name",
    "plot_languages",
    "plot_retrieval",
    "plot_summary",
    "write_report",
]


def _json_default(value):
    # results may carry numpy scalars or Paths straight from the evaluation code.
    if hasattr(value, "item"):
        return value.item()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


def _checkpoint_line(checkpoint: dict) -> str:
    details = [f"{k.replace('_', ' ')}: {v}" for k, v in checkpoint.items() if k not in ("label", "path")]
    line = f"- **{checkpoint['label']}**"
    if checkpoint.get("path"):
        line += f" — `{checkpoint['path']}`"
    return line + (f" ({', '.join(details)})" if details else "")


# (name in the returned dict, file name, plot function, heading in report.md)
_FIGURES = (
    ("summary", "summary.png", plot_summary, "Headline metrics"),
    ("retrieval", "retrieval.png", plot_retrieval, "Retrieval recall@K"),
    ("languages", "languages.png", plot_languages, "Multilingual retrieval per language"),
)


def write_report(results: dict, out_dir) -> dict[str, Path]:
    """Write results.json, the figures and report.md (which embeds them) into out_dir.

    Returns the paths written by name: "results", "report", and "summary", "retrieval",
    "languages" for the figures that had data. A figure without data is neither written nor
    linked from report.md.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths: dict[str, Path] = {}

    paths["results"] = out_dir / "results.json"
    text = json.dumps(results, indent=2, ensure_ascii=False, default=_json_default)
    paths["results"].write_text(text + "\n", encoding="utf-8")

    figures = []
    for name, filename, plot, heading in _FIGURES:
        written = plot(results, out_dir / filename)
        if written is not None:
            paths[name] = written
            figures.append((heading, filename))

    md = ["# flameclip evaluation report", ""]
    if results.get("checkpoints"):
        md += ["## Checkpoints", ""]
        md += [_checkpoint_line(c) for c in results["checkpoints"]]
        md += [""]
    md += ["## Results", "", markdown_table(results).rstrip("\n"), ""]
    if figures:
        md += ["## Figures", ""]
        for heading, filename in figures:
            # Relative links: the report stays valid when the folder is moved or published.
            md += [f"### {heading}", "", f"![{heading}]({filename})", ""]

    paths["report"] = out_dir / "report.md"
    paths["report"].write_text("\n".join(md), encoding="utf-8")
    return paths
