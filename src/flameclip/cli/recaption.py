"""``flameclip recaption``: a short and a long caption per image from a local vision-language model."""

from __future__ import annotations

from ..recaption import RecaptionConfig, run_recaption


def add_parser(sub):
    p = sub.add_parser("recaption", help="a short and a long caption per image from a local vision-language model")
    p.add_argument("--images", required=True, help="image manifest (jsonl/csv/tsv/parquet) or webdataset shards")
    p.add_argument("--model", required=True, help="local Hugging Face folder of an image-text-to-text model")
    p.add_argument("--out", required=True, help="the captions table (.parquet, .jsonl or .csv), resumed if started")
    p.add_argument("--prompts", default="default", help="packaged prompt file name or a JSON file (see README)")
    p.add_argument("--raw-column", default="caption", help="manifest column with the alt-text (default caption)")
    p.add_argument("--image-root", default=None)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--chunk-size", type=int, default=256, help="images per part file, the unit of resume")
    p.add_argument("--device", default="auto")
    p.add_argument("--dtype", default="auto", choices=["auto", "fp32", "bf16", "fp16"])
    p.add_argument("--trust-remote-code", action="store_true", help="run the model folder's own Python code")
    p.add_argument("--no-progress", action="store_true")
    return p


def run(args) -> int:
    cfg = RecaptionConfig(images=args.images, model=args.model, out=args.out, prompts=args.prompts,
                          raw_column=args.raw_column, image_root=args.image_root, batch_size=args.batch_size,
                          chunk_size=args.chunk_size, device=args.device, dtype=args.dtype,
                          trust_remote_code=args.trust_remote_code)
    s = run_recaption(cfg, progress=not args.no_progress)
    rows = [("images", f"{s.images:,}"), ("captioned this run", f"{s.captioned:,}"),
            ("images/s", f"{s.images_per_s:.2f}"), ("seconds", f"{s.seconds:.1f}")]
    if s.complete:
        rows += [("failed to decode", f"{s.failed:,}" + (f" (e.g. {', '.join(s.failed_ids[:3])}; all in "
                                                         f"{cfg.out}.failed.jsonl)" if s.failed else "")),
                 *[(f"empty {col} captions", f"{n:,}") for col, n in s.empty.items()], ("table", cfg.out)]
    else:
        rows.append(("table", "not yet: other ranks still hold chunks; the last one to finish writes it"))
    width = max(len(k) for k, _ in rows)
    print("\n".join(f"{k:<{width}}  {v}" for k, v in rows))
    return 0
