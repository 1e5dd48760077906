"""Per-token projector from the image tower's width into the shared (LLM) space.

As in the FLAME reference, every patch token goes through the same small MLP, and the image
embedding is the average of the projected tokens. The projected tokens themselves stay available
(``TokenProjector.forward``): they live in the text space, which is what word maps read.
``AttentionPool`` is the option of a weighted average instead, the weights read from the image.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F


class TokenProjector(nn.Module):
    def __init__(self, in_dim: int, out_dim: int):
        super().__init__()
        self.fc1 = nn.Linear(in_dim, out_dim)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(out_dim, out_dim)
        # The final norm puts every token on a comparable scale before the average, so no single
        # high-norm token dominates the pooled embedding.
        self.norm = nn.LayerNorm(out_dim)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        """[B, N, in_dim] patch tokens -> [B, N, out_dim] projected tokens."""
        return self.norm(self.fc2(self.act(self.fc1(tokens))))

    @staticmethod
    def pool(tokens: torch.Tensor, normalize: bool = True) -> torch.Tensor:
        """[B, N, E] projected tokens -> [B, E] image embedding (mean, then L2 norm)."""
        x = tokens.mean(dim=-2)
        return F.normalize(x, dim=-1) if normalize else x


class AttentionPool(nn.Module):
    """A weighted average of the projected tokens, with weights that depend on the image.

    Each of ``heads`` slices of the embedding gets its own softmax over the patch tokens, scored
    from the tower's tokens by one linear map (a single learned query per head, as in attention
    pooling, with the projected tokens as the values). The scores start at zero, so training
    starts from the plain mean; the embedding stays a convex mix of projected tokens per slice.
    """

    def __init__(self, in_dim: int, out_dim: int, heads: int = 8):
        super().__init__()
        if out_dim % heads:
            raise ValueError(f"attention pooling splits the embedding into {heads} heads: {out_dim} is not a multiple")
        self.heads = heads
        self.score = nn.Linear(in_dim, heads)
        nn.init.zeros_(self.score.weight)
        nn.init.zeros_(self.score.bias)

    def forward(self, features: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
        """[B, N, in_dim] tower tokens and [B, N, E] projected tokens -> [B, E] (not normalised)."""
        b, n, e = tokens.shape
        weights = self.score(features).float().softmax(dim=1).to(tokens.dtype)  # [B, N, heads]
        return (weights.unsqueeze(-1) * tokens.view(b, n, self.heads, e // self.heads)).sum(dim=1).reshape(b, e)
