"""``flameclip embed``: captions -> an embedding store of frozen-LLM states."""

from __future__ import annotations

import dataclasses
import os


def _parse_prompts(items: list[str]) -> dict[str, str]:
    out = {}
    for item in items:
        col, sep, ps = item.partition("=")
        if not sep or not col or not ps:
            raise SystemExit(f"flameclip: --prompts takes COLUMN=PROMPT_SET pairs (e.g. long=long7), got '{item}'")
        out[col] = ps
    return out


def add_parser(sub):
    p = sub.add_parser("embed", help="encode captions with a frozen LLM into an embedding store")
    p.add_argument("--captions", required=True, help="jsonl, csv, tsv or parquet with an id column and caption columns")
    p.add_argument("--out", required=True, help="store folder (created, or resumed if it exists)")
    p.add_argument("--llm", default="smollm2-135m", help="packaged name, .gguf file or local HF folder")
    p.add_argument("--prompts", nargs="+", default=["caption=long7"], metavar="COLUMN=SET",
                   help="prompt set per caption column: single, short3, long7 or a JSON file (default caption=long7)")
    p.add_argument("--id-column", default="id")
    p.add_argument("--layer", type=int, default=-2, help="hidden_states index to read (default -2: second-to-last layer)")
    p.add_argument("--compute-dtype", default="fp32", choices=["fp32", "bf16", "fp16"])
    p.add_argument("--dtype", dest="store_dtype", default="fp16", choices=["fp16", "int8", "fp32"], help="storage dtype")
    p.add_argument("--route", default="auto", choices=["auto", "fda", "kv", "separate", "causal"],
                   help="auto: the measured-fastest exact route; causal: the no-decoupling ablation (not exact)")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--max-tokens", type=int, default=None, help="longest facet sequence, prompt included (default 512); longer captions are cut and counted")
    p.add_argument("--shard-size", type=int, default=4096)
    p.add_argument("--device", default="auto")
    p.add_argument("--skip-empty", action="store_true", help="leave out samples with an empty caption instead of stopping")
    p.add_argument("--text-cache", default=None, metavar="DIR",
                   help="reuse the states of captions encoded before by the same LLM and prompts, and add the new "
                        "ones (after editing a few captions, only those are encoded again); off by default")
    p.add_argument("--no-progress", action="store_true")
    return p


def run(args) -> int:
    from ..embed import EmbedConfig, run_embed

    # Every option is named after the EmbedConfig field it sets (--dtype: store_dtype).
    fields = {f.name for f in dataclasses.fields(EmbedConfig)} - {"prompts"}
    cfg = EmbedConfig(prompts=_parse_prompts(args.prompts), **{k: getattr(args, k) for k in fields})
    summary = run_embed(cfg, progress=not args.no_progress)
    if int(os.environ.get("RANK", 0)) == 0:
        print(summary.table())
        if summary.truncated:
            print(f"{summary.truncated} caption(s) were longer than the {summary.max_tokens}-token cap and were cut "
                  "inside the caption; pass --max-tokens to raise it")
        if summary.skipped_ids:
            print(f"skipped ids (first 5): {', '.join(summary.skipped_ids[:5])}")
    return 0
