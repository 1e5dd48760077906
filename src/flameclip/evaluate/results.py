"""What an evaluation produced: one row per (checkpoint, task, dataset), and the checkpoints.

``run_suite`` returns a ``Results``; ``write_report`` writes it as results.json, and ``Results.load``
reads that file back (checking its format). It is a dict underneath, in the shape results.json has,
so a run's extras (the demo's timings and targets, an ablation's group) travel with it::

    {"format": "flameclip-eval/1",
     "checkpoints": [{"label": "FLAME", "path": "...", "text_tower": "llm", "llm": "gemma3-270m"}, ...],
     "results": [{"checkpoint": "FLAME", "task": "zeroshot", "dataset": "emoji-glyphs",
                  "metrics": {"acc1": 0.295, ...}, ...}, ...]}
"""

from __future__ import annotations

import json
from pathlib import Path

RESULTS_FORMAT = "flameclip-eval/1"


class Results(dict):
    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.setdefault("format", RESULTS_FORMAT)
        self.setdefault("checkpoints", [])
        self.setdefault("results", [])

    @property
    def checkpoints(self) -> list[dict]:
        return self["checkpoints"]

    @property
    def rows(self) -> list[dict]:
        return self["results"]

    @property
    def labels(self) -> list[str]:
        return [c["label"] for c in self.checkpoints]

    def row(self, checkpoint: str, task: str, dataset: str) -> dict | None:
        """The row of one checkpoint on one task and dataset (None if it was not run)."""
        return next((r for r in self.rows if r["checkpoint"] == checkpoint and r["task"] == task
                     and r["dataset"] == dataset), None)

    def only(self, labels) -> Results:
        """The same results, restricted to the checkpoints named in ``labels`` (extras kept)."""
        keep = set(labels)
        return Results({**self, "checkpoints": [c for c in self.checkpoints if c["label"] in keep],
                        "results": [r for r in self.rows if r["checkpoint"] in keep]})

    def save(self, path) -> Path:
        path = Path(path)
        path.write_text(json.dumps(self, indent=2, ensure_ascii=False, default=str) + "\n", encoding="utf-8")
        return path

    @classmethod
    def load(cls, path) -> Results:
        """Read results.json; another format or a file that is not one is refused in one line."""
        try:
            data = json.loads(Path(path).read_text(encoding="utf-8"))
        except (OSError, ValueError) as e:
            raise ValueError(f"{path}: not a readable results file ({type(e).__name__}: {str(e)[:80]})") from None
        if not isinstance(data, dict) or data.get("format") != RESULTS_FORMAT:
            got = data.get("format") if isinstance(data, dict) else type(data).__name__
            raise ValueError(f"{path}: results of format {got!r}, this version reads {RESULTS_FORMAT!r}")
        return cls(data)
