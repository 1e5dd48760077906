"""Opening an image file: one place for the formats, the pixel limit and the reasons a file fails.

Every loader (training, evaluation, search, explain) opens images here, so they accept the same
files and name a bad one the same way.
"""

from __future__ import annotations

import os

from PIL import Image, UnidentifiedImageError


class ImageTooLarge(ValueError):
    """An image over the pixel limit; refused before it is decoded."""


def max_pixels() -> int:
    """The largest image (width x height) flameclip decodes: 50 MP (8000 x 6000), or $FLAMECLIP_MAX_PIXELS.

    The loaders shrink every image to a few hundred pixels; a larger file costs seconds and
    gigabytes to decode and is far more often a mistake or a hostile file than a wanted sample.
    """
    return int(os.environ.get("FLAMECLIP_MAX_PIXELS", 50_000_000))


# What a file that cannot be used as an image raises (ImageTooLarge is a ValueError).
UNREADABLE = (OSError, UnidentifiedImageError, ValueError, SyntaxError, Image.DecompressionBombError)


def open_rgb(source, name: str | None = None) -> Image.Image:
    """The image at ``source`` (a path or a binary file object) decoded to RGB."""
    limit = max_pixels()
    try:
        im = Image.open(source)
    except Image.DecompressionBombError:  # PIL's own refusal, at twice its limit: ours is lower anyway
        raise ImageTooLarge(f"{name or source}: {Image.MAX_IMAGE_PIXELS * 2 / 1e6:.0f} MP or more is over the "
                            f"limit of {limit / 1e6:.0f} MP; shrink it, or raise FLAMECLIP_MAX_PIXELS") from None
    with im:
        w, h = im.size
        if w * h > limit:
            raise ImageTooLarge(f"{name or source}: {w}x{h} pixels is over the limit of {limit / 1e6:.0f} MP; "
                                "shrink it, or raise FLAMECLIP_MAX_PIXELS")
        return im.convert("RGB")


def why_unreadable(e: BaseException) -> str:
    """A short reason for a report line: the type, and for a too-large image its size."""
    if isinstance(e, ImageTooLarge):
        return "ImageTooLarge: " + str(e).split(": ", 1)[-1].split(";")[0]
    return type(e).__name__
