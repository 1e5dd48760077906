"""The demo's validation sweep: the same settings tried for FLAME and for the CLIP baseline.

Both sides train on the demo's fit scenes for the demo's number of steps and are scored on the
validation split (scenes held out of the training set, never the evaluation sets). The score is
held-out text->image R@5 averaged over the alt-text ("raw") and long-caption columns, read from
each run's learning curves. The demo's FLAME_SETTINGS and CLIP_SETTINGS are the winners here.

    python benchmarks/sweep_demo.py --demo runs/demo            # after the demo's data and store exist
    python benchmarks/sweep_demo.py --demo runs/demo --side clip --only softmax-lr2e-3
    python benchmarks/sweep_demo.py --demo runs/demo --seed 1    # the same runs from another seed
    python benchmarks/sweep_demo.py --demo runs/demo --precision bf16  # trained in bf16 autocast
    python benchmarks/sweep_demo.py --demo runs/demo --side flame --store runs/store-causal  # another store
    python benchmarks/sweep_demo.py --demo runs/demo-groups --without-groups  # its fit set less the groups
    python benchmarks/sweep_demo.py --demo runs/demo --side flame --text-rms 10  # the adapter's input scale

A demo folder whose data has held-out hard-negative groups (``val_groups``; data/train/val_suite.toml)
also scores every run there: text->image R@1 / R@5 and the group score (does a caption pick its own
image among the scenes that differ from it only in the last-named object), with the training
captions' phrasing and, where the data has it, with the other writer's (unseen phrasing).

Each run is a folder under <demo>/sweep/; finished runs are read back, not retrained.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import time
from pathlib import Path

# name -> overrides; one grid for both sides, then what only one side has (a text adapter,
# whitening for FLAME; the text tower's size for CLIP).
BIAS = -round(math.log(32), 2)  # -log(batch): the sigmoid loss's prior that 1 text in 32 matches


def sigmoid(lr: str = "1e-3", *extra: str) -> list[str]:
    """The sigmoid loss with the initial bias at -ln(32), at learning rate ``lr``, plus ``extra``."""
    return ["loss=\"sigmoid\"", f"lr={lr}", f"model.init_logit_bias={BIAS}", *extra]


def softmax_default(lr: str = "5e-4", depth: int = 1, *extra: str) -> list[str]:
    """The demo's FLAME settings (softmax loss, whitening, conv stem, column draw) with a text adapter
    of ``depth`` blocks at learning rate ``lr``, plus ``extra``."""
    return ["loss=\"softmax\"", f"lr={lr}", "model.text_whiten=0.75", "model.vision_stem=\"conv\"",
            "model.vision_pool=\"attention\"", "positive_draw=\"columns\"", f"model.text_adapter_depth={depth}",
            *extra]


GRID = {
    "sigmoid-b10-lr1e-3 (reference init)": ["loss=\"sigmoid\"", "lr=1e-3", "model.init_logit_bias=-10.0"],
    "sigmoid-b3.5-lr1e-3": sigmoid("1e-3"),
    "sigmoid-b3.5-lr2e-3": sigmoid("2e-3"),
    "softmax-lr1e-3": ["loss=\"softmax\"", "lr=1e-3"],
}
FLAME_ONLY = {
    "sigmoid-b3.5-lr1e-3 adapter-1": sigmoid("1e-3", "model.text_adapter_depth=1"),
    "sigmoid-b3.5-lr1e-3 whiten-0.5": sigmoid("1e-3", "model.text_whiten=0.5"),
    "sigmoid-b3.5-lr1e-3 whiten-1": sigmoid("1e-3", "model.text_whiten=1.0"),
    "sigmoid-b3.5-lr1e-3 whiten-0.75": sigmoid("1e-3", "model.text_whiten=0.75"),
    "sigmoid-b3.5-lr1e-3 whiten-0.5 proj-256": sigmoid("1e-3", "model.text_whiten=0.5", "model.embed_dim=256"),
    "sigmoid-b3.5-lr1e-3 whiten-0.5 positives-11": sigmoid("1e-3", "model.text_whiten=0.5", "positives=11"),
    # With whitening at 0.75 (the demo's since): learning rate and the sigmoid loss's initial scale.
    "sigmoid-b3.5-lr2e-3 whiten-0.75": sigmoid("2e-3", "model.text_whiten=0.75"),
    "sigmoid-b3.5-lr5e-4 whiten-0.75": sigmoid("5e-4", "model.text_whiten=0.75"),
    "sigmoid-b3.5-lr1e-3 whiten-0.75 scale-20": sigmoid("1e-3", "model.text_whiten=0.75", "model.init_logit_scale=20.0"),
    # The image tower's stem: 3x3 stride-2 convolutions instead of the 8x8 patchify (both sides).
    "sigmoid-b3.5-lr1e-3 whiten-0.75 conv-stem": sigmoid("1e-3", "model.text_whiten=0.75",
                                                         "model.vision_stem=\"conv\""),
    # With the conv stem (the demo's since): does the best whitening power or learning rate move?
    "sigmoid-b3.5-lr1e-3 whiten-0.5 conv-stem": sigmoid("1e-3", "model.text_whiten=0.5", "model.vision_stem=\"conv\""),
    "sigmoid-b3.5-lr1e-3 whiten-1 conv-stem": sigmoid("1e-3", "model.text_whiten=1.0", "model.vision_stem=\"conv\""),
    "sigmoid-b3.5-lr2e-3 whiten-0.75 conv-stem": sigmoid("2e-3", "model.text_whiten=0.75",
                                                         "model.vision_stem=\"conv\""),
    "sigmoid-b3.5-lr5e-4 whiten-0.75 conv-stem": sigmoid("5e-4", "model.text_whiten=0.75",
                                                         "model.vision_stem=\"conv\""),
    "sigmoid-b3.5-lr2.5e-4 whiten-0.75 conv-stem": sigmoid("2.5e-4", "model.text_whiten=0.75",
                                                           "model.vision_stem=\"conv\""),
    "sigmoid-b3.5-lr5e-4 whiten-0.5 conv-stem": sigmoid("5e-4", "model.text_whiten=0.5", "model.vision_stem=\"conv\""),
    # At 1,500 steps held-out long-caption recall peaks mid-run: stochastic depth against it.
    "sigmoid-b3.5-lr5e-4 whiten-0.75 conv-stem drop-path-0.1": sigmoid("5e-4", "model.text_whiten=0.75",
                                                                       "model.vision_stem=\"conv\"",
                                                                       "model.vision_drop_path=0.1"),
    # A trainable text projection into 256 dims (not the paper's frozen-only text side).
    "sigmoid-b3.5-lr5e-4 whiten-0.75 conv-stem proj-256": sigmoid("5e-4", "model.text_whiten=0.75",
                                                                  "model.vision_stem=\"conv\"",
                                                                  "model.embed_dim=256"),
    # The image embedding as an attention-pooled mix of the patch tokens instead of their mean.
    "sigmoid-b3.5-lr5e-4 whiten-0.75 conv-stem attn-pool": sigmoid("5e-4", "model.text_whiten=0.75",
                                                                   "model.vision_stem=\"conv\"",
                                                                   "model.vision_pool=\"attention\""),
    # Positives drawn column by column (raw, short, long alike) instead of uniformly over the 11 rows.
    "sigmoid-b3.5-lr5e-4 whiten-0.75 conv-stem attn-pool draw-columns": sigmoid(
        "5e-4", "model.text_whiten=0.75", "model.vision_stem=\"conv\"", "model.vision_pool=\"attention\"",
        "positive_draw=\"columns\""),
    # The short captions' share of the positives doubled (raw 1/4, short 1/2, long 1/4; CLIP likewise).
    "sigmoid-b3.5-lr5e-4 whiten-0.75 conv-stem attn-pool draw-columns short-x2": sigmoid(
        "5e-4", "model.text_whiten=0.75", "model.vision_stem=\"conv\"", "model.vision_pool=\"attention\"",
        "positive_draw=\"columns\"", "column_weights=[1.0,2.0,1.0]"),
    # The softmax loss again, on today's default (it lost at 1e-3 before whitening and the new stem).
    "softmax-lr5e-4 whiten-0.75 conv-stem attn-pool draw-columns": [
        "loss=\"softmax\"", "lr=5e-4", "model.text_whiten=0.75", "model.vision_stem=\"conv\"",
        "model.vision_pool=\"attention\"", "positive_draw=\"columns\""],
    # A trainable residual MLP on the frozen (centred, whitened) states, on today's default.
    "sigmoid-b3.5-lr5e-4 whiten-0.75 conv-stem attn-pool draw-columns adapter-1": sigmoid(
        "5e-4", "model.text_whiten=0.75", "model.vision_stem=\"conv\"", "model.vision_pool=\"attention\"",
        "positive_draw=\"columns\"", "model.text_adapter_depth=1"),
    "softmax-lr5e-4 whiten-0.75 conv-stem attn-pool draw-columns adapter-1": softmax_default(),  # the demo's
    # The demo's default with a second adapter block, and at the next learning rate up.
    "softmax-lr5e-4 whiten-0.75 conv-stem attn-pool draw-columns adapter-2": softmax_default(depth=2),
    "softmax-lr1e-3 whiten-0.75 conv-stem attn-pool draw-columns adapter-1": softmax_default("1e-3"),
    # The demo's default, its whitening fitted on the spread of each image's rows about their mean.
    "softmax-lr5e-4 whiten-0.75-within-image conv-stem attn-pool draw-columns adapter-1": softmax_default(
        "5e-4", 1, "model.text_whiten_covariance=\"within-image\""),
    # A demo folder with hard-negative groups in its fit set: each group in one batch.
    "sigmoid-b3.5-lr5e-4 whiten-0.75 conv-stem attn-pool batch-groups": sigmoid(
        "5e-4", "model.text_whiten=0.75", "model.vision_stem=\"conv\"", "model.vision_pool=\"attention\"",
        "batch_groups=true"),
}
CLIP_ONLY = {
    "sigmoid-b3.5-lr1e-3 text-256x4": sigmoid("1e-3", "model.clip_width=256", "model.clip_layers=4"),
    "softmax-lr1e-3 conv-stem": ["loss=\"softmax\"", "lr=1e-3", "model.vision_stem=\"conv\""],
    # Learning rate and text tower again at 1,000 steps (the demo's since), as FLAME's are.
    "softmax-lr2e-3": ["loss=\"softmax\"", "lr=2e-3"],
    "softmax-lr5e-4": ["loss=\"softmax\"", "lr=5e-4"],
    "softmax-lr2.5e-4": ["loss=\"softmax\"", "lr=2.5e-4"],
    "softmax-lr1e-3 text-256x4": ["loss=\"softmax\"", "lr=1e-3", "model.clip_width=256", "model.clip_layers=4"],
    "softmax-lr5e-4 text-256x4": ["loss=\"softmax\"", "lr=5e-4", "model.clip_width=256", "model.clip_layers=4"],
    "softmax-lr5e-4 text-128x4": ["loss=\"softmax\"", "lr=5e-4", "model.clip_layers=4"],
    "softmax-lr5e-4 drop-path-0.1": ["loss=\"softmax\"", "lr=5e-4", "model.vision_drop_path=0.1"],
    # A demo folder whose captions have a second long column (each scene's objects in another
    # order): FLAME reads every stored column by default; CLIP is told to read it too.
    "softmax-lr5e-4 attn-pool": ["loss=\"softmax\"", "lr=5e-4", "model.vision_pool=\"attention\""],
    "softmax-lr5e-4 attn-pool batch-groups": ["loss=\"softmax\"", "lr=5e-4", "model.vision_pool=\"attention\"",
                                              "batch_groups=true"],
    "softmax-lr5e-4 attn-pool short-x2": ["loss=\"softmax\"", "lr=5e-4", "model.vision_pool=\"attention\"",
                                          "column_weights=[1.0,2.0,1.0]"],
    "softmax-lr5e-4 long-orders": ["loss=\"softmax\"", "lr=5e-4",
                                   "text_columns=[\"raw\",\"short\",\"long\",\"long_orders\"]"],
}


def side_settings(side: str, sizes, store: Path, captions: Path) -> list[str]:
    if side == "flame":
        return [f"store=\"{store}\"", "positives=6", "model.text_center=\"prompt\""]
    return [f"captions=\"{captions}\"", "text_columns=[\"raw\",\"short\",\"long\"]", "model.text_tower=\"clip\"",
            "model.embed_dim=256", "model.clip_heads=4", f"model.clip_width={sizes.clip_width}",
            f"model.clip_layers={sizes.clip_layers}"]


def score(curves: Path) -> dict:
    from flameclip.evaluate.curves import read_curves

    rows = read_curves(curves)
    last = max(r["step"] for r in rows)
    final = {f"{r['set']}/{r['column']}": r for r in rows if r["step"] == last}
    out = {k: {"r1": round(100 * v["t2i_r1"], 1), "r5": round(100 * v["t2i_r5"], 1)} for k, v in final.items()}
    out["score"] = round((out["val/raw"]["r5"] + out["val/long"]["r5"]) / 2, 2)
    return out


def hard_negative_scores(run: Path, suite: Path, text_cache: Path, long_mode: str | None = None) -> dict:
    """The final checkpoint on the held-out hard-negative groups: T2I R@1, R@5 and the group score, in %.

    ``long_mode``: the prompt set FLAME's long captions were stored with (it replaces the suite's).
    """
    from flameclip.checkpoints import CHECKPOINTS
    from flameclip.evaluate.tasks import load_suite, run_suite
    from flameclip.inference import load

    last = sorted((run / CHECKPOINTS).glob("step-*"))[-1]
    specs = [dataclasses.replace(t, mode=long_mode or t.mode) for t in load_suite(suite)]
    res = run_suite([("model", last, load(last, text_cache=str(text_cache), progress=False))], specs)
    out = {}
    for row in res["results"]:
        m = row["metrics"]
        out["novel" if row["dataset"] == "val-novel-phrasing" else "hard"] = {
            "r1": round(100 * m["image_retrieval_recall@1"], 1), "r5": round(100 * m["image_retrieval_recall@5"], 1),
            "group": round(100 * m["group_image_retrieval_acc"], 1)}
    return out


def without_groups(fit: Path) -> Path:
    """``fit`` less its hard-negative group records (written once beside it)."""
    out = fit.with_name("fit-without-groups.jsonl")
    if not out.exists():
        lines = [ln for ln in fit.read_text(encoding="utf-8").splitlines() if '"group"' not in ln]
        out.write_text("".join(ln + "\n" for ln in lines), encoding="utf-8")
    return out


def rescale_whitening(rms: float) -> None:
    """Make training's whitening matrix give rows of ``rms`` per dimension (a measurement knob only).

    Cosines do not care about the scale of the frozen states, but a residual adapter does: its
    branch starts at zero and grows at the optimiser's pace, so the larger the input, the smaller
    the adapter's share of the output after the same steps.
    """
    import functools

    import flameclip.train as training

    training.store_whitening = functools.partial(training.store_whitening, rms=rms)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--demo", default="runs/demo")
    ap.add_argument("--side", choices=["flame", "clip", "both"], default="both")
    ap.add_argument("--only", nargs="*", help="run only these setting names")
    ap.add_argument("--workers", type=int, default=1)
    ap.add_argument("--seed", type=int, default=0, help="training seed (initialisation and sampling); the data stay")
    ap.add_argument("--steps", type=int, default=None, help="optimiser steps (default: the demo's)")
    ap.add_argument("--precision", choices=["fp32", "bf16"], default="fp32",
                    help="training arithmetic (bf16: autocast, the demo's on a CPU with bf16 arithmetic)")
    ap.add_argument("--store", help="FLAME reads this store instead of the demo's (the same captions embedded "
                                    "another way, e.g. `flameclip embed --route causal`); its name tags the runs")
    ap.add_argument("--without-groups", action="store_true",
                    help="train on the fit set less its hard-negative groups (data built with train_groups)")
    ap.add_argument("--text-rms", type=float,
                    help="FLAME: scale the whitening matrix so that a whitened row has this root-mean-square per "
                         "dimension (the input scale of a text adapter; by default a row keeps its norm, about "
                         "230 per dimension for gemma-3-270m); the runs' names end in rms-<value>")
    args = ap.parse_args(argv)
    if args.text_rms:
        rescale_whitening(args.text_rms)

    from flameclip.config import load_config
    from flameclip.demo import DEMO_LLM, SIZES, base_config, store_dir
    from flameclip.text.prompts import BUILTIN
    from flameclip.train import train

    demo = Path(args.demo)
    sizes = SIZES["cpu"]
    if args.steps:
        sizes = dataclasses.replace(sizes, steps=args.steps)
    data = demo / "data" / "train"
    store, captions = Path(args.store) if args.store else store_dir(demo, DEMO_LLM), data / "captions.jsonl"
    fit = without_groups(data / "fit.jsonl") if args.without_groups else data / "fit.jsonl"
    suite = data / "val_suite.toml"
    if not store.exists():
        hint = "embed the demo's captions there with `flameclip embed`" if args.store else \
            f"run `flameclip demo --out {demo}` (at least its embed step) first"
        raise SystemExit(f"{store} not found: {hint}")
    sides = ["flame", "clip"] if args.side == "both" else [args.side]
    # FLAME queries the long captions with the prompt set its store holds them in (long3 in the demo);
    # a store without a long column, or not finished, leaves the suite's own mode.
    manifest = json.loads((store / "manifest.json").read_text()) if (store / "manifest.json").exists() else {}
    long_set = next((c.get("prompt_set") for c in manifest.get("columns", []) if c.get("name") == "long"), None)
    long_mode = long_set and long_set["name"]
    if long_set and long_mode not in BUILTIN:
        # A set embedded from a JSON file (e.g. benchmarks/prompt_sets/): its queries need the file,
        # which the store's manifest holds verbatim.
        path = demo / "sweep" / f"prompt-set-{long_mode}.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(long_set, indent=2))
        long_mode = str(path)
    table = []
    # Setting by setting, both sides in turn, so a sweep cut short leaves both equally tuned.
    plan = [(side, name, o) for name, o in GRID.items() for side in sides]
    plan += [("flame", n, o) for n, o in FLAME_ONLY.items() if "flame" in sides]
    plan += [("clip", n, o) for n, o in CLIP_ONLY.items() if "clip" in sides]
    for side, name, overrides in plan:
        if args.only and name not in args.only:
            continue
        if args.text_rms and side == "flame" and not any(o.startswith("model.text_whiten=") for o in overrides):
            print(f"skipped with --text-rms (no whitening to rescale): {name}", flush=True)
            continue
        folder = name + (f" rms-{args.text_rms:g}" if args.text_rms and side == "flame" else "")
        run = demo / "sweep" / side / folder.replace(" ", "_").replace("(", "").replace(")", "")
        if args.seed:
            run = run.with_name(f"{run.name}_seed{args.seed}")
        if args.steps:
            run = run.with_name(f"{run.name}_steps{args.steps}")
        if args.precision != "fp32":
            run = run.with_name(f"{run.name}_{args.precision}")
        if args.store and side == "flame":
            run = run.with_name(f"{run.name}_store-{store.name}")
        if args.without_groups:
            run = run.with_name(f"{run.name}_without-groups")
        if not (run / "done.json").exists():
            cfg = load_config(None, [f"train_manifest=\"{fit}\"",
                                     f"val_manifest=\"{data / 'val.jsonl'}\"", f"eval_every={sizes.steps}",
                                     "eval_columns=[\"raw\",\"long\"]",
                                     *side_settings(side, sizes, store, captions), *overrides, f"seed={args.seed}"],
                              base=base_config(sizes, run, args.workers, args.precision))
            t0 = time.perf_counter()
            train(cfg, progress=False)
            (run / "done.json").write_text(json.dumps({"seconds": time.perf_counter() - t0, **score(run / "curves.csv")}))
        res = json.loads((run / "done.json").read_text())
        if suite.exists() and ("hard" not in res or ("novel" not in res and "val_groups_novel" in suite.read_text())):
            res.update(hard_negative_scores(run, suite, demo / "text-cache", long_mode if side == "flame" else None))
            (run / "done.json").write_text(json.dumps(res))
        table.append((side, name, res))
        print(f"{side:5s}  {name:42s}  score {res['score']:5.1f}  val raw R@1/R@5 {res['val/raw']['r1']:4.1f}/"
              f"{res['val/raw']['r5']:4.1f}  val long {res['val/long']['r1']:4.1f}/{res['val/long']['r5']:4.1f}  "
              f"train long {res['train/long']['r1']:4.1f}/{res['train/long']['r5']:4.1f}  {res['seconds']:.0f} s"
              + (f"  val hard-neg R@1/R@5 {res['hard']['r1']:4.1f}/{res['hard']['r5']:4.1f} group {res['hard']['group']:4.1f}"
                 if "hard" in res else "")
              + (f"  val unseen-phrasing R@1/R@5 {res['novel']['r1']:4.1f}/{res['novel']['r5']:4.1f} "
                 f"group {res['novel']['group']:4.1f}" if "novel" in res else ""), flush=True)
    n_val = sizes.n_val
    print(f"\nchance: R@1 {100 / n_val:.1f}, R@5 {500 / n_val:.1f} (held-out scenes: {n_val})")
    for side in sides:
        best = max((r for r in table if r[0] == side), key=lambda r: r[2]["score"], default=None)
        if best:
            print(f"best {side}: {best[1]} (score {best[2]['score']})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
