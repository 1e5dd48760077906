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
