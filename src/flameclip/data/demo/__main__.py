"""python -m flameclip.data.demo ROOT [--scale cpu|gpu] [--seed N]: build the demo data."""

import argparse
import json
import sys
import time

from .. import fashion_mnist as FM
from . import glyphs as G
from .build import SCALES, build_demo_data


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m flameclip.data.demo", description=__doc__.split(":")[1].strip())
    ap.add_argument("root", help="output folder")
    ap.add_argument("--scale", choices=sorted(SCALES), default="cpu")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    try:
        t0 = time.perf_counter()
        paths = build_demo_data(args.root, args.scale, args.seed)
    except (G.EmojiFontNotFound, FM.FashionMNISTError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    counts = json.loads(paths["done"].read_text(encoding="utf-8"))["counts"]
    fm_done = paths["fashion_mnist"] / "DONE.json"
    if fm_done.exists():
        counts["fashion_mnist"] = json.loads(fm_done.read_text(encoding="utf-8"))["counts"]
    print(json.dumps({"seconds": round(time.perf_counter() - t0, 1), "counts": counts,
                      "suite": str(paths["suite"])}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
