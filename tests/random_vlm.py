"""A tiny random-weights vision-language model of a real architecture (LLaVA), saved as a local folder.

The recaption step loads any image-text-to-text model through the transformers auto classes. Its
tests need one that loads the same way, offline and in a second: LLaVA's own classes (a CLIP vision
tower, a projector, a Llama decoder) at toy sizes, with the packaged SmolLM2 tokenizer plus the
``<image>`` token, and a plain chat template. Its words mean nothing; the plumbing is real.

    python tests/random_vlm.py OUT_FOLDER [--seed 0]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

CHAT_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n"
    "{% for part in message['content'] %}{% if part['type'] == 'image' %}<image>\n"
    "{% else %}{{ part['text'] }}{% endif %}{% endfor %}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def make_random_vlm(out: str | Path, seed: int = 0, image_size: int = 32) -> Path:
    from transformers import (
        AutoModelForImageTextToText,
        AutoTokenizer,
        CLIPImageProcessor,
        CLIPVisionConfig,
        LlamaConfig,
        LlavaConfig,
        LlavaProcessor,
    )

    from flameclip.text.llm import hf_folder, resolve

    out = Path(out)
    if (out / "model.safetensors").exists():
        return out
    tok = AutoTokenizer.from_pretrained(str(hf_folder(resolve("smollm2-135m"))), local_files_only=True)
    tok.add_special_tokens({"additional_special_tokens": ["<image>"]})
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    patch = 8
    vision = CLIPVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                              image_size=image_size, patch_size=patch, projection_dim=32)
    text = LlamaConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                       num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=512,
                       bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
    config = LlavaConfig(vision_config=vision, text_config=text, image_token_index=tok.convert_tokens_to_ids("<image>"),
                         vision_feature_select_strategy="default", vision_feature_layer=-1)
    torch.manual_seed(seed)
    model = AutoModelForImageTextToText.from_config(config, dtype=torch.float32)
    model.generation_config.pad_token_id = tok.pad_token_id
    model.generation_config.eos_token_id = tok.eos_token_id
    processor = LlavaProcessor(
        image_processor=CLIPImageProcessor(size={"shortest_edge": image_size},
                                           crop_size={"height": image_size, "width": image_size}),
        tokenizer=tok, patch_size=patch, vision_feature_select_strategy="default", chat_template=CHAT_TEMPLATE,
        num_additional_image_tokens=1,  # the CLS token, which the "default" strategy drops again
    )
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(str(out), safe_serialization=True)
    processor.save_pretrained(str(out))
    return out


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("out")
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args()
    print(make_random_vlm(a.out, a.seed))
    sys.exit(0)
