"""The trainable image side: a timm ViT tower and the per-token projector into the text space."""

from .projector import AttentionPool, TokenProjector
from .tower import ImageTower, build_image_tower

__all__ = ["AttentionPool", "ImageTower", "TokenProjector", "build_image_tower"]
