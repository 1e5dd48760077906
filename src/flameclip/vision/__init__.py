"""The trainable image side: a timm ViT tower and the per-token projector into the text space."""

from .projector import TokenProjector
from .tower import ImageTower, build_image_tower

__all__ = ["ImageTower", "TokenProjector", "build_image_tower"]
