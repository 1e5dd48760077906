"""``flameclip demo``: the embedded default, end to end, FLAME against CLIP on the same data.

Steps (each resumable: run the command again and finished steps are skipped):
1. build the emoji-scene data (images from the Noto Color Emoji font, names from ``emoji``); the
   last scenes of the training set are held out as a validation split;
2. embed the training captions with the LLM;
3. train FLAME on images + stored embeddings, with training and held-out recall logged as it goes
   (learning curves);
4. train the CLIP baseline (open_clip text tower from scratch) with the same image tower, data and
   number of steps, each side with the settings its own validation sweep chose (BENCHMARKS.md);
5. with ``data_efficiency`` (``flameclip demo --data-efficiency``), train FLAME again on 25% and
   50% of the scenes, same steps, for the data-efficiency figure (two more trainings: about 11 of a
   2-core CPU's minutes, so the plain demo leaves them out);
6. evaluate: zero-shot glyph names, long-caption retrieval with hard negatives (and the same in
   phrasing no training caption uses), short retrieval, multilingual retrieval, Fashion-MNIST; print
   the headline targets with chance beside every figure, and write the report with its figures.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path

from .config import ModelConfig, TrainConfig, with_settings
from .fileio import atomic_write_bytes


@dataclass
class DemoSizes:
    n_train: int  # training scenes built; the last n_val of them are the validation split
    n_val: int
    steps: int  # optimiser steps of every training run
    batch_size: int
    vision_width: int
    vision_depth: int
    vision_heads: int
    image_size: int = 64
    patch_size: int = 8
    clip_width: int = 128
    clip_layers: int = 2
    eval_every: int = 50  # steps between two points of the learning curves
    fractions: tuple[float, ...] = (0.25, 0.5)  # FLAME's data-efficiency runs (share of the fit scenes)
    sparse_percent: int = 50  # share of training scenes with only 1-3 glyphs (see data/demo/build.py)
    train_views: int = 0  # extra drawings of each fit scene, glyphs moved within their cells
    glyph_cards: int = 0  # records per vocabulary glyph of the glyph alone, captioned by its name only
    card_views: int = 0  # extra drawings of each glyph card (training draws one per epoch)
    background_cards: int = 0  # records of a background alone (no glyph), captioned by the background only
    train_groups: int = 0  # groups of scenes that differ only in their last-named object, batched together
    val_groups: int = 0  # held-out groups of the same kind (train/val_suite.toml), for choosing settings


SIZES = {
    # Chosen to fit in about 20 minutes of a 2-core CPU after installation (see BENCHMARKS.md), with
    # training in bf16 where the CPU has bf16 arithmetic. 1,500 steps: on validation (two seeds, both
    # sides) FLAME's image tower knows a glyph by its English name at 41.0 R@1 against 29.0 at 1,000
    # steps, and CLIP gains too. Glyph cards (each glyph alone, named, in 8 drawings) teach the glyphs.
    # 40 held-out hard-negative groups (drawn only: no LLM time) are the validation twin of the
    # evaluation's hard negatives, which benchmarks/sweep_demo.py scores every run on.
    "cpu": DemoSizes(n_train=1100, n_val=150, steps=1500, batch_size=32, vision_width=192, vision_depth=4,
                     vision_heads=3, eval_every=100, glyph_cards=2, card_views=7, val_groups=40),
    # For a GPU: more data and a deeper tower.
    "gpu": DemoSizes(n_train=20000, n_val=1000, steps=1500, batch_size=256, vision_width=384, vision_depth=12,
                     vision_heads=6, eval_every=150),
    # For the test suite: seconds, not minutes.
    "tiny": DemoSizes(n_train=40, n_val=4, steps=6, batch_size=8, vision_width=32, vision_depth=1, vision_heads=2,
                      image_size=32, eval_every=3),
}

# Each side's settings, chosen on the validation split by benchmarks/sweep_demo.py (BENCHMARKS.md,
# "demo sweep"): the same grid of loss, initial bias and learning rate for both, plus a text adapter
# for FLAME and a wider, deeper text tower for CLIP. In those sweeps the sigmoid loss's bias starts at
# -ln(32), the prior of one match in a batch of 32 (the reference's -10 is that for 32k batches).
# FLAME's stored states are centred per prompt facet and whitened to the power 0.75 (a fixed matrix
# fitted on the store; the text side stays frozen): held-out long-caption R@1 about doubles. Its ViT
# cuts the image into tokens with a convolutional stem, which the same sweep offered both sides:
# FLAME +5.1 points of score on two seeds, CLIP -3.0, so CLIP keeps the plain patchify. At 1,000
# steps with glyph cards both sides' sweeps moved the learning rate from 1e-3 to 5e-4 (BENCHMARKS.md,
# "cards"; 2.5e-4 and 2e-3 lost on both sides).
# positive_draw "columns": each positive from a caption column drawn uniformly (raw, short, long alike,
# as the CLIP baseline draws its caption) instead of uniformly over the 11 rows, where the 7 long
# facets take 64% of the positives (BENCHMARKS.md, "Positives column by column").
# The softmax loss (CLIP's) and one trainable residual MLP block on the frozen, whitened states:
# validation score 82.2 against 74.8 for the sigmoid loss and the frozen-only text side (two seeds,
# both ahead; each change alone 78.3 and 80.2; BENCHMARKS.md, "The softmax loss and a text adapter").
# The adapter is not the paper's frozen-only text side: the report says which one ran.
FLAME_SETTINGS = {"loss": "softmax", "lr": 5e-4, "positives": 6, "positive_draw": "columns",
                  "model": {"text_center": "prompt", "text_whiten": 0.75, "vision_stem": "conv",
                            "text_adapter_depth": 1}}
CLIP_SETTINGS = {"loss": "softmax", "lr": 5e-4,
                 "model": {"text_tower": "clip", "embed_dim": 256, "clip_heads": 4}}
# The prompt set each caption column of the demo is stored with; the demo's evaluation suites
# (data/demo/suite.py) query a column with its own set. Long captions use long3, the first three of the paper's seven long prompts: on
# validation it is level with long7 (score 81.5 against 82.0, held-out long R@1 70.7 against 66.7,
# hard-negative R@5 65.0 against 67.8, English glyph names 59.5 against 58.8; two seeds each) for
# 0.70x the LLM time of the long captions (BENCHMARKS.md, "Three long facets instead of seven").
DEMO_PROMPTS = {"raw": "single", "short": "short3", "long": "long3"}
# The demo's LLM, chosen on the validation split against smollm2-135m (BENCHMARKS.md, "demo LLM"): it
# puts other languages' names near the English ones (a text-only probe on glyphs no evaluation set
# uses: 48.9 against 18.5 R@1) and gives higher held-out recall, at about the same LLM cost per token.
DEMO_LLM = "gemma3-270m"


def base_config(s: DemoSizes, out: Path, workers: int = -1, precision: str = "auto") -> TrainConfig:
    """What every demo training run shares: the image tower, batch, steps and schedule (no data, no side)."""
    # Attention pooling of the patch tokens, on both sides: on validation (two seeds each) it lifts
    # CLIP's score by 10 points and FLAME's held-out long-caption R@1 by 6 (BENCHMARKS.md, "Attention
    # pooling"). Each side keeps the stem its own sweep chose (FLAME_SETTINGS, CLIP_SETTINGS).
    model = ModelConfig(image_size=s.image_size, patch_size=s.patch_size, vision_width=s.vision_width,
                        vision_depth=s.vision_depth, vision_heads=s.vision_heads, vision_pool="attention")
    return TrainConfig(model=model, batch_size=s.batch_size, epochs=1_000_000, max_steps=s.steps, weight_decay=0.1,
                       warmup_steps=20, workers=workers, precision=precision, save_every=1_000_000, log_every=5,
                       out=str(out))


def training_precision(precision: str) -> str:
    """The demo's training arithmetic. "auto" is bf16 autocast on a GPU and also on a CPU with bf16
    arithmetic (AVX512-BF16 or AMX), where it trains 1.5x faster on 2 cores with the same validation
    figures (BENCHMARKS.md, "Training in bf16 on the CPU"); fp32 on other CPUs, which only emulate bf16."""
    if precision != "auto":
        return precision
    import torch

    from .text.llm import fast_dtype

    return "auto" if torch.cuda.is_available() else fast_dtype("cpu")


def resume_setting(run_dir: Path) -> str:
    """``resume`` for a demo run: "latest" when the run left a checkpoint (an interrupted demo goes on)."""
    from .train import find_checkpoint

    return "latest" if find_checkpoint(run_dir, "latest") else ""


def flame_config(base: TrainConfig, store: Path, **settings) -> TrainConfig:
    """FLAME on the stored LLM states of ``store``, with the demo's settings (then ``settings``)."""
    return with_settings(with_settings(base, {**FLAME_SETTINGS, "store": str(store)}), settings)


