"""Baselines trained by the same loop as FLAME, for comparison."""

from .clip_text import CLIP_VOCAB_SIZE, ClipTextTower, clip_tokenizer

__all__ = ["CLIP_VOCAB_SIZE", "ClipTextTower", "clip_tokenizer"]
