"""``flameclip eval``: an evaluation suite over one or more checkpoints, side by side."""

from __future__ import annotations

import os
import sys


def add_parser(sub):
    p = sub.add_parser("eval", help="zero-shot, retrieval, multilingual and linear-probe evaluation, side by side")
    p.add_argument("--checkpoint", action="append", required=True, help="checkpoint folder (repeat to compare)")
    p.add_argument("--label", action="append", default=[], help="a name per checkpoint, in order (default FLAME/CLIP)")
    p.add_argument("--data", required=True, help="evaluation suite: a TOML file with [[task]] tables")
    p.add_argument("--tasks", default="", help="comma-separated subset of the suite's tasks to run")
    p.add_argument("--out", default="runs/eval", help="folder for results.json, report.md and plots")
    p.add_argument("--text-cache", default=None, help="where LLM text embeddings are cached")
    p.add_argument("--device", default=None)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--workers", type=int, default=0)
    p.add_argument("--no-progress", action="store_true", help="no bar while the LLM encodes query texts")
    return p


def _labels(paths, given, models) -> list[str]:
    if given and len(given) != len(paths):
        raise ValueError(f"{len(given)} --label for {len(paths)} --checkpoint; give one label per checkpoint or none")
    labels = list(given) or ["FLAME" if m.is_flame else "CLIP" for m in models]
    seen = {}
    for i, lab in enumerate(labels):  # make duplicates distinct with the folder name
        if labels.count(lab) > 1:
            seen[lab] = seen.get(lab, 0) + 1
            labels[i] = f"{lab} ({os.path.basename(os.path.normpath(paths[i]))})"
    return labels


def run(args) -> int:
    from ..evaluate.report import console_table, write_report
    from ..evaluate.tasks import load_suite, run_suite
    from ..inference import load

    specs = load_suite(args.data)
    if args.tasks:
        wanted = set(args.tasks.split(","))
        specs = [s for s in specs if s.task in wanted or s.name in wanted]
        if not specs:
            raise ValueError(f"--tasks {args.tasks} matches no task of {args.data}")
    models = [load(c, device=args.device, text_cache=args.text_cache, progress=not args.no_progress)
              for c in args.checkpoint]
    labels = _labels(args.checkpoint, args.label, models)
    results = run_suite(zip(labels, args.checkpoint, models), specs, batch_size=args.batch_size, workers=args.workers,
                        log=lambda line: print(line, file=sys.stderr),
                        after_task=lambda r: write_report(r, args.out))
    paths = write_report(results, args.out)
    print(console_table(results))
    print(f"report: {paths.get('report', args.out)}")
    return 0
