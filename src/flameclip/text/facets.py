"""Facet-decoupled attention (FDA): the K facet embeddings of a caption from one forward pass.

A caption's K facet texts share a long prefix (the prompt template with the caption in it) and
differ only in a short tail (the facet prompt). Three routes compute the same numbers:

``fda``
    One packed sequence per caption, ``shared + tail_1 + ... + tail_K + pads``. The attention mask
    lets every tail token see the shared part and the earlier tokens of its own tail only, and the
    position ids of every tail restart where the shared part ends, so each tail sees exactly what it
    would see alone. The shared tokens are computed once instead of K times.
``kv``
    The shared parts run once as a batch and leave a KV cache; the cache is repeated K times and
    the K tails of all captions run as one batch against it.
``separate``
    K ordinary forward passes over the full facet texts (the reference the other two must equal).

A fourth route exists for the ablation only and is NOT equal to the others:

``causal``
    The same packed sequence with a plain causal mask and position ids running on, as a naive
    packing would do: facet k also sees facets 1..k-1. Only facet 1 equals its separate pass.
    A store embedded this way records ``route: causal`` in its fingerprint.

Exactness rules kept by both packed routes:
* the shared part is the longest common *token* prefix of the K tokenised facets, so no
  tokenizer merge across the prefix/prompt boundary can make the routes disagree;
* pads are never attended to by real tokens, and a pad query attends only to itself (a fully
  masked row would give NaN, and a pad row that sees real keys is harmless but wasteful);
* a sliding-window layer measures distance in position ids, not in packed indices;
* the mask is a boolean ``[B, 1, Lq, Lk]`` broadcast over heads for SDPA (float additive, same
  shape, for eager attention), never a dense per-head float tensor.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from tqdm.auto import tqdm

from .llm import FrozenLLM
from .prompts import PromptSet, clean_caption, load_prompt_set

EXACT_ROUTES = ("fda", "kv", "separate")
ROUTES = (*EXACT_ROUTES, "causal")
# "auto" picks FDA: the fastest exact route on the CPU and on the GPU alike, as measured by
# benchmarks/bench_fda.py (BENCHMARKS.md).
AUTO_ROUTE = "fda"


class CaptionError(ValueError):
    """A caption that cannot be encoded (empty, or the prompts alone overflow the context)."""

    def __init__(self, index: int, message: str):
        super().__init__(message)
        self.index = index


@dataclass
class TokenizedCaption:
    shared: list[int]  # tokens common to all K facets (BOS, template, caption, ...)
    tails: list[list[int]]  # the K facet-specific token lists, each non-empty
    truncated: bool = False

    @property
    def fda_length(self) -> int:
        return len(self.shared) + sum(len(t) for t in self.tails)

    @property
    def separate_tokens(self) -> int:
        return sum(len(self.shared) + len(t) for t in self.tails)


def _common_prefix_len(seqs: list[list[int]]) -> int:
    n = min(len(s) for s in seqs)
    first = seqs[0]
    for i in range(n):
        t = first[i]
        if any(s[i] != t for s in seqs[1:]):
            return i
    return n


def tokenize_caption(tokenizer, prompt_set: PromptSet, caption: str, max_tokens: int, index: int = 0) -> TokenizedCaption:
    """Tokenise the K facets of one caption, truncating inside the caption to fit ``max_tokens``.

    The prompts are never cut: only caption tokens are dropped, from the end.
    """
    text = clean_caption(caption) if isinstance(caption, str) else ""
    if not text:
        raise CaptionError(index, f"caption {index} is empty")
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as e:  # a lone surrogate: no tokenizer can take it
        raise CaptionError(index, f"caption {index} is not valid Unicode (a lone surrogate {text[e.start]!r} at "
                                  f"character {e.start}); fix the captions file") from None
    truncated = False
    for _ in range(8):
        facets = [tokenizer(t, add_special_tokens=True)["input_ids"] for t in prompt_set.render(text)]
        overflow = max(len(f) for f in facets) - max_tokens
        if overflow <= 0:
            break
        cap_ids = tokenizer(text, add_special_tokens=False)["input_ids"]
        keep = len(cap_ids) - overflow - 2  # a little slack: re-tokenising the cut text can merge differently
        if keep <= 0:
            raise CaptionError(
                index, f"caption {index}: the prompt set '{prompt_set.name}' alone needs more than {max_tokens} tokens"
            )
        text = tokenizer.decode(cap_ids[:keep], skip_special_tokens=True).rstrip()
        truncated = True
    else:  # pragma: no cover - the loop always shrinks the caption
        raise CaptionError(index, f"caption {index}: could not be truncated to {max_tokens} tokens")
    # Keep at least one token in every tail: it is where the facet is read.
    n_shared = min(_common_prefix_len(facets), min(len(f) for f in facets) - 1)
    return TokenizedCaption(facets[0][:n_shared], [f[n_shared:] for f in facets], truncated)


# ----------------------------------------------------------------------------------------------
# Masks


def _allowed(q_pos, q_seg, k_pos, k_seg, self_key_index, window: int | None):
    """Boolean [B, Lq, Lk]: may query i attend to key j?

    seg 0 is the shared part, seg k >= 1 facet k, -1 padding. A real query sees real keys of the
    shared part or of its own facet, at a position no later than its own (and within the sliding
    window if any). A pad query sees only itself.
    """
    qp, kp = q_pos[:, :, None], k_pos[:, None, :]
    qs, ks = q_seg[:, :, None], k_seg[:, None, :]
    ok = (qs >= 0) & (ks >= 0) & ((ks == 0) | (ks == qs)) & (kp <= qp)
    if window is not None:
        ok &= (qp - kp) < window
    lk = k_pos.shape[1]
    diag = torch.zeros(q_pos.shape[1], lk, dtype=torch.bool, device=q_pos.device)
    diag[torch.arange(q_pos.shape[1], device=q_pos.device), self_key_index] = True
    return ok | ((qs < 0) & diag[None])


def _layer_windows(config) -> dict[str, int | None] | None:
    """None for one mask for all layers (window in the single entry), else a window per layer type."""
    types = getattr(config, "layer_types", None)
    if types is None:
        # e.g. Mistral: one (optional) sliding window for every layer.
        return {"all": getattr(config, "sliding_window", None)}
    windows = {}
    for t in set(types):
        windows[t] = getattr(config, "sliding_window", None) if "sliding" in t else None
    return windows


def _build_masks(llm: FrozenLLM, q_pos, q_seg, k_pos, k_seg, self_key_index):
    windows = _layer_windows(llm.model.config)
    cache: dict[int | None, torch.Tensor] = {}
    for w in set(windows.values()):
        ok = _allowed(q_pos, q_seg, k_pos, k_seg, self_key_index, w)[:, None]
        if llm.attn_implementation == "eager":
            neg = torch.finfo(llm.dtype).min
            ok = torch.zeros(ok.shape, dtype=llm.dtype, device=ok.device).masked_fill_(~ok, neg)
        cache[w] = ok
    if "all" in windows:
        return cache[windows["all"]]
    return {t: cache[w] for t, w in windows.items()}


# ----------------------------------------------------------------------------------------------
# Routes


def _pad(rows: list[list[int]], pad_id: int, fill=None):
    width = max(len(r) for r in rows)
    out = torch.full((len(rows), width), pad_id if fill is None else fill, dtype=torch.long)
    for i, r in enumerate(rows):
        out[i, : len(r)] = torch.as_tensor(r, dtype=torch.long)
    return out


@dataclass
class PackedBatch:
    input_ids: torch.Tensor  # [B, L]
    position_ids: torch.Tensor  # [B, L]
    segment: torch.Tensor  # [B, L]: 0 shared, k facet k (1-based), -1 pad
    read_index: torch.Tensor  # [B, K]: packed index of each facet's last token


def pack_fda(items: list[TokenizedCaption], pad_id: int) -> PackedBatch:
    ids, pos, seg, read = [], [], [], []
    for it in items:
        p = len(it.shared)
        r_ids, r_pos, r_seg, r_read = list(it.shared), list(range(p)), [0] * p, []
        for k, tail in enumerate(it.tails, start=1):
            r_ids += tail
            r_pos += range(p, p + len(tail))  # every facet restarts where the shared part ends
            r_seg += [k] * len(tail)
            r_read.append(len(r_ids) - 1)
        ids.append(r_ids), pos.append(r_pos), seg.append(r_seg), read.append(r_read)
    return PackedBatch(_pad(ids, pad_id), _pad(pos, 0, 0), _pad(seg, 0, -1), torch.tensor(read))


def _run_packed(llm: FrozenLLM, items: list[TokenizedCaption], decoupled: bool) -> torch.Tensor:
    """One pass over the packed sequences; the state at each facet's read index [N, K, D].

    decoupled: FDA's mask and positions (each facet sees the shared part and itself, positioned as
    if alone). Otherwise the causal ablation: one segment, positions 0..L-1, every token sees all
    earlier real tokens.
    """
    dev = llm.device
    b = pack_fda(items, llm.tokenizer.pad_token_id)
    pos, seg = b.position_ids.to(dev), b.segment.to(dev)
    if not decoupled:
        real = seg >= 0
        pos = torch.arange(seg.shape[1], device=dev).expand_as(seg) * real
        seg = torch.where(real, torch.zeros_like(seg), seg)  # one segment: nothing is decoupled
    mask = _build_masks(llm, pos, seg, pos, seg, torch.arange(pos.shape[1], device=dev))
    h = llm.model(input_ids=b.input_ids.to(dev), position_ids=pos, attention_mask=mask, use_cache=False).last_hidden_state
    rows = torch.arange(len(items), device=dev)[:, None]
    return h[rows, b.read_index.to(dev)].float()


@torch.inference_mode()
def _run_fda(llm: FrozenLLM, items: list[TokenizedCaption]) -> torch.Tensor:
    return _run_packed(llm, items, decoupled=True)


@torch.inference_mode()
def _run_kv(llm: FrozenLLM, items: list[TokenizedCaption]) -> torch.Tensor:
    from transformers import DynamicCache

    dev, pad_id = llm.device, llm.tokenizer.pad_token_id
    n, k = len(items), len(items[0].tails)
    # Stage 1: the shared parts, once.
    shared = [it.shared for it in items]
    s_ids = _pad(shared, pad_id).to(dev)
    p_max = s_ids.shape[1]
    s_pos = torch.arange(p_max, device=dev).expand(n, p_max)
    s_seg = _pad([[0] * len(s) for s in shared], 0, -1).to(dev)
    mask = _build_masks(llm, s_pos, s_seg, s_pos, s_seg, torch.arange(p_max, device=dev))
    # A plain cache: a sliding-window cache would drop keys this route still indexes.
    cache = DynamicCache()
    llm.model(input_ids=s_ids, position_ids=s_pos, attention_mask=mask, past_key_values=cache, use_cache=True)
    cache.batch_repeat_interleave(k)
    # Stage 2: all K tails of all captions against the repeated cache; row i*K + j is facet j of caption i.
    tails = [t for it in items for t in it.tails]
    starts = torch.tensor([len(it.shared) for it in items for _ in range(k)], device=dev)
    t_ids = _pad(tails, pad_id).to(dev)
    t_max = t_ids.shape[1]
    t_pos = starts[:, None] + torch.arange(t_max, device=dev)
    t_seg = _pad([[1] * len(t) for t in tails], 0, -1).to(dev)
    k_pos = torch.cat([s_pos.repeat_interleave(k, 0), t_pos], dim=1)
    k_seg = torch.cat([s_seg.repeat_interleave(k, 0), t_seg], dim=1)
    mask = _build_masks(llm, t_pos, t_seg, k_pos, k_seg, p_max + torch.arange(t_max, device=dev))
    out = llm.model(input_ids=t_ids, position_ids=t_pos, attention_mask=mask, past_key_values=cache, use_cache=True)
    last = torch.tensor([len(t) - 1 for t in tails], device=dev)
    h = out.last_hidden_state[torch.arange(n * k, device=dev), last]
    return h.float().view(n, k, -1)


@torch.inference_mode()
def _run_separate(llm: FrozenLLM, items: list[TokenizedCaption]) -> torch.Tensor:
    """K ordinary passes, HF building its own causal + padding masks (right padding)."""
    dev, pad_id = llm.device, llm.tokenizer.pad_token_id
    outs = []
    for j in range(len(items[0].tails)):
        seqs = [it.shared + it.tails[j] for it in items]
        ids = _pad(seqs, pad_id).to(dev)
        attn = _pad([[1] * len(s) for s in seqs], 0, 0).to(dev)
        h = llm.model(input_ids=ids, attention_mask=attn, use_cache=False).last_hidden_state
        last = torch.tensor([len(s) - 1 for s in seqs], device=dev)
        outs.append(h[torch.arange(len(seqs), device=dev), last].float())
    return torch.stack(outs, dim=1)


@torch.inference_mode()
def _run_causal(llm: FrozenLLM, items: list[TokenizedCaption]) -> torch.Tensor:
    """The packed sequence without decoupling: every token sees all earlier real tokens."""
    return _run_packed(llm, items, decoupled=False)


_RUNNERS = {"fda": _run_fda, "kv": _run_kv, "separate": _run_separate, "causal": _run_causal}


@dataclass
class EncodeStats:
    captions: int = 0
    truncated: int = 0
    tokens: int = 0  # tokens actually run through the model (excluding padding)


# The longest facet sequence read by default, prompt included. The demo's longest long7 facet is 268
# tokens and MLLM recaptions of a few hundred words stay under it; a runaway caption (50,000
# characters) would otherwise cost O(L^2) attention up to the model's whole context (8,192 tokens:
# 776 s for 5 such captions on a 2-core CPU). Raise it with --max-tokens; cut captions are counted.
DEFAULT_MAX_TOKENS = 512


class FacetEncoder:
    """``encode(captions, prompt_set) -> [N, K, D]`` over a frozen LLM.

    Args:
        llm: the frozen, truncated LLM (see ``load_llm``).
        route: ``fda`` (one packed pass), ``kv`` (shared-prefix KV cache), ``separate`` (K passes)
            or ``auto`` (the measured-fastest for the device); ``causal`` (packed without the
            decoupled mask, not exact) is for the ablation.
        max_tokens: the longest facet sequence allowed; longer captions are truncated inside the
            caption. Defaults to ``DEFAULT_MAX_TOKENS`` (or the model's context, if shorter).
        batch_size: captions per forward pass.
    """

    def __init__(self, llm: FrozenLLM, route: str = "auto", max_tokens: int | None = None, batch_size: int = 16):
        if route == "auto":
            route = AUTO_ROUTE
        if route not in ROUTES:
            raise ValueError(f"route must be one of {ROUTES} or 'auto', got '{route}'")
        self.llm, self.route, self.batch_size = llm, route, batch_size
        self.max_tokens = min(max_tokens or DEFAULT_MAX_TOKENS, llm.max_positions)
        self.stats = EncodeStats()

    def _tokens_run(self, items: list[TokenizedCaption]) -> int:
        """Tokens this route puts through the model (padding excluded)."""
        return sum(it.separate_tokens if self.route == "separate" else it.fda_length for it in items)

    def tokenize(self, captions: list[str], prompt_set: PromptSet, start_index: int = 0) -> list[TokenizedCaption]:
        return [
            tokenize_caption(self.llm.tokenizer, prompt_set, c, self.max_tokens, index=start_index + i)
            for i, c in enumerate(captions)
        ]

    def encode_tokenized(self, items: list[TokenizedCaption], progress: bool = False, on_batch=None) -> torch.Tensor:
        """Encode pre-tokenised captions; batches are formed by length, results keep input order.

        ``on_batch(n_captions, n_tokens)`` is called after every batch (for an outer progress bar).
        """
        if not items:
            return torch.zeros(0, 0, self.llm.hidden_size)
        order = sorted(range(len(items)), key=lambda i: items[i].fda_length)
        out = torch.empty(len(items), len(items[0].tails), self.llm.hidden_size)
        run = _RUNNERS[self.route]
        bar = tqdm(total=len(items), unit="cap", disable=not progress, desc=f"encode[{self.route}]")
        for s in range(0, len(order), self.batch_size):
            idx = order[s : s + self.batch_size]
            batch = [items[i] for i in idx]
            out[idx] = run(self.llm, batch).cpu()
            bar.update(len(idx))
            if on_batch is not None:
                on_batch(len(idx), self._tokens_run(batch))
        bar.close()
        self.stats.captions += len(items)
        self.stats.tokens += self._tokens_run(items)
        self.stats.truncated += sum(it.truncated for it in items)
        return out

    def encode(self, captions: list[str], prompt_set: str | PromptSet = "long7", progress: bool = False) -> torch.Tensor:
        ps = load_prompt_set(prompt_set)
        return self.encode_tokenized(self.tokenize(list(captions), ps), progress=progress)


def encode(llm: FrozenLLM, captions: list[str], prompt_set: str | PromptSet = "long7", route: str = "auto", **kw) -> torch.Tensor:
    """Facet embeddings ``[N, K, D]`` (float32, CPU) of ``captions`` under ``prompt_set``."""
    return FacetEncoder(llm, route=route, **kw).encode(captions, prompt_set)
