"""What a facet prompt's state holds of a short caption: its background colour, and its first glyph.

A frozen LLM's state at the end of a facet prompt is all FLAME's text side gets. On the demo's
training scenes, each facet of each given prompt set encodes the short captions once; a logistic
regression fitted on the fit scenes' states then predicts, on the validation scenes (held out of
training, never an evaluation set):

* the first background colour (16 colours; the caption names one or two),
* the first-named glyph (up to 100),

and the same for the mean of the set's facets, the query FLAME's inference uses. A facet from
which a colour cannot be read linearly is one from which FLAME's image tower cannot learn it.

A colour that can be read is not yet one that weighs: the last column is the share of the
validation states' variance that the first background colour explains once the states are centred
and whitened as FLAME's text side does (power 0.75, fitted on the fit scenes; ``--whiten-power``), with the share that
16 labels shuffled among the same states explain beside it. A contrastive target spends its
similarity where its variance is; a colour with a share near the shuffled one hardly moves it.

    python benchmarks/val_prompt_probe.py --demo runs/demo --sets short3 benchmarks/prompt_sets/short3bg.json
    python benchmarks/val_prompt_probe.py --demo runs/demo --llm smollm2-135m
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np


def accuracy(train_x, train_y, test_x, test_y) -> float:
    """Held-out accuracy (%) of a logistic regression on standardised states."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import StandardScaler

    scale = StandardScaler().fit(train_x)
    clf = LogisticRegression(max_iter=2000, C=0.1).fit(scale.transform(train_x), train_y)
    return 100 * float((clf.predict(scale.transform(test_x)) == np.asarray(test_y)).mean())


def whitened(x: np.ndarray, n_fit: int, power: float = 0.75) -> np.ndarray:
    """Rows centred on the fit rows' mean and whitened by their covariance to ``power``, with FLAME's
    own matrix (its eigenvalue floor included; the scale, which cosines ignore, left out)."""
    from flameclip.data.centering import whitening_matrix

    centred = (x - x[:n_fit].mean(0)).astype(np.float64)
    return centred @ whitening_matrix(centred[:n_fit].T @ centred[:n_fit] / n_fit, power)


def explained_share(x: np.ndarray, labels) -> float:
    """Share (%) of the rows' variance about their mean that the label means explain (eta squared)."""
    labels = np.asarray(labels)
    x = x - x.mean(0)
    between = sum((labels == u).sum() * np.square(x[labels == u].mean(0)).sum() for u in np.unique(labels))
    return 100 * float(between / np.square(x).sum())


def colour_share(x: np.ndarray, labels, shuffles: int = 20, seed: int = 0) -> tuple[float, float]:
    """The labels' explained share of the L2-normalised rows, and its mean over shuffled labels."""
    x = x / np.linalg.norm(x, axis=1, keepdims=True)
    rng = np.random.default_rng(seed)
    chance = np.mean([explained_share(x, rng.permutation(labels)) for _ in range(shuffles)])
    return explained_share(x, labels), float(chance)


def first_named(caption: str, objects: list[dict]) -> str:
    named = [o["name"] for o in objects if o["name"] in caption]
    return min(named, key=caption.index) if named else ""


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--demo", default="runs/demo")
    ap.add_argument("--sets", nargs="+", default=["short3"], help="prompt sets: built-in names or JSON files")
    ap.add_argument("--llm", default=None, help="by default the demo's LLM")
    ap.add_argument("--dtype", default="bf16")
    ap.add_argument("--whiten-power", type=float, default=0.75,
                    help="the whitening before the colour's share (0: centred only; the demo's FLAME: 0.75)")
    args = ap.parse_args(argv)

    from flameclip.demo import DEMO_LLM
    from flameclip.text import FacetEncoder, load_llm
    from flameclip.text.prompts import load_prompt_set

    data = Path(args.demo) / "data" / "train"
    read = lambda name: [json.loads(line) for line in (data / name).read_text(encoding="utf-8").splitlines()]  # noqa: E731
    captions = {r["id"]: r["short"] for r in read("captions.jsonl")}
    scenes = {r["id"]: r for r in read("scenes.jsonl")}
    # Scenes only: a glyph card's caption ("A party popper.") does not name its background.
    fit = [r["id"] for r in read("fit.jsonl") if r["id"] in scenes and "background" in captions.get(r["id"], "")]
    val = [r["id"] for r in read("val.jsonl")]
    ids = fit + val
    colour = [scenes[i]["background"]["colours"][0] for i in ids]
    glyph = [first_named(captions[i], scenes[i]["objects"]) for i in ids]
    n = len(fit)
    print(f"fit scenes {n}, validation scenes {len(val)}; chance: colour {100 / 16:.1f}, "
          f"first glyph {100 / len(set(glyph)):.1f} (most frequent {100 * max(map(glyph.count, set(glyph))) / len(glyph):.1f})")

    encoder = FacetEncoder(load_llm(args.llm or DEMO_LLM, dtype=args.dtype))
    print(f"{'set':12s} {'facet':60s} {'colour':>7s} {'glyph':>7s} {'colour share (shuffled)':>24s}")
    for name in args.sets:
        ps = load_prompt_set(name)
        t0 = time.perf_counter()
        states = encoder.encode([captions[i] for i in ids], ps, progress=True).float().numpy()  # [N, K, D]
        seconds = time.perf_counter() - t0
        facets = [(ps.prompts[k].strip(), states[:, k]) for k in range(ps.k)]
        facets.append(("mean of the facets, each centred", (states - states[:n].mean(0)).mean(1)))
        for label, x in facets:
            c = accuracy(x[:n], colour[:n], x[n:], colour[n:])
            g = accuracy(x[:n], glyph[:n], x[n:], glyph[n:])
            share, chance = colour_share(whitened(x, n, args.whiten_power)[n:], colour[n:])
            print(f"{ps.name:12s} {label[:60]:60s} {c:7.1f} {g:7.1f} {share:15.1f} ({chance:4.1f})", flush=True)
        print(f"{ps.name:12s} {f'({seconds:.0f} s to encode {len(ids)} captions)':60s}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
