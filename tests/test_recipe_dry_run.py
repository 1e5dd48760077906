"""The CC3M recipe's whole chain on 2,000 images, two processes per step (benchmarks/dry_run_recipe.py)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from flameclip.data.captions import read_captions
from flameclip.store import EmbeddingStore

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
from dry_run_recipe import run_chain  # noqa: E402

N = 2000  # about a minute on 2 cores


@pytest.mark.slow
def test_shards_recaption_embed_train_eval(tmp_path):
    res = run_chain(tmp_path / "dry", N, log=lambda line: None)
    table = read_captions(res["captions"], ["raw", "short", "long"])
    alt = {json.loads(x)["id"]: json.loads(x)["raw"]
           for x in (tmp_path / "dry" / "data" / "train" / "captions.jsonl").read_text().splitlines()}
    assert table.ids == [f"train-{i:06d}" for i in range(N)]  # every image, in shard order, once
    assert table.columns["raw"] == [alt[i] for i in table.ids]  # the alt-text from each sample's .txt
    store = EmbeddingStore(res["store"])
    stored = list(store.ids())
    assert stored == [i for i in table.ids if i in set(stored)] and len(stored) >= N // 2  # in order, most kept
    assert store.num_rows == 1 + 3 + 7
    assert res["checkpoint"].name == "step-0000020"
    results = json.loads(res["results"].read_text())["results"]
    assert sorted(r["task"] for r in results) == ["retrieval", "zeroshot"]
    assert all(0.0 <= v <= 1.0 for r in results for v in r["metrics"].values() if isinstance(v, float))
