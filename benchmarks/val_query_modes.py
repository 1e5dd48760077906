"""Which prompt set should a caption column's queries use? Held-out text->image recall per set.

A FLAME model is trained on stored rows of each caption column (raw with "single", short with
"short3", long with "long3" in the demo); an evaluation task must pick one prompt set for its
queries. This scores every (column, prompt set) pair on the demo's validation scenes (held out of
training, never an evaluation set), so the choice in the demo's suite is made on validation.

    python benchmarks/val_query_modes.py --demo runs/demo --checkpoint runs/demo/train-flame/checkpoints/step-0000500

A mode "long7+short3" averages the two sets' normalised query embeddings. A mode ending in
"/facets" ("long7/facets") sends each facet's state through the text side on its own and averages
the normalised results, instead of the reference's rule (average the facet states, then the text
side); the two differ only where the text side is not linear (a text adapter).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch


def encode_queries(model, texts: list[str], mode: str) -> torch.Tensor:
    """Normalised query embeddings of ``texts`` under one prompt set ``mode`` (see the module doc)."""
    from torch.nn.functional import normalize

    from flameclip.text.prompts import load_prompt_set

    if not mode.endswith("/facets"):
        return normalize(model.encode_text(texts, mode=mode), dim=-1)
    name = mode.removesuffix("/facets")
    states = model.model.center_states(model.llm_states(texts, name), load_prompt_set(name).name)  # [N, K, D]
    n, k, d = states.shape
    per_facet = model.encode_text(states.reshape(n * k, d)).view(n, k, -1)  # each facet as a training row
    return normalize(per_facet.mean(dim=1), dim=-1)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--demo", default="runs/demo")
    ap.add_argument("--checkpoint", required=True)
    ap.add_argument("--columns", nargs="+", default=["raw", "short", "long"])
    ap.add_argument("--modes", nargs="+", default=["single", "short3", "long3"])
    args = ap.parse_args(argv)

    from flameclip.evaluate.datasets import iterate_images
    from flameclip.evaluate.metrics import retrieval_metrics
    from flameclip.inference import load

    data = Path(args.demo) / "data" / "train"
    captions = {}
    for line in (data / "captions.jsonl").read_text(encoding="utf-8").splitlines():
        row = json.loads(line)
        captions[row["id"]] = row
    val = [json.loads(line) for line in (data / "val.jsonl").read_text(encoding="utf-8").splitlines()]
    model = load(args.checkpoint, text_cache=Path(args.demo) / "text-cache")
    images = torch.cat([model.encode_image(x) for x, _ in
                        iterate_images([str(data / r["image"]) for r in val], model.preprocess, 64)])
    n = len(val)
    print(f"held-out scenes: {n}; chance R@1 {100 / n:.1f}, R@5 {500 / n:.1f}, R@10 {1000 / n:.1f}")
    print(f"{'column':8s} {'queries':13s} {'R@1':>6s} {'R@5':>6s} {'R@10':>6s}")
    for column in args.columns:
        for mode in args.modes:
            texts = [captions[r["id"]][column] for r in val]
            # "long7+short3": the normalised mean of each set's query embedding (a facet ensemble).
            parts = [encode_queries(model, texts, m) for m in mode.split("+")]
            text = torch.nn.functional.normalize(torch.stack(parts).mean(0), dim=-1)
            m = retrieval_metrics(images, text, torch.arange(n))
            print(f"{column:8s} {mode:13s} " + " ".join(f"{100 * m[f'image_retrieval_recall@{k}']:6.1f}"
                                                       for k in (1, 5, 10)), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
