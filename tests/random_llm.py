"""A random-weights copy of a real LLM: its architecture and tokenizer, none of its weights.

The GPU checks and the GPU speed benchmarks need a full-size model of a real architecture, and the
weights do not change either the exactness of facet-decoupled attention or the speed. So a folder
with the real config.json and tokenizer files is enough to build one where the packaged weights are
not installed:

    python tests/random_llm.py SRC_FOLDER OUT_FOLDER [--seed 0]

SRC_FOLDER is any Hugging Face folder with config.json and tokenizer files (for example the
converted folder of a packaged LLM under $FLAMECLIP_CACHE/hf); OUT_FOLDER is loadable with
``flameclip.text.llm.load_llm(OUT_FOLDER)`` and ``flameclip embed --llm OUT_FOLDER``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch


def make_random_llm(src: str | Path, out: str | Path, seed: int = 0) -> Path:
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    out = Path(out)
    if (out / "model.safetensors").exists():
        return out
    config = AutoConfig.from_pretrained(str(src), local_files_only=True)
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    out.mkdir(parents=True, exist_ok=True)
    AutoTokenizer.from_pretrained(str(src), local_files_only=True).save_pretrained(str(out))
    model.save_pretrained(str(out), safe_serialization=True)
    return out


def make_tiny_llm(out: str | Path, seed: int = 0) -> Path:
    """A 4-layer, 64-wide Llama with the packaged SmolLM2 tokenizer: a real architecture, seconds to run."""
    from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaConfig

    from flameclip.text.llm import hf_folder, resolve

    out = Path(out)
    if (out / "model.safetensors").exists():
        return out
    tok = AutoTokenizer.from_pretrained(str(hf_folder(resolve("smollm2-135m"))), local_files_only=True)
    config = LlamaConfig(vocab_size=len(tok), hidden_size=64, intermediate_size=128, num_hidden_layers=4,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=2048,
                         bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id)
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    out.mkdir(parents=True, exist_ok=True)
    tok.save_pretrained(str(out))
    model.save_pretrained(str(out), safe_serialization=True)
    return out


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("src")
    ap.add_argument("out")
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args()
    print(make_random_llm(a.src, a.out, a.seed))
    sys.exit(0)
