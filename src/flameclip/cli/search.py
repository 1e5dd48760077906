"""``flameclip index`` and ``flameclip search``: the command-line side of :mod:`flameclip.search`."""

from __future__ import annotations

from ..contact_sheet import contact_sheet
from ..search import INDEX_DIRNAME, LONG_QUERY_WORDS, SEARCH_MODES, ImageIndex, build_index, search


def _human_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} GiB"


def _table(rows: list[tuple[str, str]]) -> str:
    w = max(len(k) for k, _ in rows)
    return "\n".join(f"{k:<{w}}  {v}" for k, v in rows)


def add_index_parser(subparsers):
    p = subparsers.add_parser("index", help="encode a folder of images for text search")
    p.add_argument("image_dir", help="folder of images (searched recursively)")
    p.add_argument("--checkpoint", required=True, help="checkpoint folder (model.safetensors + config.json)")
    p.add_argument("--out", default=None, help=f"index folder (default IMAGE_DIR/{INDEX_DIRNAME})")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--device", default=None, help="default: cuda when available, else cpu")
    p.add_argument("--no-progress", action="store_true")
    return p


def run_index(args) -> int:
    s = build_index(args.image_dir, args.checkpoint, out=args.out, batch_size=args.batch_size,
                    progress=not args.no_progress, device=args.device)
    print(_table([
        ("index", s["index"]),
        ("indexed", str(s["indexed"])),
        ("skipped (not an image)", str(s["skipped_not_image"])),
        ("skipped (unreadable)", str(s["skipped_unreadable"])),
        ("time", f"{s['seconds']:.1f} s"),
        ("images/s", f"{s['images_per_s']:.1f}"),
        ("index size", _human_bytes(s["index_bytes"])),
    ]))
    if s["unreadable_examples"]:
        print(f"unreadable (first {len(s['unreadable_examples'])}): {', '.join(s['unreadable_examples'])}")
    if s["not_image_examples"]:
        print(f"not images (first {len(s['not_image_examples'])}): {', '.join(s['not_image_examples'])}")
    return 0


def add_search_parser(subparsers):
    p = subparsers.add_parser("search", help="find the images of an index that best match a text")
    p.add_argument("query", help="the text to search for")
    p.add_argument("--index", required=True, help="index folder made by flameclip index")
    p.add_argument("--checkpoint", required=True, help="the checkpoint that built the index")
    p.add_argument("--k", type=int, default=10, help="number of results (default 10)")
    p.add_argument("--mode", default="auto",
                   help=f"prompt set for FLAME checkpoints: {', '.join(SEARCH_MODES)}, or a prompt set JSON file "
                        f"(auto: above {LONG_QUERY_WORDS} words the long set the checkpoint was trained with, "
                        "long7 or long3; single below)")
    p.add_argument("--out", default="results.png", help="contact sheet PNG (default results.png)")
    p.add_argument("--device", default=None, help="default: cuda when available, else cpu")
    p.add_argument("--text-cache", default=None, help="where LLM text embeddings are cached")
    return p


def run_search(args) -> int:
    index = ImageIndex(args.index)
    results = search(index, args.checkpoint, args.query, k=args.k, mode=args.mode, device=args.device,
                     text_cache=args.text_cache)
    root = index.image_root
    print(f"{'rank':>4}  {'score':>6}  path")
    for rank, (rel, score) in enumerate(results, 1):
        print(f"{rank:>4}  {score:>6.3f}  {root / rel}")
    print(f"contact sheet: {contact_sheet(results, root, args.out, args.query)}")
    return 0
