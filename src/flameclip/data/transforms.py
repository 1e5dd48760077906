"""Image transforms: the reference training augmentation and the evaluation resize."""

from __future__ import annotations

import torch
from open_clip.constants import OPENAI_DATASET_MEAN as MEAN
from open_clip.constants import OPENAI_DATASET_STD as STD
from torchvision.transforms import v2 as T

# CLIP's normalisation constants (MEAN, STD, from open_clip), which FLAME's reference code uses too.


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
