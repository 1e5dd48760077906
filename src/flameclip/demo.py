"""``flameclip demo``: the embedded default, end to end, FLAME against CLIP on the same data.

Steps (each resumable: run the command again and finished steps are skipped):
1. build the emoji-scene data (images from the Noto Color Emoji font, names from ``emoji``);
2. embed the training captions (raw -> single, short -> short3, long -> long7) with the LLM;
3. train FLAME on images + stored embeddings;
4. train the CLIP baseline (open_clip text tower from scratch) with the same image tower, loss,
   data and number of steps;
5. evaluate both: zero-shot glyph names, long-caption retrieval with hard negatives, short
   retrieval, multilingual retrieval; print one table and write the report.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path

from .config import load_config


@dataclass
class DemoSizes:
    n_train: int
    epochs: int
    batch_size: int
    vision_width: int
    vision_depth: int
    vision_heads: int
    image_size: int = 64
    patch_size: int = 8
    clip_width: int = 128
    clip_layers: int = 2


SIZES = {
    # Chosen to fit in about 20 minutes of a 2-core CPU after installation (see BENCHMARKS.md).
    "cpu": DemoSizes(n_train=400, epochs=15, batch_size=32, vision_width=192, vision_depth=4, vision_heads=3),
    # For a GPU: more data and a deeper tower.
    "gpu": DemoSizes(n_train=20000, epochs=20, batch_size=256, vision_width=384, vision_depth=12, vision_heads=6),
    # For the test suite: seconds, not minutes.
    "tiny": DemoSizes(n_train=24, epochs=2, batch_size=8, vision_width=32, vision_depth=1, vision_heads=2,
                      image_size=32),
}


def _common(s: DemoSizes, out: Path, workers: int, precision: str) -> list[str]:
    return [
        f"model.image_size={s.image_size}", f"model.patch_size={s.patch_size}", f"model.vision_width={s.vision_width}",
        f"model.vision_depth={s.vision_depth}", f"model.vision_heads={s.vision_heads}", f"batch_size={s.batch_size}",
        f"epochs={s.epochs}", "lr=1e-3", "weight_decay=0.1", "warmup_steps=20", "loss=\"sigmoid\"",
        f"workers={workers}", f"precision=\"{precision}\"", "save_every=1000000", "log_every=5", f"out=\"{out}\"",
    ]


def data_kwargs(scale: str) -> dict:
    """What ``build_demo_data`` is given at a demo scale (tiny: a few samples of every set)."""
    sizes = SIZES[scale]
    kw = {"scale": "gpu" if scale == "gpu" else "cpu", "n_train": sizes.n_train, "image_size": sizes.image_size}
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


def run_demo(out: str | Path = "runs/demo", llm: str = "smollm2-135m", scale: str = "cpu", seed: int = 0,
             workers: int = -1, precision: str = "auto", progress: bool = True) -> dict:
    from .data.demo.build import build_demo_data
    from .embed import EmbedConfig, run_embed
    from .evaluate.report import console_table, write_report
    from .evaluate.tasks import Evaluator
    from .inference import load
    from .train import find_checkpoint, train

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

    store = store_dir(out, llm)
    run_embed(EmbedConfig(captions=str(paths["train_captions"]), out=str(store), llm=llm,
                          prompts={"raw": "single", "short": "short3", "long": "long7"},
                          compute_dtype="fp32", shard_size=256), progress=progress)
    t = lap("embed captions", t)

    runs = {}
    for name, overrides in (
        # Centring the stored states (model.text_center) measured better on every demo task.
        ("FLAME", [f"train_manifest=\"{paths['train_manifest']}\"", f"store=\"{store}\"", "positives=6",
                   "model.text_center=true"]),
        ("CLIP", [f"train_manifest=\"{paths['train_manifest']}\"", f"captions=\"{paths['train_captions']}\"",
                  "text_columns=[\"raw\",\"short\",\"long\"]", "model.text_tower=\"clip\"", "model.embed_dim=256",
                  # A small text tower: at 77 tokens per caption it still costs more than the whole
                  # image side, which is the point FLAME makes about training cost.
                  f"model.clip_width={sizes.clip_width}", f"model.clip_layers={sizes.clip_layers}",
                  "model.clip_heads=4"]),
    ):
        run_dir = out / f"train-{name.lower()}"
        cfg = load_config(None, overrides + _common(sizes, run_dir, workers, precision))
        done = find_checkpoint(run_dir, "latest") if (run_dir / "checkpoints").exists() else None
        if done is not None:
            cfg.resume = "latest"
        runs[name] = train(cfg, progress=progress).checkpoint
        t = lap(f"train {name}", t)

    specs = demo_suite(paths["suite"])
    results = {"format": "flameclip-eval/1", "checkpoints": [], "results": []}
    for label, ckpt in runs.items():
        # On the GPU when there is one: the LLM encodes every query caption, far faster there.
        m = load(ckpt, text_cache=out / "text-cache", progress=progress)
        results["checkpoints"].append({"label": label, "path": str(ckpt), "text_tower": m.cfg.text_tower,
                                       "llm": (m.cfg.llm or {}).get("llm")})
        ev = Evaluator(m)
        for spec in specs:
            results["results"].append({"checkpoint": label, **ev.run(spec)})
    t = lap("evaluate", t)
    timings["total"] = time.perf_counter() - t0
    results["demo"] = {"llm": llm, "scale": scale, "sizes": sizes.__dict__, "seconds": timings}
    report = write_report(results, out / "report")
    print(console_table(results))
    print(f"[demo] total {timings['total'] / 60:.1f} min; report: {report['report']}")
    return results


def add_parser(sub):
    p = sub.add_parser("demo", help="build packaged data, train FLAME and CLIP the same way, compare them")
    p.add_argument("--out", default="runs/demo")
    p.add_argument("--llm", default="smollm2-135m")
    p.add_argument("--scale", default="cpu", choices=sorted(SIZES))
    add_run_options(p)
    return p


def add_run_options(p) -> None:
    """The options every demo-data job shares (the demo, the ablations)."""
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--workers", type=int, default=-1, help="data-loading workers (-1: a default for this machine)")
    p.add_argument("--precision", default="auto", choices=["auto", "bf16", "fp32"])
    p.add_argument("--no-progress", action="store_true")


def run(args) -> int:
    res = run_demo(args.out, llm=args.llm, scale=args.scale, seed=args.seed, workers=args.workers,
                   precision=args.precision, progress=not args.no_progress)
    (Path(args.out) / "demo.json").write_text(json.dumps(res["demo"], indent=2))
    return 0
