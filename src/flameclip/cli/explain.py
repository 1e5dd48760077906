"""``flameclip explain``: a word map of one image (the LLM words each region is projected to)."""

from __future__ import annotations

import sys
from pathlib import Path

from ..explain import DEFAULT_WINDOWS, ExplainError, render_word_map, word_maps, word_table


def add_parser(subparsers) :
    """Add ``explain IMAGE --checkpoint DIR ...`` to a ``flameclip`` subparsers object."""
    p = subparsers.add_parser("explain", help="word maps: the LLM words each image region is projected to")
    p.add_argument("image", help="image file")
    p.add_argument("--checkpoint", required=True, help="FLAME checkpoint folder (text_tower='llm', no embed_dim)")
    p.add_argument("--windows", type=int, nargs="+", default=list(DEFAULT_WINDOWS),
                   help="pooling windows in patches (default 2 4, as in the paper)")
    p.add_argument("--top-k", type=int, default=5, help="words listed per region (default 5)")
    p.add_argument("--out", default=None, help="PNG to write (default IMAGE_STEM.words.png in the current folder)")
    p.add_argument("--no-norm", action="store_true",
                   help="read the tokens without the LLM's final norm (default: apply it, as the LLM does)")
    p.add_argument("--llm", default=None, help="where the checkpoint's LLM is, if not under its recorded name")
    p.add_argument("--device", default=None)
    return p


def run(args) -> int:
    """Print the word table, write the PNG and print its path; refusals are one line on stderr."""
    from ..fileio import UNREADABLE, open_rgb
    from ..inference import load
    from ..text.llm import LLMNotFoundError

    try:
        try:
            image = open_rgb(args.image)
        except UNREADABLE as e:
            raise ExplainError(f"cannot read image {args.image}: {str(e).removeprefix(f'{args.image}: ')}") from None
        flame = load(args.checkpoint, llm=args.llm, device=args.device)
        maps = word_maps(flame, image, windows=args.windows, top_k=args.top_k, apply_norm=not args.no_norm)
    except (ExplainError, LLMNotFoundError) as e:
        print(f"flameclip explain: {e}", file=sys.stderr)
        return 2
    print(word_table(maps), end="")
    out = Path(args.out) if args.out else Path(f"{Path(args.image).stem}.words.png")
    llm = (flame.cfg.llm or {}).get("llm", "LLM")
    title = f"{Path(args.image).name}: {llm} words per region" + ("" if not args.no_norm else " (no final norm)")
    print(f"word map: {render_word_map(image, maps, out, title=title)}")
    return 0
