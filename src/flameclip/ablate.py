"""``flameclip ablate``: what each part of FLAME buys, measured on the demo's data.

Run after ``flameclip demo`` (same ``--out``): the ablations reuse its data, its text cache, and its
FLAME and CLIP runs as reference rows. Each variant embeds what it needs, trains FLAME with the
demo's sizes and evaluates; everything is resumable (finished variants are skipped).

    facets  long captions only, embedded with 1, 3 or 7 facet prompts (single / short3 / long7);
            long-caption queries are encoded with the same prompts as training
    mask    long7 in one packed pass with the decoupled mask (FDA) vs the same packed sequence
            with a plain causal mask (route ``causal``: later facets see the earlier prompts)
    layer   the LLM layer read: the demo's (second to last) vs the middle layer

(FLAME on 25% and 50% of the scenes against CLIP on 100%, at equal steps, is part of the demo
itself: ``flameclip demo --data-efficiency`` and its data-efficiency figure.)
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, replace
from pathlib import Path

from .demo import DEMO_PROMPTS

GROUPS = ("facets", "mask", "layer")
FACET_SETS = {1: "single", 3: "short3", 7: "long7"}
LONG_TASKS = ("scenes-long", "scenes-novel-phrasing")  # queried with the prompt set a variant stored long captions in


@dataclass
class Variant:
    group: str
    label: str
    prompts: dict[str, str] | None = None  # columns -> prompt set for a new store; None: the demo's store
    route: str = "auto"
    layer: int = -2
    positives: int = 6
    long_mode: str = "long7"  # prompt set for the long-caption queries
    tasks: tuple[str, ...] = ()  # suite task names to run; empty: all
    same_as: str = ""  # the key of an identical variant of another group: its run is reused

    @property
    def key(self) -> str:
        if self.same_as:
            return self.same_as
        return "".join(ch if ch.isalnum() else "-" for ch in f"{self.group}-{self.label}").strip("-").lower()


def middle_layer(llm: str) -> int:
    """The middle decoder layer of an LLM, read from its config (no weights loaded)."""
    from transformers import AutoConfig

    from .text.llm import hf_folder, resolve

    src = resolve(llm)
    folder = hf_folder(src)
    return AutoConfig.from_pretrained(str(folder), local_files_only=True).num_hidden_layers // 2


def variants(groups: list[str], llm: str) -> list[Variant]:
    quick = ("emoji-glyphs", "scenes-long")  # the tasks the text-side ablations are about
    out = []
    if "facets" in groups:
        for k, ps in FACET_SETS.items():
            out.append(Variant("facets", f"K={k}", prompts={"long": ps}, positives=min(k, 6), long_mode=ps,
                               tasks=quick))
    if "mask" in groups:
        # The facets group's K=7 run is exactly this one (FDA is what "auto" picks): run it once.
        out.append(Variant("mask", "FDA", prompts={"long": "long7"}, tasks=quick, same_as="facets-k-7"))
        out.append(Variant("mask", "no decoupling", prompts={"long": "long7"}, route="causal", tasks=quick))
    if "layer" in groups:
        mid = middle_layer(llm)
        out.append(Variant("layer", f"layer {mid}", prompts=dict(DEMO_PROMPTS), layer=mid,
                           long_mode=DEMO_PROMPTS["long"]))
    return out


def run_ablations(base: str | Path = "runs/demo", groups: list[str] | None = None, seed: int = 0,
                  workers: int = -1, precision: str = "auto", progress: bool = True) -> dict:
    from .data.demo.build import build_demo_data
    from .demo import (SIZES, base_config, data_kwargs, demo_suite, flame_config, resume_setting, store_dir,
                       training_precision)
    from .embed import EmbedConfig, run_embed
    from .text.llm import fast_dtype
    from .evaluate.report import console_table, write_report
    from .evaluate.results import Results
    from .evaluate.tasks import new_results, run_suite
    from .inference import load
    from .train import train

    base = Path(base)
    demo_results = base / "report" / "results.json"
    if not demo_results.exists():
        raise FileNotFoundError(f"{base} holds no finished demo (no report/results.json): "
                                f"run `flameclip demo --out {base}` first")
    reference = Results.load(demo_results)
    demo = reference["demo"]
    llm, scale = demo["llm"], demo["scale"]
    sizes = SIZES[scale]
    precision = training_precision(precision)
    paths = build_demo_data(base / "data", seed=seed, progress=False, **data_kwargs(scale))
    specs = demo_suite(paths["suite"])
    root = base / "ablations"
    groups = list(groups or GROUPS)
    unknown = [g for g in groups if g not in GROUPS]
    if unknown:
        raise ValueError(f"unknown ablation group(s) {unknown}: choose from {', '.join(GROUPS)}")

    rows: dict[str, list[tuple[str, str, list[dict]]]] = {g: [] for g in groups}
    seconds = {}
    for v in variants(groups, llm):
        t0 = time.perf_counter()
        vdir = root / v.key
        done_file = vdir / "eval.json"
        if done_file.exists():
            rows[v.group].append((v, str(vdir), json.loads(done_file.read_text())))
            continue
        print(f"[ablate] {v.group}: {v.label}", flush=True)
        store = store_dir(base, llm)
        if v.prompts is not None:
            store = vdir / "store"
            run_embed(EmbedConfig(captions=str(paths["train_captions"]), out=str(store), llm=llm, prompts=v.prompts,
                                  route=v.route, layer=v.layer, compute_dtype=fast_dtype(), shard_size=256),
                      progress=progress)
        elif not store.exists():
            raise FileNotFoundError(f"the demo's store was not found under {base}: run the demo again")
        run_dir = vdir / "train"
        cfg = flame_config(base_config(sizes, run_dir, workers, precision), store, positives=v.positives,
                           train_manifest=str(paths["fit_manifest"]), resume=resume_setting(run_dir))
        ckpt = train(cfg, progress=progress).checkpoint
        model = load(ckpt, text_cache=base / "text-cache", progress=progress)
        chosen = [replace(s, mode=v.long_mode) if s.name in LONG_TASKS else s
                  for s in specs if not v.tasks or s.name in v.tasks]
        entries = run_suite([(v.label, ckpt, model)], chosen).rows
        vdir.mkdir(parents=True, exist_ok=True)
        done_file.write_text(json.dumps(entries, indent=2))
        seconds[v.key] = time.perf_counter() - t0
        print(f"[ablate] {v.group}: {v.label}: {seconds[v.key]:.0f} s", flush=True)
        rows[v.group].append((v, str(ckpt), entries))

    # The demo's own runs as reference rows, where the group compares against them.
    demo_rows = {c["label"]: [r for r in reference.rows if r["checkpoint"] == c["label"]]
                 for c in reference.checkpoints}
    refs = {"layer": [("FLAME", f"layer {_demo_layer(reference)} (demo)")]}
    summary = {}
    for group in groups:
        results = new_results()
        for src_label, label in refs.get(group, []):
            results.checkpoints.append({"label": label, "path": str(base)})
            results.rows.extend({**r, "checkpoint": label} for r in demo_rows.get(src_label, []))
        for v, path, entries in rows[group]:
            results.checkpoints.append({"label": v.label, "path": path})
            for e in entries:
                e = {**e, "checkpoint": v.label}
                if group == "facets" and e.get("dataset") == "scenes-long":
                    e["mode"] = "as trained"  # K differs per row on purpose: one table row for all
                results.rows.append(e)
        results["ablation"] = {"group": group, "llm": llm, "scale": scale}
        write_report(results, root / group / "report")
        print(f"\n== ablation: {group} ==")
        print(console_table(results))
        summary[group] = results
    (root / "ablations.json").write_text(json.dumps({"seconds": seconds, "groups": groups}, indent=2))
    return summary


def _demo_layer(reference: dict) -> str:
    for c in reference.get("checkpoints", []):
        if c.get("label") == "FLAME":
            try:
                from .model import FlameModel

                return str(FlameModel.from_pretrained(c["path"]).cfg.llm.get("layer"))
            except (OSError, ValueError, KeyError):
                break
    return "-2"
