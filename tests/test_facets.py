"""Facet-decoupled attention must equal K separate passes, on real and tiny random models.

The reference below is deliberately naive: for every caption and facet, one forward pass of the
plain HF decoder over ``shared + tail`` with no mask and no padding at all. It shares no code with
the packed routes except tokenisation.
"""

import pytest
import torch
from transformers import (
    AutoModelForCausalLM,
    Gemma3TextConfig,
    LlamaConfig,
    MistralConfig,
    Qwen2Config,
)

from flameclip.text.facets import CaptionError, FacetEncoder, tokenize_caption
from flameclip.text.llm import LLMSource, from_model
from flameclip.text.prompts import load_prompt_set

from .conftest import CAPTIONS

# Relative to each vector's norm. fp32 measures ~1e-6; the bound allowed is 1e-4.
TOL = 1e-5


def relative_error(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a - b).norm(dim=-1) / b.norm(dim=-1).clamp_min(1e-12)).max().item()


@torch.inference_mode()
def reference(llm, captions, prompt_set, max_tokens=100_000):
    """K independent, unpadded, unmasked passes per caption."""
    ps = load_prompt_set(prompt_set)
    out = []
    for i, c in enumerate(captions):
        item = tokenize_caption(llm.tokenizer, ps, c, max_tokens, index=i)
        rows = []
        for tail in item.tails:
            ids = torch.tensor([item.shared + tail])
            rows.append(llm.model(input_ids=ids, use_cache=False).last_hidden_state[0, -1].float())
        out.append(torch.stack(rows))
    return torch.stack(out)


def tiny_config(arch: str):
    common = dict(
        vocab_size=49152,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=4,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=2048,
    )
    if arch == "llama":
        return LlamaConfig(**common)
    if arch == "mistral":
        # A window far shorter than the long caption, so the sliding mask really matters.
        return MistralConfig(**common, sliding_window=24)
    if arch == "qwen2":
        return Qwen2Config(**common, use_sliding_window=True, sliding_window=24, max_window_layers=2)
    if arch == "gemma3":
        return Gemma3TextConfig(
            **common,
            head_dim=16,
            query_pre_attn_scalar=16,
            sliding_window=24,
            layer_types=["sliding_attention", "full_attention"] * 2,
        )
    raise ValueError(arch)


def tiny_llm(arch: str, attn: str, tokenizer):
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(tiny_config(arch), attn_implementation=attn, dtype=torch.float32)
    return from_model(model, tokenizer, LLMSource(f"tiny-{arch}", "test", "", "0" * 64), layer=-2, attn_implementation=attn)


@pytest.mark.slow
@pytest.mark.parametrize("route", ["fda", "kv", "separate"])
def test_real_smollm2_routes_equal_separate_passes(smollm2, route):
    ref = reference(smollm2, CAPTIONS, "long7")
    got = FacetEncoder(smollm2, route=route, batch_size=8).encode(CAPTIONS, "long7")
    assert got.shape == (len(CAPTIONS), 7, smollm2.hidden_size)
    assert relative_error(got, ref) < TOL


def test_real_smollm2_caption_alone_equals_in_batch(smollm2):
    enc = FacetEncoder(smollm2, route="fda", batch_size=8)
    batch = enc.encode(CAPTIONS, "short3")
    for i, c in enumerate(CAPTIONS):
        alone = enc.encode([c], "short3")[0]
        assert relative_error(alone, batch[i]) < TOL


def test_facets_differ_from_each_other(smollm2):
    # Guards against a mask so strict that every facet collapses to the shared prefix's state.
    e = FacetEncoder(smollm2, route="fda").encode(CAPTIONS[:2], "long7")
    for i in range(7):
        for j in range(i + 1, 7):
            assert relative_error(e[:, i], e[:, j]) > 1e-2


@pytest.mark.parametrize("arch", ["llama", "qwen2", "gemma3", "mistral"])
@pytest.mark.parametrize("attn", ["sdpa", "eager"])
def test_tiny_architectures_fda_and_kv_equal_separate(tokenizer, arch, attn):
    llm = tiny_llm(arch, attn, tokenizer)
    ref = reference(llm, CAPTIONS, "long7")
    for route in ("fda", "kv"):
        got = FacetEncoder(llm, route=route, batch_size=8).encode(CAPTIONS, "long7")
        assert relative_error(got, ref) < TOL, (arch, attn, route)


def test_sliding_window_is_exercised(tokenizer):
    # If the sliding window were ignored, the long caption's facets would change: prove the window
    # is shorter than the sequence by comparing with the same weights and no window at all.
    llm = tiny_llm("mistral", "sdpa", tokenizer)
    windowed = FacetEncoder(llm, route="fda").encode(CAPTIONS[3:4], "long7")
    llm.model.config.sliding_window = None
    unwindowed = reference(llm, CAPTIONS[3:4], "long7")
    assert relative_error(windowed, unwindowed) > 1e-3


