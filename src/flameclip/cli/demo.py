"""``flameclip demo``: the embedded default, end to end (data, embed, FLAME and CLIP, report)."""

from __future__ import annotations

import json
from pathlib import Path

from ..demo import DEMO_LLM, SIZES, run_demo


def add_parser(sub):
    p = sub.add_parser("demo", help="build packaged data, train FLAME and CLIP the same way, compare them")
    p.add_argument("--out", default="runs/demo")
    p.add_argument("--llm", default=DEMO_LLM, help=f"the frozen LLM (default {DEMO_LLM}; see `flameclip llms`)")
    p.add_argument("--scale", default="cpu", choices=sorted(SIZES))
    p.add_argument("--data-efficiency", action="store_true",
                   help="also train FLAME on 25%% and 50%% of the scenes (same steps) and plot the data-efficiency "
                        "figure; two more trainings")
    add_run_options(p)
    return p


def add_run_options(p) -> None:
    """The options every demo-data job shares (the demo, the ablations)."""
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--workers", type=int, default=-1, help="data-loading workers (-1: a default for this machine)")
    p.add_argument("--precision", default="auto", choices=["auto", "bf16", "fp32"],
                   help="training arithmetic (auto: bf16 on a GPU or a CPU with bf16 arithmetic, else fp32)")
    p.add_argument("--no-progress", action="store_true")


def run(args) -> int:
    res = run_demo(args.out, llm=args.llm, scale=args.scale, seed=args.seed, workers=args.workers,
                   precision=args.precision, progress=not args.no_progress, data_efficiency=args.data_efficiency)
    (Path(args.out) / "demo.json").write_text(json.dumps(res["demo"], indent=2))
    return 0
