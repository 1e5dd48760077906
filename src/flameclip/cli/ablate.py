"""``flameclip ablate``: what each part of FLAME buys, on the demo's data."""

from __future__ import annotations

from ..ablate import GROUPS, run_ablations
from .demo import add_run_options


def add_parser(sub):
    p = sub.add_parser("ablate", help="ablations on the demo's data: facets, decoupled mask, LLM layer")
    p.add_argument("--out", default="runs/demo", help="the folder of a finished `flameclip demo`")
    p.add_argument("--only", nargs="+", choices=GROUPS, help="run only these groups")
    add_run_options(p)
    return p


def run(args) -> int:
    run_ablations(args.out, groups=args.only, seed=args.seed, workers=args.workers, precision=args.precision,
                  progress=not args.no_progress)
    return 0