def test_layer_selection_reads_the_requested_layer(tokenizer):
    torch.manual_seed(0)
    full = AutoModelForCausalLM.from_config(tiny_config("llama"), dtype=torch.float32).eval()
    ids = torch.tensor([tokenizer("hello there")["input_ids"]])
    with torch.inference_mode():
        hs = full(input_ids=ids, output_hidden_states=True).hidden_states
    for layer in (1, 2, -2):
        torch.manual_seed(0)
        m = AutoModelForCausalLM.from_config(tiny_config("llama"), dtype=torch.float32)
        llm = from_model(m, tokenizer, LLMSource("t", "test", "", ""), layer=layer)
        assert len(llm.model.layers) == llm.layer  # layers above the read one are not kept
        with torch.inference_mode():
            h = llm.model(input_ids=ids).last_hidden_state
        assert torch.allclose(h, hs[layer], atol=1e-6)


def test_shared_prefix_is_the_rendered_prefix(tokenizer):
    # The prompt sets end the prefix before its space, so the prefix tokens are an exact prefix of
    # each facet: the shared part is the whole prefix, and each tail is exactly one prompt.
    caption = CAPTIONS[1]
    for name in ("short3", "long7"):
        ps = load_prompt_set(name)
        item = tokenize_caption(tokenizer, ps, caption, 10_000)
        assert item.shared == tokenizer(ps.prefix.replace("{caption}", caption))["input_ids"]
        assert [tokenizer.decode(t) for t in item.tails] == list(ps.prompts)
    # With one facet the whole text is shared but its last token, where the state is read.
    ps = load_prompt_set("single")
    item = tokenize_caption(tokenizer, ps, caption, 10_000)
    assert item.shared + item.tails[0] == tokenizer(ps.render(caption)[0])["input_ids"]
    assert len(item.tails[0]) == 1


def test_long_caption_truncated_inside_caption_not_prompts(smollm2):
    enc = FacetEncoder(smollm2, route="fda", max_tokens=64)
    items = enc.tokenize([CAPTIONS[3], CAPTIONS[0]], load_prompt_set("long7"))
    assert items[0].truncated and not items[1].truncated
    assert max(len(items[0].shared) + len(t) for t in items[0].tails) <= 64
    # The prompts survive whole: every tail is the untouched prompt.
    ps = load_prompt_set("long7")
    assert [smollm2.tokenizer.decode(t) for t in items[0].tails] == list(ps.prompts)
    out = enc.encode_tokenized(items)
    assert enc.stats.truncated == 1 and out.shape[0] == 2


def test_empty_caption_is_an_error_naming_the_sample(smollm2):
    enc = FacetEncoder(smollm2)
    with pytest.raises(CaptionError, match="caption 1 is empty"):
        enc.encode(["fine", "   "], "single")


@pytest.mark.slow
def test_causal_ablation_route_is_not_decoupled(smollm2):
    # Without the decoupled mask facet 1 still sees only the shared part (it is first), but every
    # later facet also sees the prompts before it: it must differ from its separate pass.
    ref = reference(smollm2, CAPTIONS, "long7")
    got = FacetEncoder(smollm2, route="causal", batch_size=2).encode(CAPTIONS, "long7")
    assert relative_error(got[:, 0], ref[:, 0]) < TOL
    for k in range(1, ref.shape[1]):
        assert relative_error(got[:, k], ref[:, k]) > 1e-2, k


def test_the_mask_at_the_token_cap_is_boolean_and_shared_by_the_heads():
    # A caption at the 512-token cap: the mask must not be a float [B, heads, L, L] tensor (at the
    # 8,192-token context that was 256 MiB per head in fp32). Bool, one copy broadcast over heads.
    from types import SimpleNamespace

    from flameclip.text.facets import DEFAULT_MAX_TOKENS, _build_masks

    B, L = 2, DEFAULT_MAX_TOKENS
    pos = torch.arange(L).expand(B, L)
    seg = torch.zeros(B, L, dtype=torch.long)
    seg[:, L // 2:] = 1
    llm = SimpleNamespace(model=SimpleNamespace(config=SimpleNamespace()), attn_implementation="sdpa",
                          dtype=torch.float32)
    mask = _build_masks(llm, pos, seg, pos, seg, torch.arange(L))
    assert mask.dtype == torch.bool and tuple(mask.shape) == (B, 1, L, L)
    assert mask.element_size() * mask.numel() == B * L * L  # one byte per query-key pair, all heads
