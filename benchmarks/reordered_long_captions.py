"""A demo folder whose training captions have a second long caption per scene, objects in another order.

The demo's long caption names a scene's objects in reading order. This writes, beside a finished
demo, a folder that shares its images and splits and whose captions.jsonl gains a ``long_orders``
column: the same scene described by the same writer (``long_caption``) with its objects in a random
order and another phrasing seed, so every sentence stays true. Embed it, then train on it with the
sweep (FLAME reads every stored column; CLIP's entry "softmax-lr5e-4 long-orders" names the column):

    python benchmarks/reordered_long_captions.py --demo runs/demo --out runs/demo-orders
    flameclip embed --captions runs/demo-orders/data/train/captions.jsonl --out runs/demo-orders/store-gemma3-270m \\
        --llm gemma3-270m --prompts raw=single short=short3 long=long7 long_orders=long7 --compute-dtype bf16
    python benchmarks/sweep_demo.py --demo runs/demo-orders --side flame --steps 1500 --precision bf16 \\
        --only "sigmoid-b3.5-lr5e-4 whiten-0.75 conv-stem"
"""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path
from types import SimpleNamespace

import numpy as np


def cell_of(position: str) -> int:
    from flameclip.data.demo.scenes import COLS, ROWS

    if position == "centre":
        return 4
    row, col = position.split()
    return ROWS.index(row) * 3 + COLS.index(col)


def reordered_caption(scene: dict, rng: np.random.Generator) -> str | None:
    """The long caption of a scene record (scenes.jsonl) with its objects shuffled; None for one object."""
    from flameclip.data.demo.scenes import Background, Scene, SceneObject, long_caption

    if len(scene["objects"]) < 2:
        return None
    # long_caption reads names, cells, size words and the longer side in pixels (for the largest
    # and smallest object); the glyph itself and the centre are not needed.
    objs = [SceneObject(SimpleNamespace(name=o["name"]), cell_of(o["position"]), o["size"],
                        max(o["box"][2] - o["box"][0], o["box"][3] - o["box"][1]), 0, 0) for o in scene["objects"]]
    order = rng.permutation(len(objs))
    bg = Background(scene["background"]["kind"], tuple(scene["background"]["colours"]))
    return long_caption(Scene(scene["size"], bg, tuple(objs[i] for i in order), int(rng.integers(2**31))))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--demo", default="runs/demo")
    ap.add_argument("--out", default="runs/demo-orders")
    ap.add_argument("--seed", type=int, default=7)
    args = ap.parse_args(argv)
    src, dst = Path(args.demo) / "data" / "train", Path(args.out) / "data" / "train"
    dst.mkdir(parents=True, exist_ok=True)
    for name in ("fit.jsonl", "val.jsonl", "manifest.jsonl", "scenes.jsonl"):
        shutil.copyfile(src / name, dst / name)
    if not (dst / "images").exists():
        (dst / "images").symlink_to((src / "images").resolve())
    scenes = {r["id"]: r for r in map(json.loads, (src / "scenes.jsonl").read_text(encoding="utf-8").splitlines())}
    rows = []
    for k, row in enumerate(map(json.loads, (src / "captions.jsonl").read_text(encoding="utf-8").splitlines())):
        other = reordered_caption(scenes[row["id"]], np.random.default_rng([args.seed, k]))
        rows.append({**row, "long_orders": other or row["long"]})
    (dst / "captions.jsonl").write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows),
                                        encoding="utf-8")
    print(f"{len(rows)} captions with a reordered long column -> {dst / 'captions.jsonl'}")
    print("example:", rows[0]["long_orders"])
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
