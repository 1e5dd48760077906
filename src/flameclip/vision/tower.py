"""The image tower: a timm Vision Transformer, trained from scratch, read as patch tokens.

FLAME projects every patch token (not a pooled vector) into the LLM's space, so the tower's job is
to hand back the final-layer patch tokens [B, N, w]. timm's ``forward_features`` gives all tokens,
prefix tokens (CLS, registers, distillation) first; ``num_prefix_tokens`` says how many to drop.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import math

import timm
import torch
import torch.nn as nn
from timm.models.vision_transformer import VisionTransformer

if TYPE_CHECKING:
    from ..config import ModelConfig


class ImageTower(nn.Module):
    """A timm ViT trunk whose output is its patch tokens, prefix tokens removed."""

    def __init__(self, trunk: nn.Module):
        super().__init__()
        if not hasattr(trunk, "num_prefix_tokens") or not hasattr(trunk, "forward_features"):
            raise ValueError(
                f"the image tower must be a ViT-style timm model (tokens [B, N, w] with "
                f"num_prefix_tokens); {type(trunk).__name__} is not"
            )
        self.trunk = trunk
        self.num_prefix_tokens = int(trunk.num_prefix_tokens)
        self.width = int(trunk.num_features)
        grid = getattr(getattr(trunk, "patch_embed", None), "grid_size", None)
        self.num_patches = int(grid[0] * grid[1]) if grid is not None else None

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Patch tokens [B, N, w] of the last layer (after the trunk's final norm)."""
        x = self.trunk.forward_features(images)
        if x.ndim != 3:
            raise ValueError(f"expected tokens [B, N, w] from the trunk, got shape {list(x.shape)}")
        return x[:, self.num_prefix_tokens :]

    def pooled_features(self, images: torch.Tensor) -> torch.Tensor:
        """Mean of the patch tokens [B, w], before any projector: the features a linear probe reads."""
        return self(images).mean(dim=1)

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        self.trunk.set_grad_checkpointing(enable)


class ConvStem(nn.Module):
    """Patch embedding by 3x3 stride-2 convolutions (Xiao et al. 2021) instead of one strided patchify.

    log2(patch_size) convolutions halve the image down to the same token grid as the plain ViT, the
    channels doubling up to half the width, then a 1x1 convolution to the width. GroupNorm, not
    BatchNorm: a token must not depend on the other images of its batch (or on how a batch is split
    over processes). Takes timm's ``embed_layer`` arguments, so timm's ViT builds it.
    """

    def __init__(self, img_size=64, patch_size=8, in_chans=3, embed_dim=192, bias=True, **_):
        super().__init__()
        stages = int(patch_size).bit_length() - 1
        if patch_size < 2 or 2 ** stages != patch_size or img_size % patch_size:
            raise ValueError(f"a conv stem needs a power-of-two patch_size dividing image_size, got {patch_size}")
        layers, c_in = [], in_chans
        for i in range(stages):
            c_out = max(8, embed_dim // 2 ** (stages - i))
            layers += [nn.Conv2d(c_in, c_out, 3, stride=2, padding=1, bias=False),
                       nn.GroupNorm(math.gcd(8, c_out), c_out), nn.ReLU(inplace=True)]
            c_in = c_out
        layers.append(nn.Conv2d(c_in, embed_dim, 1, bias=bias))
        self.proj = nn.Sequential(*layers)
        self.img_size, self.patch_size = (img_size, img_size), (patch_size, patch_size)
        self.grid_size = (img_size // patch_size, img_size // patch_size)
        self.num_patches = self.grid_size[0] * self.grid_size[1]
        self.dynamic_img_pad = False

    def feat_ratio(self, as_scalar=True):
        return self.patch_size[0] if as_scalar else self.patch_size

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x).flatten(2).transpose(1, 2)  # [B, N, w]


def check_vision_name(name: str) -> None:
    """Only "custom" or a timm architecture: "hf-hub:..." would reach the network, and "local-dir:..."
    would read another project's folder, even with pretrained=False."""
    if name == "custom":
        return
    if ":" in name:
        raise ValueError(f"vision = {name!r} names a hub or folder source; flameclip builds its image tower from "
                         "a timm architecture name (e.g. 'vit_base_patch16_224') or 'custom', and never downloads")
    if not timm.is_model(name):
        import difflib

        close = difflib.get_close_matches(name, timm.list_models(), n=1)
        raise ValueError(f"vision = {name!r} is not a timm architecture" + (f"; did you mean {close[0]!r}?" if close else ""))


def build_image_tower(cfg: ModelConfig) -> ImageTower:
    """A randomly initialised ViT: a timm model by name, or a small one from ``cfg`` ("custom").

    ``num_classes=0`` drops the classifier and ``global_pool=''`` keeps timm from building
    pooling-only modules (fc_norm, attention pool) and from moving the final norm behind the pool:
    we pool the patch tokens ourselves, and a module that no loss ever reaches would sit untrained
    in the checkpoint (and make DDP demand find_unused_parameters).
    """
    common = dict(num_classes=0, global_pool="", img_size=cfg.image_size)
    if cfg.vision == "custom":
        if cfg.image_size % cfg.patch_size:
            raise ValueError(f"image_size {cfg.image_size} is not a multiple of patch_size {cfg.patch_size}")
        if cfg.vision_width % cfg.vision_heads:
            raise ValueError(f"vision_width {cfg.vision_width} is not divisible by vision_heads {cfg.vision_heads}")
        trunk = VisionTransformer(
            patch_size=cfg.patch_size,
            embed_dim=cfg.vision_width,
            depth=cfg.vision_depth,
            num_heads=cfg.vision_heads,
            drop_path_rate=cfg.vision_drop_path,
            **({"embed_layer": ConvStem} if cfg.vision_stem == "conv" else {}),
            **common,
        )
    else:
        # pretrained=False: FLAME trains the image tower from scratch, and nothing may be downloaded.
        trunk = timm.create_model(cfg.vision, pretrained=False, drop_path_rate=cfg.vision_drop_path, **common)
    tower = ImageTower(trunk)
    if cfg.grad_checkpointing:
        tower.set_grad_checkpointing(True)
    return tower
