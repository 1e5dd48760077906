"""A demo folder whose training set also holds background cards: a background alone, captioned by it.

The demo's data with ``background_cards`` records added to the fit split (``data/demo/cards.py``);
every scene, the validation split and every evaluation file stay those of the demo. The captions
are embedded as the demo embeds them (its LLM, prompt sets and text cache: give a copy of a finished
demo's ``text-cache`` folder and only the cards' captions are encoded). Then sweep it:

    cp -r runs/demo/text-cache runs/demo-backgrounds/
    python benchmarks/background_cards_demo.py --out runs/demo-backgrounds --cards 100
    python benchmarks/sweep_demo.py --demo runs/demo-backgrounds --side both --steps 1500 --precision bf16 \\
        --only "softmax-lr5e-4 whiten-0.75 conv-stem attn-pool draw-columns adapter-1" "softmax-lr5e-4 attn-pool"
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", required=True, help="the new demo folder (its data/ and store are written there)")
    ap.add_argument("--cards", type=int, default=100, help="background cards in the fit split")
    ap.add_argument("--seed", type=int, default=0, help="the demo data's seed")
    args = ap.parse_args(argv)

    from flameclip.data.demo.build import build_demo_data
    from flameclip.demo import data_kwargs, embed_demo_captions

    out = Path(args.out)
    t0 = time.perf_counter()
    paths = build_demo_data(out / "data", seed=args.seed, **{**data_kwargs("cpu"), "background_cards": args.cards})
    t1 = time.perf_counter()
    embed_demo_captions(out, paths["train_captions"])
    t2 = time.perf_counter()
    print(f"\n| step | seconds |\n|---|---:|\n| data ({args.cards} background cards) | {t1 - t0:.0f} |\n"
          f"| embed | {t2 - t1:.0f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
