"""File I/O with one policy everywhere: crash-safe writes, file digests, build-once markers, images.

Writes: a file is first written under a temporary name in its final folder, flushed to disk
(fsync), and only then renamed over its final name. ``os.replace`` is atomic, so a run killed at any
moment leaves the old file, the new file, or a stray temporary file, never a half-written final
file. Temporary names start with ``TMP_PREFIX``: readers skip them and ``StoreWriter.finalize``
sweeps them away, so they cannot change what a resumed store looks like.

Images: every loader (training, evaluation, search, explain) opens images with ``open_rgb``, so they
accept the same files and name a bad one the same way.
"""


from __future__ import annotations

import hashlib
import json
import os
import shutil
import uuid

from PIL import Image, UnidentifiedImageError

TMP_PREFIX = ".tmp-"


def tmp_name(path: str) -> str:
    """A fresh temporary path beside ``path``.

    The random token keeps two processes that write the same file at the same moment (two ranks
    finalizing together) from ever sharing, and corrupting, one temporary file.
    """
    folder, name = os.path.split(path)
    return os.path.join(folder, f"{TMP_PREFIX}{uuid.uuid4().hex[:12]}-{name}")


def is_tmp(name: str) -> bool:
    return os.path.basename(name).startswith(TMP_PREFIX)


def fsync_file(path: str) -> None:
    with open(path, "rb+") as f:  # writable: Windows refuses to fsync a read-only handle
        os.fsync(f.fileno())


def fsync_dir(folder: str) -> None:
    """Make the renames done inside ``folder`` durable (POSIX only: Windows cannot open a folder)."""
    if os.name == "nt":
        return
    fd = os.open(folder or ".", os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_tmp_bytes(path: str, data: bytes) -> str:
    """Write ``data`` to a durable temporary file beside ``path``; return the temporary path."""
    tmp = tmp_name(path)
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    return tmp


def atomic_write_bytes(path: str, data: bytes) -> None:
    os.replace(write_tmp_bytes(path, data), path)
    fsync_dir(os.path.dirname(path))


def remove_tmp_entries(folder: str) -> None:
    """Delete the temporary files and folders that killed writes left in ``folder``."""
    if not os.path.isdir(folder):
        return
    for name in os.listdir(folder):
        if not is_tmp(name):
            continue
        path = os.path.join(folder, name)
        if os.path.isdir(path) and not os.path.islink(path):
            shutil.rmtree(path, ignore_errors=True)
        else:
            try:
                os.remove(path)
            except FileNotFoundError:  # another process swept it first
                pass


def file_sha256(path) -> str:
    """The sha256 of a file's bytes (hex), read in chunks by hashlib."""
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


# Build-once markers: a folder built from some parameters holds a JSON file recording them, written
# last (atomically), so a second call with the same parameters finds it and returns at once, and an
# interrupted build, which has no marker, is built again.


def marker_matches(path, params: dict) -> bool:
    """Whether the build-once marker at ``path`` records exactly ``params`` (missing or unreadable: no)."""
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f).get("params") == params
    except (OSError, ValueError, AttributeError):
        return False


def write_marker(path, params: dict, counts: dict) -> None:
    """Record that the folder of ``path`` was built from ``params`` (and what it holds)."""
    text = json.dumps({"params": params, "counts": counts}, indent=2) + "\n"
    atomic_write_bytes(os.fspath(path), text.encode("utf-8"))


# Images: the formats PIL reads, a pixel limit checked before decoding, one list of failures.
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