def clip_config(base: TrainConfig, s: DemoSizes, captions: Path) -> TrainConfig:
    """The CLIP baseline: an open_clip text tower of the demo's size, trained on the captions' text."""
    cfg = with_settings(base, CLIP_SETTINGS)
    return with_settings(cfg, {"captions": str(captions), "text_columns": ["raw", "short", "long"],
                               "model": {"clip_width": s.clip_width, "clip_layers": s.clip_layers}})


def data_kwargs(scale: str) -> dict:
    """What ``build_demo_data`` is given at a demo scale (tiny: a few samples of every set)."""
    sizes = SIZES[scale]
    kw = {"scale": "gpu" if scale == "gpu" else "cpu", "n_train": sizes.n_train, "n_val": sizes.n_val,
          "sparse_percent": sizes.sparse_percent, "train_views": sizes.train_views, "image_size": sizes.image_size,
          "glyph_cards": sizes.glyph_cards, "card_views": sizes.card_views,
          "background_cards": sizes.background_cards, "train_groups": sizes.train_groups,
          "val_groups": sizes.val_groups}
    if scale == "tiny":
        kw.update(long_groups=4, group_size=2, n_short=8, n_classes=4, per_class=2, n_multilingual=4,
                  fashion_train=40, fashion_test=20)
    return kw


