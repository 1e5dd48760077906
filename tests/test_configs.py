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
