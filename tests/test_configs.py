"""The shipped configs load, and build the models they describe."""

from pathlib import Path

import pytest

from flameclip.config import load_config
from flameclip.model import FlameModel

CONFIGS = sorted((Path(__file__).resolve().parents[1] / "configs").glob("*.toml"))


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_shipped_config_loads_and_builds(path):
    cfg = load_config(str(path))
    assert cfg.batch_size > 0 and cfg.lr > 0
    if cfg.model.vision.startswith("vit_base"):
        cfg.model.image_size = 32  # same architecture, small input: keeps the test fast
    m = FlameModel(cfg.model)
    assert sum(p.numel() for p in m.parameters()) > 0
    assert (cfg.model.text_tower == "clip") == (m.text_encoder is not None)


def test_the_llm_identity_is_one_record_for_store_checkpoint_and_queries():
    from flameclip.config import LLMIdentity

    store_fp = {"llm": "gemma3-270m", "weights_sha256": "ab" * 32, "layer": 17, "num_layers": 18, "hidden_size": 640,
                "compute_dtype": "bfloat16", "max_tokens": 512, "prompt_sets": {"raw": {"name": "single"}}}
    identity = LLMIdentity.from_record(store_fp)
    # The checkpoint keeps everything but the prompt sets (those belong to the store's columns).
    assert identity.record() == {k: v for k, v in store_fp.items() if k != "prompt_sets"}
    assert LLMIdentity.from_record(identity.record()) == identity
    # Query states are keyed by what makes them: weights, layer, dtype; a route only when inexact.
    assert identity.query_key(None, "bf16") == {"llm": "gemma3-270m", "weights_sha256": "ab" * 32, "layer": 17,
                                                "compute_dtype": "bf16"}
    causal = LLMIdentity.from_record({**store_fp, "route": "causal"})
    assert causal.query_key(None, "bf16")["route"] == "causal" and causal != identity
    # An older checkpoint without a name: the folder the user points at names it.
    assert LLMIdentity.from_record({"layer": 3}).query_key("/models/x", "fp32")["llm"] == "/models/x"


def test_with_settings_makes_a_new_config_and_names_an_unknown_key():
    from flameclip.config import TrainConfig, with_settings

    base = TrainConfig(text_columns=["raw"])
    cfg = with_settings(base, {"lr": 1e-3, "model": {"vision_depth": 2}})
    assert (cfg.lr, cfg.model.vision_depth) == (1e-3, 2)
    assert (base.lr, base.model.vision_depth) == (TrainConfig().lr, TrainConfig().model.vision_depth)
    cfg.text_columns.append("long")  # the two configs share no list
    assert base.text_columns == ["raw"]
    with pytest.raises(ValueError, match="'model.vison_depth'"):
        with_settings(base, {"model": {"vison_depth": 2}})
    with pytest.raises(ValueError, match="'batchsize'"):
        with_settings(base, {"batchsize": 2})
    with pytest.raises(ValueError, match="lr"):  # the result is validated like a loaded config
        with_settings(base, {"lr": float("nan")})


def test_load_config_on_a_base_leaves_the_base_alone():
    from flameclip.config import TrainConfig

    base = TrainConfig(lr=2e-4, text_columns=["raw"])
    cfg = load_config(None, ["model.vision_depth=2", "text_columns=[\"long\"]"], base=base)
    assert (cfg.lr, cfg.model.vision_depth, cfg.text_columns) == (2e-4, 2, ["long"])
    assert base.model.vision_depth == TrainConfig().model.vision_depth and base.text_columns == ["raw"]


def test_the_demo_sides_differ_only_where_their_settings_say():
    import dataclasses

    from flameclip.demo import SIZES, base_config, clip_config, flame_config

    sizes = SIZES["tiny"]
    base = base_config(sizes, Path("out"))
    flame, clip = flame_config(base, Path("store")), clip_config(base, sizes, Path("captions.jsonl"))
    # Both train the same image tower on the same schedule.
    for cfg in (flame, clip):
        assert (cfg.max_steps, cfg.batch_size, cfg.model.vision_width, cfg.model.vision_depth) == \
            (sizes.steps, sizes.batch_size, sizes.vision_width, sizes.vision_depth)
    assert flame.model.vision_pool == clip.model.vision_pool  # a pooling lever is given to both or neither
    assert (flame.store, flame.model.text_tower, clip.captions, clip.model.text_tower) == \
        ("store", "llm", "captions.jsonl", "clip")
    assert (clip.model.clip_width, clip.model.clip_layers) == (sizes.clip_width, sizes.clip_layers)
    assert dataclasses.asdict(base) == dataclasses.asdict(base_config(sizes, Path("out")))  # untouched


def test_the_demo_trains_in_bf16_only_where_the_arithmetic_is_native(monkeypatch):
    import torch

    import flameclip.text.llm as llm
    from flameclip.demo import training_precision

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    for found in ("bf16", "fp32"):  # what the CPU's flags say
        monkeypatch.setattr(llm, "fast_dtype", lambda device="cpu", found=found: found)
        assert training_precision("auto") == found
        assert training_precision("fp32") == "fp32" and training_precision("bf16") == "bf16"  # asked: kept
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert training_precision("auto") == "auto"  # the trainer's own choice on a GPU: bf16
