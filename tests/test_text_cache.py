"""The query-text cache: one LLM pass per text, and a bounded number of stores however it is filled."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pytest
import torch

from flameclip.store.layout import shard_file
from flameclip.text_cache import TextEmbeddingCache

FP = {"llm": "fake", "weights_sha256": "0" * 64, "layer": -1, "compute_dtype": "fp32"}


class PromptSet:
    k = 2

    @staticmethod
    def fingerprint() -> str:
        return "fake-prompts"


def states_of(text: str) -> np.ndarray:
    """A fixed [K, D] per text, independent of the cache."""
    seed = int.from_bytes(hashlib.sha256(text.encode()).digest()[:4], "little")
    return np.random.default_rng(seed).standard_normal((PromptSet.k, 6)).astype(np.float32)


class CountingEncoder:
    def __init__(self):
        self.seen: list[str] = []

    def encode(self, texts, prompt_set, progress=False):
        self.seen += texts
        return torch.from_numpy(np.stack([states_of(t) for t in texts]))


def test_texts_come_back_exact_and_the_llm_runs_once_per_text(tmp_path):
    enc = CountingEncoder()
    cache = TextEmbeddingCache(tmp_path)
    out = cache.get_or_compute(FP, PromptSet, ["a", "b", "a"], lambda: enc)
    np.testing.assert_array_equal(out.numpy(), np.stack([states_of(t) for t in ["a", "b", "a"]]))
    # A new cache object (a new process) reads the disk, not the memo.
    again = TextEmbeddingCache(tmp_path).get_or_compute(FP, PromptSet, ["b", "c"], lambda: enc)
    np.testing.assert_array_equal(again.numpy(), np.stack([states_of("b"), states_of("c")]))
    assert enc.seen == ["a", "b", "c"]


def test_one_miss_at_a_time_keeps_a_logarithmic_number_of_stores(tmp_path):
    # A search session: 100 queries, each a miss on its own.
    enc = CountingEncoder()
    texts = [f"query {i}" for i in range(100)]
    for t in texts:
        TextEmbeddingCache(tmp_path).get_or_compute(FP, PromptSet, [t], lambda: enc)
    cache = TextEmbeddingCache(tmp_path)
    folder = cache.folder(FP, PromptSet)
    segments = cache.segments(folder, FP)
    assert len([p for p in folder.iterdir() if p.is_dir()]) == len(segments) <= 8  # one store per miss: 100
    assert sum(len(s) for s in segments) == 100
    fresh = CountingEncoder()
    out = cache.get_or_compute(FP, PromptSet, texts, lambda: fresh)
    assert fresh.seen == []
    np.testing.assert_array_equal(out.numpy(), np.stack([states_of(t) for t in texts]))


def test_another_llm_never_reads_this_one(tmp_path):
    enc = CountingEncoder()
    TextEmbeddingCache(tmp_path).get_or_compute(FP, PromptSet, ["a"], lambda: enc)
    other = {**FP, "weights_sha256": "1" * 64}
    TextEmbeddingCache(tmp_path).get_or_compute(other, PromptSet, ["a"], lambda: enc)
    assert enc.seen == ["a", "a"]


@pytest.mark.parametrize("where", ["manifest", "shard"])
def test_a_damaged_segment_is_ignored_and_its_texts_encoded_again(tmp_path, where):
    enc = CountingEncoder()
    cache = TextEmbeddingCache(tmp_path)
    cache.get_or_compute(FP, PromptSet, ["a", "b"], lambda: enc)
    (seg,) = [p for p in cache.folder(FP, PromptSet).iterdir() if p.is_dir()]
    if where == "manifest":
        (seg / "manifest.json").write_text("{not json")
    else:
        data = Path(shard_file(str(seg), 0, "data"))
        data.write_bytes(data.read_bytes()[:150])
    out = TextEmbeddingCache(tmp_path).get_or_compute(FP, PromptSet, ["a", "b"], lambda: enc)
    np.testing.assert_array_equal(out.numpy(), np.stack([states_of("a"), states_of("b")]))
    assert enc.seen == ["a", "b", "a", "b"]


def test_merging_a_segment_into_one_that_holds_it_keeps_the_larger(tmp_path):
    # Two processes can write overlapping segments; merging {a, b} into {a, b, c} must not rewrite
    # (or, killed half-way, lose) the larger one, whose name the merge result shares.
    from flameclip.text_cache import _write_segment

    cache = TextEmbeddingCache(tmp_path)
    folder = cache.folder(FP, PromptSet)
    folder.mkdir(parents=True)
    big = _write_segment(folder, FP, [cache.text_id(t) for t in "abc"], np.stack([states_of(t) for t in "abc"]), 2)
    before = (big / "manifest.json").stat().st_mtime_ns
    _write_segment(folder, FP, [cache.text_id(t) for t in "ab"], np.stack([states_of(t) for t in "ab"]), 2)
    cache._merge(folder, FP, 2)
    (only,) = cache.segments(folder, FP)
    assert Path(only.root) == big and (big / "manifest.json").stat().st_mtime_ns == before
    enc = CountingEncoder()
    out = TextEmbeddingCache(tmp_path).get_or_compute(FP, PromptSet, list("cab"), lambda: enc)
    assert enc.seen == [] and np.array_equal(out.numpy(), np.stack([states_of(t) for t in "cab"]))
