"""How far last-bit differences in the image features move the Fashion-MNIST linear probe.

The probe picks C on its validation part; at large C, L-BFGS stops at its iteration cap, and
there the fit can follow tiny differences in the features. This probes one checkpoint as the demo
does, then again at the chosen C with every feature multiplied by (1 + eps x Gaussian noise).

    python benchmarks/probe_feature_noise.py --demo runs/demo --checkpoint runs/demo/train-clip/checkpoints/step-0001500
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # nothing here may download anything

import torch  # noqa: E402


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--demo", default="runs/demo")
    ap.add_argument("--checkpoint", required=True)
    ap.add_argument("--eps", type=float, default=1e-6, help="relative size of the noise")
    ap.add_argument("--seeds", type=int, default=3)
    args = ap.parse_args(argv)

    from flameclip.evaluate.datasets import load_classification
    from flameclip.evaluate.metrics import linear_probe
    from flameclip.evaluate.tasks import Evaluator, load_suite
    from flameclip.inference import load

    suite = Path(args.demo) / "data" / "eval" / "suite.toml"
    spec = next(s for s in load_suite(suite) if s.task == "linear_probe")
    train = load_classification(spec.name, spec.train, spec.classnames)
    test = load_classification(spec.name, spec.test, train.classnames)
    evaluator = Evaluator(load(args.checkpoint))
    x_train = evaluator.image_features(train.images, pooled=True)
    x_test = evaluator.image_features(test.images, pooled=True)
    y_train, y_test = torch.tensor(train.labels), torch.tensor(test.labels)

    base = linear_probe(x_train, y_train, x_test, y_test)
    print(f"{'features':28s}  acc@1   (C = {base['best_C']:g}; chance {100 / len(train.classnames):.1f})")
    print(f"{'as they are':28s}  {100 * base['acc1']:5.1f}")
    for seed in range(args.seeds):
        g = torch.Generator().manual_seed(seed)

        def noisy(x):
            return x * (1 + args.eps * torch.randn(x.shape, generator=g))

        res = linear_probe(noisy(x_train), y_train, noisy(x_test), y_test, lambdas=[base["best_C"]])
        print(f"{f'x (1 + {args.eps:g} N), seed {seed}':28s}  {100 * res['acc1']:5.1f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
