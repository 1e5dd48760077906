"""Faster CPU paths for the frozen LLM (dynamic int8 linear layers, or bf16 weights and activations):
speed against fp32, and what they do to the states.

Both sides encode the same demo captions (raw alt-text with the single prompt, short with short3,
long with long7) in one process, fp32 first; the ratio of times is printed, and so is the cosine of
each state to its fp32 twin after both are centred on the fp32 mean (raw cosines are near 1 for any
two states, since one huge activation dominates them, so they say nothing).

    python benchmarks/bench_llm_cpu_paths.py --captions runs/demo/data/train/captions.jsonl --n 32 --path int8
    python benchmarks/bench_llm_cpu_paths.py --captions runs/demo/data/train/captions.jsonl --n 32 --path bf16 \
        --llm gemma3-270m
"""

from __future__ import annotations

import argparse
import json
import time

import torch


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--captions", required=True, help="a captions.jsonl with raw, short and long columns")
    ap.add_argument("--n", type=int, default=32)
    ap.add_argument("--llm", default="smollm2-135m")
    ap.add_argument("--path", choices=["int8", "bf16"], default="int8")
    args = ap.parse_args(argv)

    from flameclip.text.facets import FacetEncoder
    from flameclip.text.llm import load_llm

    with open(args.captions, encoding="utf-8") as f:
        rows = [json.loads(line) for line in f][: args.n]
    llm = load_llm(args.llm)
    columns = (("raw", "single"), ("short", "short3"), ("long", "long7"))

    def run(llm):
        enc, out, secs = FacetEncoder(llm, batch_size=16), {}, {}
        enc.encode([rows[0]["long"]], "long7")  # first-call set-up outside the timings
        for col, ps in columns:
            t0 = time.perf_counter()
            out[col] = enc.encode([r[col] for r in rows], ps)
            secs[col] = time.perf_counter() - t0
        return out, secs

    ref, t_ref = run(llm)
    if args.path == "int8":
        llm.model = torch.ao.quantization.quantize_dynamic(llm.model, {torch.nn.Linear}, dtype=torch.qint8)
    else:
        llm = load_llm(args.llm, dtype="bf16")
    q, t_q = run(llm)
    tag = args.path
    print(f"{'column':8s} {'fp32 s':>8s} {tag + ' s':>8s} {'speed-up':>9s} {'centred cos mean':>17s} {'min':>6s}")
    for col, _ in columns:
        mean = ref[col].mean(dim=(0, 1))
        cos = torch.nn.functional.cosine_similarity(ref[col] - mean, q[col].float() - mean, dim=-1)
        print(f"{col:8s} {t_ref[col]:8.2f} {t_q[col]:8.2f} {t_ref[col] / t_q[col]:8.2f}x {cos.mean():17.3f} {cos.min():6.3f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
