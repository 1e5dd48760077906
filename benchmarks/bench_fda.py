"""FDA single pass vs K separate passes vs shared-prefix KV cache, in one run.

Times the three routes of ``FacetEncoder`` on the same captions, interleaved over several rounds
(the median is reported, since machines here are noisy), and prints captions/s, the speed-ups and
the token-count ratio ``K(P+q) / (P+Kq)`` that bounds what FDA can gain. It then relates the
encoder's tokens/s to this machine's measured matmul throughput.

    python benchmarks/bench_fda.py [--llm smollm2-135m] [--n 48] [--rounds 3] [--dtype fp32]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import torch  # noqa: E402

from flameclip.text.facets import FacetEncoder  # noqa: E402
from flameclip.text.llm import load_llm  # noqa: E402
from flameclip.text.prompts import load_prompt_set  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def matmul_flops(dim: int, threads: int, seconds: float = 2.0) -> float:
    """Sustained FLOP/s of a [4096, D] x [D, 4D] matmul (the MLP shape of the encoder)."""
    a = torch.randn(4096, dim)
    b = torch.randn(dim, 4 * dim)
    for _ in range(3):
        a @ b
    n, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        a @ b
        n += 1
    return 2 * 4096 * dim * 4 * dim * n / (time.perf_counter() - t0)


def flops_per_token(llm, context: float) -> float:
    """2 x (decoder weights used per token) + attention scores and mixing over ``context`` keys."""
    body = llm.model
    layer_params = sum(p.numel() for p in body.layers.parameters())
    cfg = body.config
    head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
    attn = 2 * 2 * context * cfg.num_attention_heads * head_dim * llm.layer
    return 2 * layer_params + attn


def time_route(enc: FacetEncoder, items) -> float:
    t0 = time.perf_counter()
    enc.encode_tokenized(items)
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--llm", default="smollm2-135m")
    ap.add_argument("--n", type=int, default=48, help="captions per timing (the 48 examples, repeated if more)")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--dtype", default="fp32", choices=["fp32", "bf16"])
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--json", help="also write the results here")
    args = ap.parse_args()

    threads = torch.get_num_threads()
    llm = load_llm(args.llm, dtype=args.dtype, device=args.device)
    recs = [json.loads(line) for line in open(ROOT / "examples" / "captions.jsonl", encoding="utf-8")]
    ps = load_prompt_set("long7")
    results = {"llm": args.llm, "dtype": args.dtype, "device": args.device, "threads": threads, "sets": {}}
    for kind in ("long", "short"):
        caps = [r[kind] for r in recs]
        caps = (caps * -(-args.n // len(caps)))[: args.n]  # repeated past the 48 examples (GPU batches)
        encs = {r: FacetEncoder(llm, route=r, batch_size=args.batch_size) for r in ("fda", "kv", "separate")}
        items = encs["fda"].tokenize(caps, ps)
        p = statistics.mean(len(it.shared) for it in items)
        q = statistics.mean(len(t) for it in items for t in it.tails)
        sep_tokens = sum(it.separate_tokens for it in items)
        fda_tokens = sum(it.fda_length for it in items)
        time_route(encs["fda"], items[: args.batch_size])  # warm-up
        times = {r: [] for r in encs}
        for _ in range(args.rounds):
            for r, e in encs.items():
                times[r].append(time_route(e, items))
        med = {r: statistics.median(v) for r, v in times.items()}
        cps = {r: len(items) / t for r, t in med.items()}
        token_ratio = sep_tokens / fda_tokens
        res = {
            "captions": len(items),
            "P": p,
            "q": q,
            "K": ps.k,
            "captions_per_s": cps,
            "speedup_fda_vs_separate": cps["fda"] / cps["separate"],
            "speedup_kv_vs_separate": cps["kv"] / cps["separate"],
            "token_ratio": token_ratio,
            "fda_fraction_of_token_ratio": cps["fda"] / cps["separate"] / token_ratio,
            "fda_tokens_per_s": fda_tokens / med["fda"],
        }
        results["sets"][kind] = res
        print(f"\n{kind} captions (n={len(items)}, K={ps.k}, mean shared P={p:.0f} tokens, mean prompt q={q:.1f})")
        print(f"  {'route':<9} {'captions/s':>11} {'vs separate':>12}")
        for r in ("separate", "fda", "kv"):
            print(f"  {r:<9} {cps[r]:>11.2f} {cps[r] / cps['separate']:>11.2f}x")
        print(f"  token ratio K(P+q)/(P+Kq) = {token_ratio:.2f}x; FDA reaches {100 * res['fda_fraction_of_token_ratio']:.0f}% of it")

    if args.device == "cpu" and args.dtype == "fp32":
        peak = matmul_flops(llm.hidden_size, threads)
        long = results["sets"]["long"]
        ctx = long["P"] + long["q"]  # keys seen per token, roughly
        fpt = flops_per_token(llm, ctx / 2)
        achieved = long["fda_tokens_per_s"] * fpt
        results["matmul_flops"] = peak
        results["flops_per_token"] = fpt
        results["fraction_of_matmul_peak"] = achieved / peak
        print(f"\nmatmul throughput ({threads} threads, fp32): {peak / 1e9:.1f} GFLOP/s")
        print(f"encoder: {fpt / 1e6:.1f} MFLOP/token x {long['fda_tokens_per_s']:.0f} tokens/s (FDA, long) = "
              f"{achieved / 1e9:.1f} GFLOP/s = {100 * achieved / peak:.0f}% of matmul throughput")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    sys.exit(main())