def demo_suite(path):
    """The demo's evaluation suite, with its zero-shot templates (shared by the ablations)."""
    from .evaluate.tasks import load_suite

    specs = load_suite(path)
    for spec in specs:
        if spec.task == "zeroshot" and spec.templates is None:
            # Emoji are not photos: three plain templates instead of the 80 ImageNet ones (and 27x
            # fewer LLM passes on a CPU).
            spec.templates = ["{c}", "an emoji of a {c}.", "a picture of a {c}."]
    return specs


def store_dir(out: Path, llm: str) -> Path:
    """The demo's store folder: named after a packaged LLM, or the file/folder name of a path."""
    return Path(out) / f"store-{Path(llm).stem if ('/' in llm or llm.endswith('.gguf')) else llm}"


def subset_manifest(manifest: Path, fraction: float, out: Path) -> Path:
    """The first ``fraction`` of a JSONL manifest's records (written once), image paths made absolute.

    The fit scenes are drawn independently, so their first records are as random a sample as any,
    and the smaller sets are nested (25% is inside 50%).
    """
    if out.exists():
        return out
    lines = [ln for ln in manifest.read_text(encoding="utf-8").splitlines() if ln.strip()]
    keep = [json.loads(ln) for ln in lines[: max(1, round(fraction * len(lines)))]]
    for r in keep:
        r["image"] = str((manifest.parent / r["image"]).resolve())
        if r.get("views"):
            r["views"] = [str((manifest.parent / v).resolve()) for v in r["views"]]
    out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(str(out), "".join(json.dumps(r) + "\n" for r in keep).encode("utf-8"))
    return out


def embed_demo_captions(out: Path, captions: Path, llm: str = DEMO_LLM, progress: bool = True) -> Path:
    """Embed a demo folder's training captions into its store (``store_dir``) as the demo does; returns
    the store. The text cache keeps every caption's states: a demo run again at other sizes, or on
    data with records added, encodes only the new captions."""
    from .embed import EmbedConfig, run_embed
    from .text.llm import fast_dtype

    store = store_dir(out, llm)
    run_embed(EmbedConfig(captions=str(captions), out=str(store), llm=llm, prompts=DEMO_PROMPTS,
                          compute_dtype=fast_dtype(), shard_size=256, text_cache=str(out / "text-cache")),
              progress=progress)
    return store


