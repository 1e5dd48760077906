"""Loading LLMs: packaged names, GGUF files, HF folders, layer truncation, clear errors."""

import importlib.util

import pytest
import torch
from transformers import AutoModelForCausalLM, LlamaConfig

from flameclip.text.facets import FacetEncoder
from flameclip.text.llm import PACKAGED_LLMS, LLMNotFoundError, load_llm, packaged_gguf_path, resolve, resolve_layer


def test_unknown_llm_is_a_one_line_error_listing_choices():
    with pytest.raises(LLMNotFoundError) as e:
        resolve("no-such-model")
    msg = str(e.value)
    assert "\n" not in msg and "smollm2-135m" in msg and "gemma3-270m" in msg


def test_resolve_layer_counts_like_hidden_states():
    assert resolve_layer(-2, 30) == 29  # second-to-last layer's output
    assert resolve_layer(-1, 30) == 30
    assert resolve_layer(5, 30) == 5
    for bad in (0, 31, -31):
        with pytest.raises(ValueError):
            resolve_layer(bad, 30)


def test_packaged_smollm2_is_frozen_truncated_and_identified(smollm2):
    assert smollm2.num_layers == 30 and smollm2.layer == 29 and len(smollm2.model.layers) == 29
    assert smollm2.hidden_size == 576
    assert not any(p.requires_grad for p in smollm2.model.parameters())
    assert isinstance(smollm2.model.norm, torch.nn.Identity)
    fp = smollm2.fingerprint()
    assert len(fp["weights_sha256"]) == 64 and fp["layer"] == 29


def test_gguf_path_and_packaged_name_are_the_same_weights(smollm2):
    path = packaged_gguf_path("smollm2-135m")
    assert resolve(str(path)).weights_sha256 == smollm2.source.weights_sha256


def test_local_hf_folder_loads_and_encodes(tmp_path, tokenizer):
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=49152, hidden_size=64, intermediate_size=128, num_hidden_layers=3,
                      num_attention_heads=4, num_key_value_heads=2)
    AutoModelForCausalLM.from_config(cfg).save_pretrained(tmp_path / "tiny")
    tokenizer.save_pretrained(tmp_path / "tiny")
    llm = load_llm(str(tmp_path / "tiny"), layer=-1)
    assert llm.source.kind == "hf" and llm.layer == 3 and llm.hidden_size == 64
    out = FacetEncoder(llm).encode(["a red bus"], "short3")
    assert out.shape == (1, 3, 64) and torch.isfinite(out).all()
    # Changing a weight file changes the fingerprint.
    before = llm.source.weights_sha256
    m = AutoModelForCausalLM.from_config(cfg)
    m.save_pretrained(tmp_path / "tiny")
    assert resolve(str(tmp_path / "tiny")).weights_sha256 != before


def test_folder_without_safetensors_is_refused(tmp_path):
    (tmp_path / "config.json").write_text("{}")
    with pytest.raises(LLMNotFoundError, match="safetensors"):
        resolve(str(tmp_path))


def test_bf16_encoding_stays_close_to_fp32(smollm2):
    bf16 = load_llm("smollm2-135m", dtype="bf16")
    caps = ["A small brown dog runs on the beach.", "Two cups of coffee on a table."]
    a = FacetEncoder(smollm2).encode(caps, "short3")
    b = FacetEncoder(bf16).encode(caps, "short3")
    cos = torch.nn.functional.cosine_similarity(a, b, dim=-1)
    assert cos.min() > 0.98


@pytest.mark.slow
@pytest.mark.parametrize("name", ["gemma3-270m", "qwen2.5-0.5b"])
def test_other_packaged_llms_when_installed(name):
    first_chunk = PACKAGED_LLMS[name].chunks[0][0]
    if importlib.util.find_spec(first_chunk) is None:
        pytest.skip(f"{name} is not installed ({PACKAGED_LLMS[name].install_hint})")
    from .test_facets import TOL, reference, relative_error
    from .conftest import CAPTIONS

    llm = load_llm(name)
    ref = reference(llm, CAPTIONS[:3], "long7")
    got = FacetEncoder(llm, route="fda").encode(CAPTIONS[:3], "long7")
    assert relative_error(got, ref) < TOL
