"""Evaluate flameclip checkpoints with CLIP_benchmark's own command.

    python -m flameclip.benchmark_loader eval --model_type flameclip --pretrained CHECKPOINT \\
        --dataset cifar10 --dataset_root DATA --task zeroshot_classification

This registers a ``flameclip`` model type in CLIP_benchmark (its loaders return
``(model, transform, tokenizer)``), then hands the command line to CLIP_benchmark unchanged. For a
FLAME checkpoint the "tokenizer" runs the frozen LLM (cached) and ``encode_text`` applies the
model's text side; for the CLIP baseline it is the CLIP BPE tokenizer.
"""

from __future__ import annotations

import sys


def register() -> None:
    """Add the ``flameclip`` model type to CLIP_benchmark's loader registry (idempotent)."""
    import clip_benchmark.models as cbm

    from .inference import load_for_clip_benchmark

    cbm.TYPE2FUNC["flameclip"] = load_for_clip_benchmark
    if "flameclip" not in cbm.MODEL_TYPES:
        cbm.MODEL_TYPES.append("flameclip")  # the CLI's --model_type choices are this very list


def main(argv: list[str] | None = None) -> int:
    register()
    from clip_benchmark.cli import main as cb_main

    sys.argv = ["clip_benchmark", *(sys.argv[1:] if argv is None else argv)]
    cb_main()
    return 0


if __name__ == "__main__":
    sys.exit(main())
