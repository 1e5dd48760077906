"""Image transforms: the reference training augmentation and the evaluation resize."""

from __future__ import annotations

import torch
from torchvision.transforms import v2 as T

# CLIP's normalisation constants, which FLAME's reference code uses too.
MEAN = (0.48145466, 0.4578275, 0.40821073)
STD = (0.26862954, 0.26130258, 0.27577711)


def train_transform(image_size: int, scale: tuple[float, float] = (0.9, 1.0)):
    """RandomResizedCrop with the reference's mild scale range, then normalise."""
    return T.Compose([
        T.ToImage(),
        T.RandomResizedCrop(image_size, scale=scale, interpolation=T.InterpolationMode.BICUBIC, antialias=True),
        T.ToDtype(torch.float32, scale=True),
        T.Normalize(MEAN, STD),
    ])


def eval_transform(image_size: int):
    """Resize the short side and centre-crop, as CLIP evaluation does."""
    return T.Compose([
        T.ToImage(),
        T.Resize(image_size, interpolation=T.InterpolationMode.BICUBIC, antialias=True),
        T.CenterCrop(image_size),
        T.ToDtype(torch.float32, scale=True),
        T.Normalize(MEAN, STD),
    ])