def run_demo(out: str | Path = "runs/demo", llm: str = DEMO_LLM, scale: str = "cpu", seed: int = 0,
             workers: int = -1, precision: str = "auto", progress: bool = True,
             data_efficiency: bool = False) -> dict:
    from .data.demo.build import build_demo_data
    from .evaluate.curves import plot_learning_curves
    from .evaluate.efficiency import plot_data_efficiency
    from .evaluate.report import console_table, write_report
    from .evaluate.targets import evaluate_targets, targets_table
    from .evaluate.tasks import run_suite
    from .inference import load
    from .train import train

    out = Path(out)
    sizes = SIZES[scale]
    timings: dict[str, float] = {}
    t0 = time.perf_counter()

    def lap(name: str, since: float) -> float:
        now = time.perf_counter()
        timings[name] = now - since
        print(f"[demo] {name}: {timings[name]:.0f} s", flush=True)
        return now

    paths = build_demo_data(out / "data", seed=seed, progress=progress, **data_kwargs(scale))
    t = lap("data", t0)

    store = embed_demo_captions(out, paths["train_captions"], llm, progress)
    t = lap("embed captions", t)

    fit, val = paths["fit_manifest"], paths["val_manifest"]
    precision = training_precision(precision)
    base = base_config(sizes, out, workers, precision)
    curves = {"val_manifest": str(val), "eval_every": sizes.eval_every, "eval_columns": ["raw", "long"]}
    jobs = [("FLAME", fit, with_settings(flame_config(base, store), curves)),
            ("CLIP", fit, with_settings(clip_config(base, sizes, paths["train_captions"]), curves))]
    fractions = sizes.fractions if data_efficiency else ()
    for frac in fractions:
        part = subset_manifest(fit, frac, out / f"fit-{round(100 * frac)}.jsonl")
        jobs.append((f"FLAME {round(100 * frac)}%", part, flame_config(base, store)))
    runs = {}
    for name, manifest, cfg in jobs:
        run_dir = out / f"train-{name.lower().replace(' ', '-').replace('%', '')}"
        cfg = with_settings(cfg, {"train_manifest": str(manifest), "out": str(run_dir),
                                  "resume": resume_setting(run_dir)})
        runs[name] = train(cfg, progress=progress).checkpoint
        t = lap(f"train {name}", t)

    specs = demo_suite(paths["suite"])
    # One model in memory at a time, on the GPU when there is one (the LLM encodes every query there).
    models = ((label, ckpt, load(ckpt, text_cache=out / "text-cache", progress=progress))
              for label, ckpt in runs.items())
    results = run_suite(models, specs)
    t = lap("evaluate", t)
    timings["total"] = time.perf_counter() - t0
    results["demo"] = {"llm": llm, "scale": scale, "sizes": sizes.__dict__, "precision": precision, "seconds": timings,
                       "settings": {"FLAME": FLAME_SETTINGS, "CLIP": CLIP_SETTINGS}}
    targets = evaluate_targets(results)
    results["targets"] = [t.__dict__ | {"stderr": t.stderr} for t in targets]
    report_dir = out / "report"
    report = write_report(_main_runs(results), report_dir)
    stale = report_dir / "data_efficiency.png"
    if not fractions and stale.exists():
        stale.unlink()  # an earlier run's figure, which this report does not describe
    figures = {
        "learning_curves.png": plot_learning_curves(
            {"FLAME": out / "train-flame" / "curves.csv", "CLIP": out / "train-clip" / "curves.csv"},
            report_dir / "learning_curves.png"),
        "data_efficiency.png": plot_data_efficiency(
            results, {"FLAME": 1.0, **{f"FLAME {round(100 * f)}%": f for f in fractions}},
            report_dir / "data_efficiency.png"),
    }
    _append_to_report(report["report"], targets_table(targets, markdown=True), figures)
    results.save(report_dir / "results_all_runs.json")
    print(console_table(_main_runs(results)))
    print(targets_table(targets))
    print(f"[demo] FLAME's text side: {text_side(FLAME_SETTINGS)}")
    if not fractions:
        print("[demo] data efficiency: not run (`flameclip demo --data-efficiency` adds FLAME on "
              f"{' and '.join(f'{round(100 * f)}%' for f in sizes.fractions)} of the scenes and its figure)")
    print(f"[demo] total {timings['total'] / 60:.1f} min; report: {report['report']}")
    return results


def _main_runs(results):
    """The results of FLAME and CLIP only (the data-efficiency runs have their own figure)."""
    return results.only(("FLAME", "CLIP"))


def text_side(settings: dict) -> str:
    """In words, what FLAME's text side is under ``settings`` (the report says which form ran)."""
    depth = settings.get("model", {}).get("text_adapter_depth", 0)
    if not depth:
        return "the frozen LLM's states only (the paper's form)"
    return (f"the frozen LLM's states, then a trainable adapter of {depth} residual MLP block(s) "
            "(not the paper's frozen-only form; `model.text_adapter_depth = 0` gives that)")


def _append_to_report(report: Path, targets_md: str, figures: dict) -> None:
    md = ["", "## The demo's settings", "",
          f"- FLAME: {json.dumps(FLAME_SETTINGS)}; its text side is {text_side(FLAME_SETTINGS)}.",
          f"- CLIP: {json.dumps(CLIP_SETTINGS)}.", "",
          "## The demo's targets", "", targets_md.rstrip("\n"), ""]
    titles = {"learning_curves.png": "Learning curves: training and held-out recall against step",
              "data_efficiency.png": "Data efficiency: FLAME on 25/50/100% of the scenes, CLIP on 100%"}
    for name, path in figures.items():
        if path is not None:
            md += [f"### {titles[name]}", "", f"![{titles[name]}]({name})", ""]
    with open(report, "a", encoding="utf-8") as f:
        f.write("\n".join(md))
