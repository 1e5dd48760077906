"""LLM time of one caption column under two prompt sets (e.g. long7 against long3), in one run.

Encodes the same captions with each prompt set through the same ``FacetEncoder`` (the store's
route), interleaved over several rounds so that a noisy machine hits both alike, and prints the
median captions/s, the tokens run and the ratio.

    python benchmarks/bench_prompt_sets.py --captions runs/demo/data/train/captions.jsonl --column long \\
        --sets long7 long3 --llm gemma3-270m --dtype bf16 --n 96
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--captions", required=True, help="a jsonl file with the caption column")
    ap.add_argument("--column", default="long")
    ap.add_argument("--sets", nargs=2, default=["long7", "long3"], metavar="SET")
    ap.add_argument("--llm", default="gemma3-270m")
    ap.add_argument("--dtype", default="bf16", choices=["fp32", "bf16"])
    ap.add_argument("--n", type=int, default=96, help="captions per timing (the file's first n distinct ones)")
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args(argv)

    from flameclip.text.facets import FacetEncoder
    from flameclip.text.llm import load_llm
    from flameclip.text.prompts import load_prompt_set

    with open(args.captions, encoding="utf-8") as f:
        texts = list(dict.fromkeys(json.loads(line)[args.column] for line in f if line.strip()))[: args.n]
    encoder = FacetEncoder(load_llm(args.llm, dtype=args.dtype))
    sets = [load_prompt_set(s) for s in args.sets]
    seconds: dict[str, list[float]] = {s.name: [] for s in sets}
    tokens = {}
    for _ in range(args.rounds):
        for ps in sets:
            items = encoder.tokenize(texts, ps)
            tokens[ps.name] = sum(it.fda_length for it in items)  # the FDA route's tokens, padding excluded
            t0 = time.perf_counter()
            encoder.encode_tokenized(items)
            seconds[ps.name].append(time.perf_counter() - t0)
    print(f"{len(texts)} '{args.column}' captions, {args.llm} in {args.dtype}, median of {args.rounds} rounds")
    print(f"{'prompt set':10s} {'facets':>6s} {'tokens run':>10s} {'seconds':>8s} {'captions/s':>10s}")
    median = {}
    for ps in sets:
        median[ps.name] = statistics.median(seconds[ps.name])
        print(f"{ps.name:10s} {ps.k:6d} {tokens[ps.name]:10d} {median[ps.name]:8.1f} {len(texts) / median[ps.name]:10.2f}")
    a, b = (s.name for s in sets)
    print(f"{a} / {b}: time {median[a] / median[b]:.2f}x, tokens {tokens[a] / tokens[b]:.2f}x")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
