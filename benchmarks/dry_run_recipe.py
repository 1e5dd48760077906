"""The CC3M recipe, dry-run end to end on this machine: shards -> recaption -> embed -> train -> eval.

Every step is the real command a user runs at scale, two processes under torchrun (gloo) where the
recipe uses many: webdataset tar shards of the demo's emoji scenes with their alt-texts, recaptioned
by a tiny random LLaVA, embedded by a tiny random Llama (real architectures, toy sizes: the
plumbing is what is tested, not the words), trained with configs/flame-vitb16-cc3m.toml shrunk to
a small ViT, and evaluated on the demo's zero-shot and long-caption tasks. Prints the wall time of
each step. The slow test tier runs it as it is, on 2,000 images.

    python benchmarks/dry_run_recipe.py [--images 2000] [--out runs/dry-run]
"""

from __future__ import annotations

import argparse
import io
import json
import os
import subprocess
import sys
import tarfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PER_SHARD = 500
PROMPTS = {"columns": {"short": {"prompt": "Write one short sentence that says what this image shows.",
                                 "max_new_tokens": 12},
                       "long": {"prompt": "Describe this image in detail.", "max_new_tokens": 40}}}
SHRINK = ["model.vision=\"custom\"", "model.image_size=64", "model.patch_size=8", "model.vision_width=64",
          "model.vision_depth=2", "model.vision_heads=2", "model.grad_checkpointing=false", "batch_size=16",
          "max_steps=20", "warmup_steps=5", "save_every=10", "eval_every=0", "precision=\"fp32\"", "workers=1",
          "device=\"cpu\"", "skip_missing_text=true", "log_every=5"]


def pack_shards(data: dict, out: Path, n: int) -> str:
    """The first n training scenes as webdataset shards: <key>.png and <key>.txt (the alt-text)."""
    out.mkdir(parents=True, exist_ok=True)
    caps = {json.loads(x)["id"]: json.loads(x)["raw"] for x in Path(data["train_captions"]).read_text().splitlines()}
    manifest = [json.loads(x) for x in Path(data["train_manifest"]).read_text().splitlines()][:n]
    per = min(PER_SHARD, max(1, n // 4))
    tar = None
    for i, rec in enumerate(manifest):
        if i % per == 0:
            if tar:
                tar.close()
            tar = tarfile.open(out / f"{i // per:06d}.tar", "w")
        png = (Path(data["train_manifest"]).parent / rec["image"]).read_bytes()
        for name, blob in ((f"{rec['id']}.png", png), (f"{rec['id']}.txt", caps[rec["id"]].encode())):
            info = tarfile.TarInfo(name)
            info.size = len(blob)
            tar.addfile(info, io.BytesIO(blob))
    tar.close()
    return str(out / f"{{000000..{(len(manifest) - 1) // per:06d}}}.tar")


def torchrun(*args: str) -> list[str]:
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
            "-m", "flameclip.cli", *args]


def run_chain(out: Path, n: int, log=print) -> dict:
    sys.path.insert(0, str(ROOT / "tests"))
    from random_llm import make_tiny_llm
    from random_vlm import make_random_vlm

    from flameclip.checkpoints import find_checkpoint
    from flameclip.data.demo.build import build_demo_data
    from flameclip.demo import data_kwargs

    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    seconds: dict[str, float] = {}

    def step(name: str, cmd: list[str] | None = None, fn=None):
        t0 = time.perf_counter()
        if cmd is not None:
            done = subprocess.run(cmd, env=env, capture_output=True, text=True)
            if done.returncode:
                raise RuntimeError(f"dry run: step '{name}' failed ({done.returncode}):\n{done.stderr[-3000:]}")
            result = done.stdout
        else:
            result = fn()
        seconds[name] = time.perf_counter() - t0
        log(f"[dry run] {name}: {seconds[name]:.1f} s")
        return result

    out.mkdir(parents=True, exist_ok=True)
    kw = {**data_kwargs("tiny"), "n_train": n, "n_val": 0, "image_size": 64}
    data = step("data", fn=lambda: build_demo_data(out / "data", seed=0, progress=False, **kw))
    shards = step("pack shards", fn=lambda: pack_shards(data, out / "shards", n))
    models = step("tiny models", fn=lambda: (make_random_vlm(out / "tiny-llava"), make_tiny_llm(out / "tiny-llama")))
    (out / "prompts.json").write_text(json.dumps(PROMPTS))
    captions = out / "captions.parquet"
    step("recaption (2 processes)", torchrun("recaption", "--images", shards, "--model", str(models[0]), "--out",
                                             str(captions), "--prompts", str(out / "prompts.json"), "--batch-size",
                                             "8", "--chunk-size", "64", "--no-progress"))
    step("embed (2 processes)", torchrun("embed", "--captions", str(captions), "--out", str(out / "store"), "--llm",
                                         str(models[1]), "--prompts", "raw=single", "short=short3", "long=long7",
                                         "--skip-empty", "--shard-size", "128", "--no-progress"))
    step("train (2 processes)", torchrun("train", "--config", str(ROOT / "configs" / "flame-vitb16-cc3m.toml"),
                                         f"train_manifest=\"{shards}\"", f"store=\"{out / 'store'}\"",
                                         f"out=\"{out / 'train'}\"", *SHRINK))
    ckpt = find_checkpoint(out / "train", "latest")
    step("eval", [sys.executable, "-m", "flameclip.cli", "eval", "--checkpoint", str(ckpt), "--data",
                  str(data["suite"]), "--tasks", "emoji-glyphs,scenes-long", "--out", str(out / "eval"),
                  "--text-cache", str(out / "text-cache"), "--no-progress"])
    seconds["total"] = sum(seconds.values())
    return {"seconds": seconds, "captions": captions, "store": out / "store", "checkpoint": ckpt,
            "results": out / "eval" / "results.json"}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--images", type=int, default=2000)
    ap.add_argument("--out", default="runs/dry-run")
    args = ap.parse_args(argv)
    res = run_chain(Path(args.out), args.images)
    print(f"\n| step ({args.images:,} images) | seconds |\n|---|---:|")
    for name, s in res["seconds"].items():
        print(f"| {name} | {s:.1f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
