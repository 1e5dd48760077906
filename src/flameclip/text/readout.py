"""An LLM's final norm, output head and vocabulary: hidden states in, readable words out.

Word maps (``flameclip.explain``) decode image tokens trained to look like hidden states this way.

Which LLM. ``load_llm`` truncates the decoder and replaces the final norm by Identity, so it cannot
be used here. :func:`load_readout` loads the model with HF's own loader and keeps only its final
norm (the right class: Gemma's multiplies by ``1 + weight``, Llama's by ``weight``) and ``lm_head``
(a tied head reads the input embedding, as HF does).

Words. A token is shown if it is not a special token and its decoded text (spaces and the "Ġ"/"▁"
word markers stripped) contains a letter or digit; pure punctuation, whitespace and partial UTF-8
byte tokens are skipped. Tokens that decode to the same word (" dog" and "dog") are merged and
their probabilities added. Probabilities are those of the full-vocabulary softmax, so a region's
listed words need not sum to 1.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn as nn

# How many readable candidates are looked at per requested word: merging " dog" and "dog" can
# shrink the list, so a few more than top_k are needed.
_CANDIDATES_PER_WORD = 4


class ExplainError(ValueError):
    """A checkpoint or request word maps cannot be made for (one line, shown to the user as is)."""


@dataclass
class Readout:
    """The LLM's final norm, output head and vocabulary: hidden states -> words."""

    norm: nn.Module
    head: nn.Module  # Linear(D, V), possibly with a bias
    tokenizer: object
    words: list[str]  # per token id: the stripped word, or "" when the token is never shown
    readable: torch.Tensor  # bool [V]: words[i] != ""
    weights_sha256: str
    hidden_size: int

    @torch.no_grad()
    def probs(self, hidden: torch.Tensor, apply_norm: bool = True) -> torch.Tensor:
        """Next-token probabilities [..., V] of hidden states [..., D]."""
        x = hidden.to(torch.float32)
        if apply_norm:
            x = self.norm(x)
        return self.head(x).softmax(dim=-1)

    def top_words(self, probs: torch.Tensor, k: int) -> list[tuple[str, float]]:
        """The k most probable readable words of one distribution [V], merged by spelling."""
        masked = probs.masked_fill(~self.readable, 0.0)
        n = min(k * _CANDIDATES_PER_WORD, int(self.readable.sum()))
        values, ids = masked.topk(n)
        merged: dict[str, float] = {}
        for p, i in zip(values.tolist(), ids.tolist()):
            word = self.words[i]
            merged[word] = merged.get(word, 0.0) + p
        return sorted(merged.items(), key=lambda wp: -wp[1])[:k]


def _clean(text: str) -> str:
    # Byte-level BPE marks a leading space with "Ġ", SentencePiece with "▁"; decode() usually turns
    # them into spaces already, but not every tokenizer does.
    return text.replace("Ġ", " ").replace("▁", " ").strip()


def _vocabulary_words(tokenizer, vocab_size: int) -> list[str]:
    """Per token id the word shown for it, or "" for special and unreadable tokens."""
    special = set(tokenizer.all_special_ids)
    special.update(i for i, tok in tokenizer.added_tokens_decoder.items() if tok.special)
    n = min(len(tokenizer), vocab_size)
    decoded = tokenizer.batch_decode([[i] for i in range(n)])
    words = []
    for i, text in enumerate(decoded):
        word = _clean(text)
        # "\ufffd" is what a partial UTF-8 byte sequence decodes to: not a word on its own.
        shown = i not in special and "\ufffd" not in word and any(ch.isalnum() for ch in word)
        words.append(word if shown else "")
    # The head may have more rows than the tokenizer has tokens (padding for fast matmuls).
    return words + [""] * (vocab_size - n)


def _final_norm(model: nn.Module) -> nn.Module:
    decoder = model.get_decoder() if hasattr(model, "get_decoder") else getattr(model, "model", None)
    norm = getattr(decoder, "norm", None)
    if norm is None:
        raise ExplainError(f"{type(model).__name__}: cannot find the decoder's final norm (expected .model.norm)")
    return norm


def _load_head_modules(folder: str | Path) -> tuple[nn.Module, nn.Module]:
    """The final norm and output head of the causal LM in an HF folder, as fp32 CPU modules.

    HF's own loader reads the model (so tied heads, renamed tensors and each architecture's norm
    class are handled as HF handles them); only the two modules are kept, the decoder is dropped.
    The packaged LLMs are small enough that reading them whole costs a few seconds, once a process.
    """
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(str(folder), dtype=torch.float32, local_files_only=True)
    # A tied head keeps the embedding matrix alive through its own weight; the rest is freed.
    norm, head = _final_norm(model), model.get_output_embeddings()
    del model
    return tuple(m.float().eval().requires_grad_(False) for m in (norm, head))


# One readout kept in memory: a CLI call or test session explains many images with one LLM, and
# a big vocabulary's head is hundreds of MB.
_CACHE: dict[str, Readout] = {}


def load_readout(llm: str) -> Readout:
    """The final norm, output head and vocabulary of an LLM (packaged name, .gguf file or HF folder)."""
    from transformers import AutoTokenizer
    from transformers.utils import logging as hf_logging

    from .llm import hf_folder, resolve

    src = resolve(llm)
    if src.weights_sha256 in _CACHE:
        return _CACHE[src.weights_sha256]
    hf_logging.disable_progress_bar()
    folder = hf_folder(src)
    norm, head = _load_head_modules(folder)
    tokenizer = AutoTokenizer.from_pretrained(str(folder), local_files_only=True)
    vocab_size, hidden_size = head.weight.shape
    words = _vocabulary_words(tokenizer, vocab_size)
    readout = Readout(norm=norm, head=head, tokenizer=tokenizer, words=words,
                      readable=torch.tensor([bool(w) for w in words]), weights_sha256=src.weights_sha256,
                      hidden_size=hidden_size)
    _CACHE.clear()
    _CACHE[src.weights_sha256] = readout
    return readout
