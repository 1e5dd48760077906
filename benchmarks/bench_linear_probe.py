"""The linear probe's C grid: one fit after another against the fits side by side (joblib).

The probe fits a logistic regression for each of the 9 values of C on 80% of the train set,
then refits the best one. The fits are independent, so they can run in parallel processes; each is
deterministic, so the result must not change. This times both on the demo's Fashion-MNIST probe
features (a checkpoint's pooled image features, as the evaluation computes them) and checks the
two results are equal.

    python benchmarks/bench_linear_probe.py --demo runs/demo [--checkpoint <folder>]
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

import torch


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--demo", default="runs/demo", help="a folder made by `flameclip demo`")
    ap.add_argument("--checkpoint", default=None, help="default: the demo's FLAME checkpoint")
    args = ap.parse_args(argv)

    from flameclip.evaluate.datasets import load_classification
    from flameclip.evaluate.metrics import linear_probe
    from flameclip.evaluate.tasks import Evaluator, load_suite
    from flameclip.inference import load
    from flameclip.train import find_checkpoint

    demo = Path(args.demo)
    ckpt = args.checkpoint or find_checkpoint(demo / "train-flame", "latest")
    probe = [s for s in load_suite(demo / "data" / "eval" / "suite.toml") if s.task == "linear_probe"]
    if ckpt is None or not probe:
        raise SystemExit(f"{demo} has no FLAME checkpoint or no linear-probe task: run `flameclip demo` first")
    spec = probe[0]
    ev = Evaluator(load(ckpt, device="cpu"))
    tr = load_classification(spec.name, spec.train, spec.classnames)
    te = load_classification(spec.name, spec.test, tr.classnames)
    x_tr, x_te = ev.image_features(tr.images, pooled=True), ev.image_features(te.images, pooled=True)
    y_tr, y_te = torch.tensor(tr.labels), torch.tensor(te.labels)

    out, seconds = {}, {}
    for jobs in (1, os.cpu_count() or 1):
        t0 = time.perf_counter()
        out[jobs] = linear_probe(x_tr, y_tr, x_te, y_te, jobs=jobs)
        seconds[jobs] = time.perf_counter() - t0
    one, many = seconds
    same = out[one] == out[many]
    print(f"\n{spec.name}: {len(tr.images)} train, {len(te.images)} test images, features {tuple(x_tr.shape[1:])}, "
          f"{os.cpu_count()} CPU cores; the same result both ways: {same} (acc@1 {100 * out[one]['acc1']:.1f})")
    print("| C grid fits | seconds |")
    print("|---|---:|")
    for jobs, s in seconds.items():
        print(f"| {jobs} process{'es' if jobs > 1 else ''} | {s:.1f} |")
    print(f"\nside by side: {seconds[one] / seconds[many]:.2f}x as fast")
    return 0 if same else 1


if __name__ == "__main__":
    raise SystemExit(main())
