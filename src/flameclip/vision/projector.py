"""Per-token projector from the image tower's width into the shared (LLM) space.

As in the FLAME reference, every patch token goes through the same small MLP, and the image
embedding is the average of the projected tokens. The projected tokens themselves stay available
(``TokenProjector.forward``): they live in the text space, which is what word maps read.
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
