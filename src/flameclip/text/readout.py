"""An LLM's final norm, output head and vocabulary: hidden states in, readable words out.

Word maps (``flameclip.explain``) decode image tokens trained to look like hidden states this way.

Which LLM. ``load_llm`` truncates the decoder and replaces the final norm by Identity, so it cannot
be used here. Only the final norm and ``lm_head`` are needed, and they are a small part of the
model, so :func:`load_readout` builds the model's skeleton on the ``meta`` device (no memory, and the
right norm class: Gemma's norm multiplies by ``1 + weight``, Llama's by ``weight``) and reads just
those tensors from the safetensors files (tied heads read the input embedding, as HF does). Only if
a folder names its tensors differently does it fall back to loading the whole model.

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


def _safetensors_index(folder: Path) -> dict[str, Path]:
    """Tensor name -> the .safetensors file holding it (headers only: nothing is read yet)."""
    from safetensors import safe_open

    index = {}
    for path in sorted(folder.glob("*.safetensors")):
        with safe_open(str(path), framework="pt") as f:
            index.update(dict.fromkeys(f.keys(), path))
    return index


def _final_norm(model: nn.Module) -> nn.Module:
    decoder = model.get_decoder() if hasattr(model, "get_decoder") else getattr(model, "model", None)
    norm = getattr(decoder, "norm", None)
    if norm is None:
        raise ExplainError(f"{type(model).__name__}: cannot find the decoder's final norm (expected .model.norm)")
    return norm


def _stored_names(module: nn.Module, aliases: dict[int, list[str]], index: dict[str, Path]) -> dict[str, str] | None:
    """The module's state-dict keys -> names of those tensors in the files, or None if one is not stored."""
    own = dict(module.named_parameters()) | dict(module.named_buffers())
    if set(own) != set(module.state_dict()):  # a non-persistent buffer: in no file
        return None
    names = {}
    for local, tensor in own.items():
        stored = [n for n in aliases[id(tensor)] if n in index]
        if not stored:
            return None
        names[local] = stored[0]
    return names


def _load_head_modules(folder: str | Path) -> tuple[nn.Module, nn.Module]:
    """The final norm and output head of the causal LM in an HF folder, as fp32 CPU modules.

    The skeleton is built on the meta device (free) to learn the modules' classes, their tensor
    names and whether the head is tied to the input embedding; then only those tensors are read.
    """
    from safetensors import safe_open
    from transformers import AutoConfig, AutoModelForCausalLM

    folder = Path(folder)
    config = AutoConfig.from_pretrained(str(folder), local_files_only=True)
    with torch.device("meta"):
        skeleton = AutoModelForCausalLM.from_config(config)
    modules = (_final_norm(skeleton), skeleton.get_output_embeddings())
    # Every name each tensor goes by: a tied head's weight is the input embedding's Parameter, and
    # the file stores it under one of its names only (usually the embedding's).
    aliases: dict[int, list[str]] = {}
    for name, tensor in [*skeleton.named_parameters(remove_duplicate=False),
                         *skeleton.named_buffers(remove_duplicate=False)]:
        aliases.setdefault(id(tensor), []).append(name)
    index = _safetensors_index(folder)
    plans = [_stored_names(m, aliases, index) for m in modules]
    if None in plans:
        # Tensors under other names (e.g. a folder written by another tool): HF's loader knows the
        # renames, at the cost of reading the whole model once.
        full = AutoModelForCausalLM.from_pretrained(str(folder), dtype=torch.float32, local_files_only=True)
        modules = (_final_norm(full), full.get_output_embeddings())
        return tuple(m.float().eval().requires_grad_(False) for m in modules)
    for module, plan in zip(modules, plans):
        state = {}
        for local, key in plan.items():
            with safe_open(str(index[key]), framework="pt") as f:
                state[local] = f.get_tensor(key).to(torch.float32)
        module.to_empty(device="cpu")
        module.load_state_dict(state, strict=True)
        module.float().eval().requires_grad_(False)
    return modules


# One readout kept in memory: a CLI call or test session explains many images with one LLM, and
# a big vocabulary's head is hundreds of MB.
_CACHE: dict[str, Readout] = {}


def load_readout(llm: str) -> Readout:
    """The final norm, output head and vocabulary of an LLM (packaged name, .gguf file or HF folder)."""
    from transformers import AutoTokenizer
    from transformers.utils import logging as hf_logging

    from .llm import _convert_gguf, resolve

    src = resolve(llm)
    if src.weights_sha256 in _CACHE:
        return _CACHE[src.weights_sha256]
    hf_logging.disable_progress_bar()
    folder = Path(src.path) if src.kind == "hf" else _convert_gguf(src)
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
