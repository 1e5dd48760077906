"""The CLIP baseline's text side: open_clip's text transformer, trained from scratch.

It is the comparison FLAME is measured against: same image tower, same loop, but the text encoder
is a small causal transformer over CLIP BPE tokens instead of frozen LLM embeddings.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from open_clip.tokenizer import SimpleTokenizer
from open_clip.transformer import TextTransformer

if TYPE_CHECKING:
    from ..config import ModelConfig

CLIP_VOCAB_SIZE = 49408  # the size of CLIP's BPE vocabulary (49152 merges + bytes + 2 specials)


class ClipTextTower(TextTransformer):
    """open_clip's ``TextTransformer`` sized by ``cfg``: token ids [B, L] -> [B, cfg.embed_dim].

    A subclass rather than a wrapper, so checkpoint keys read like open_clip's own
    (``token_embedding``, ``transformer.resblocks.0...``, ``text_projection``). The pooled token
    is the end-of-text one (``pool_type='argmax'``: it has the largest id in CLIP's vocabulary).
    """

    def __init__(self, cfg: ModelConfig):
        if not cfg.embed_dim:
            raise ValueError("the CLIP text tower needs ModelConfig.embed_dim (the shared space width)")
        super().__init__(
            context_length=cfg.clip_context_length,
            vocab_size=CLIP_VOCAB_SIZE,
            width=cfg.clip_width,
            heads=cfg.clip_heads,
            layers=cfg.clip_layers,
            output_dim=cfg.embed_dim,
        )


def clip_tokenizer(context_length: int = 77) -> SimpleTokenizer:
    """CLIP's BPE tokenizer, as ``open_clip.get_tokenizer("ViT-B-32")`` builds it.

    Built directly: the BPE merges ship inside the open_clip package, so this never touches the
    network (``get_tokenizer`` may consult the HF hub for other names). Calling it on a list of N
    strings gives a LongTensor [N, context_length].
    """
    return SimpleTokenizer(context_length=context_length)
