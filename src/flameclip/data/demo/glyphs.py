"""Emoji glyphs: real colour images that come from packages, with names in 14 languages.

The pictures come from the Noto Color Emoji font (Debian: ``fonts-noto-color-emoji``), the names
from the ``emoji`` PyPI package. Nothing is downloaded at run time.

Noto Color Emoji is a CBDT bitmap font: its glyphs are PNG strikes of one size, so FreeType only
opens it at size 109 and Pillow must draw it with ``embedded_color=True``. We render every glyph
once at that native size, crop it to its visible pixels and cache it as an RGBA PNG; scenes then
resize the cached glyphs.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import tempfile
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from ...fileio import file_sha256

# The 14 languages of the multilingual evaluation, English first (the emoji package's codes).
LANGUAGES = ("en", "de", "fr", "es", "it", "pt", "zh", "ja", "ko", "ru", "ar", "fa", "id", "tr")

# Where distributions install the font; FLAMECLIP_EMOJI_FONT overrides the search.
FONT_CANDIDATES = (
    "/usr/share/fonts/truetype/noto/NotoColorEmoji.ttf",  # Debian, Ubuntu
    "/usr/share/fonts/noto/NotoColorEmoji.ttf",  # Arch
    "/usr/share/fonts/google-noto-emoji/NotoColorEmoji.ttf",  # Fedora
    "/usr/share/fonts/google-noto-color-emoji-fonts/NotoColorEmoji.ttf",  # Fedora (newer)
    "/usr/share/fonts/truetype/noto-color-emoji/NotoColorEmoji.ttf",
)

# CBDT strikes exist at one size only; any other size fails to open.
NATIVE_SIZE = 109

# Bump when the rendering below changes, so old caches are not reused.
RENDER_VERSION = 1

# Names used in scenes and captions: letters, spaces, hyphens and apostrophes only. This drops names
# such as "A button (blood type)", "1st place medal" or "Mrs. Claus", which make awkward sentences
# and folder names, while keeping nearly all glyphs.
_PLAIN_NAME = re.compile(r"[A-Za-z][A-Za-z' \-]*")


class EmojiFontNotFound(FileNotFoundError):
    """The Noto Color Emoji font is not installed; the message says how to install it."""


def find_emoji_font() -> Path:
    """The Noto Color Emoji font file: $FLAMECLIP_EMOJI_FONT, else the first standard location found."""
    override = os.environ.get("FLAMECLIP_EMOJI_FONT")
    if override:
        if not Path(override).is_file():
            raise EmojiFontNotFound(f"FLAMECLIP_EMOJI_FONT={override} is not a file: point it at NotoColorEmoji.ttf "
                                    "or unset it (install the font with `apt-get install fonts-noto-color-emoji`)")
        return Path(override)
    for c in FONT_CANDIDATES:
        if Path(c).is_file():
            return Path(c)
    raise EmojiFontNotFound(
        "Noto Color Emoji font not found: install it with `apt-get install fonts-noto-color-emoji` "
        "(or set FLAMECLIP_EMOJI_FONT to NotoColorEmoji.ttf)")


def clean_name(name: str) -> str:
    """':red_apple:' -> 'red apple' (typographic apostrophes become plain ones)."""
    name = name.strip().strip(":").replace("_", " ").replace("\u2019", "'")
    return " ".join(name.split())


def is_plain_name(name: str) -> bool:
    return _PLAIN_NAME.fullmatch(name) is not None


@dataclass(frozen=True)
class Glyph:
    char: str  # the emoji itself, e.g. "🍎"
    key: str  # its code points in hex, e.g. "1f34e"; names the cached PNG
    name: str  # English name, e.g. "red apple"
    names: dict = field(default_factory=dict, hash=False, compare=False)  # language -> name

    @property
    def plain(self) -> bool:
        return is_plain_name(self.name)


def cache_root() -> Path:
    """$FLAMECLIP_CACHE, else ~/.cache/flameclip (the same root as converted models)."""
    return Path(os.environ.get("FLAMECLIP_CACHE") or Path.home() / ".cache" / "flameclip")


def _candidates() -> list[tuple[str, dict]]:
    """Simple emoji (one code point, maybe with the VS16 presentation selector), with their names.

    Multi-code-point sequences (ZWJ families, flags, keycaps, skin tones) are left out: their
    names are compositional ("flag: Germany", "woman: dark skin tone") and some fonts draw them
    as several glyphs side by side.
    """
    import emoji

    emoji.config.load_language(list(LANGUAGES))  # the translations load lazily into EMOJI_DATA
    fully = emoji.STATUS["fully_qualified"]
    out = []
    for ch, data in emoji.EMOJI_DATA.items():
        if len(ch.replace("\ufe0f", "")) != 1 or data.get("status") != fully or not data.get("en"):
            continue
        names = {lang: clean_name(data[lang]) for lang in LANGUAGES if data.get(lang)}
        out.append((ch, names))
    # Code-point order: stable whatever order the package's dict has.
    out.sort(key=lambda t: [ord(c) for c in t[0]])
    return out


def render_glyph(font: ImageFont.FreeTypeFont, char: str) -> Image.Image | None:
    """The glyph at native size as RGBA, cropped to its visible pixels; None if the font lacks it."""
    # A canvas twice the strike size with the pen in from the edges holds any glyph whole.
    im = Image.new("RGBA", (2 * NATIVE_SIZE, 2 * NATIVE_SIZE), (0, 0, 0, 0))
    ImageDraw.Draw(im).text((NATIVE_SIZE // 4, NATIVE_SIZE // 4), char, font=font, embedded_color=True)
    box = im.getchannel("A").getbbox()
    return None if box is None else im.crop(box)


def _font_digest(path: Path) -> str:
    return file_sha256(path)[:16]


def _build_cache(font_path: Path, dest: Path) -> None:
    """Render every candidate into ``dest`` (index.json + png/<key>.png), atomically."""
    font = ImageFont.truetype(str(font_path), NATIVE_SIZE)
    # What the font draws for a code point it lacks (private use area): nothing for Noto, a box for
    # some fonts. A glyph that renders identically is treated as missing.
    missing = render_glyph(font, "\ue000")
    missing_px = None if missing is None else np.asarray(missing)
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=dest.name + ".tmp-", dir=dest.parent))
    try:
        (tmp / "png").mkdir()
        index = []
        for ch, names in _candidates():
            im = render_glyph(font, ch)
            if im is None or (missing_px is not None and np.array_equal(np.asarray(im), missing_px)):
                continue
            key = "-".join(f"{ord(c):x}" for c in ch.replace("\ufe0f", ""))
            im.save(tmp / "png" / f"{key}.png", compress_level=6)
            index.append({"char": ch, "key": key, "names": names})
        (tmp / "index.json").write_text(json.dumps(index, ensure_ascii=False, indent=0) + "\n", encoding="utf-8")
        try:
            tmp.rename(dest)  # atomic: readers see a complete cache or none
        except OSError:
            if not (dest / "index.json").exists():  # not a concurrent builder that won the race
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


@lru_cache(maxsize=None)
def _cache_dir() -> Path:
    import emoji

    font = find_emoji_font()
    key = f"{_font_digest(font)}-emoji{emoji.__version__}-r{RENDER_VERSION}"
    dest = cache_root() / "demo" / "glyphs" / key
    if not (dest / "index.json").exists():
        _build_cache(font, dest)
    return dest


def cache_key() -> str:
    """Names the font file (by content), the emoji package version and the rendering version."""
    return _cache_dir().name


@lru_cache(maxsize=None)
def list_glyphs() -> tuple[Glyph, ...]:
    """Every simple emoji the installed font renders and that has an English name, in code-point order.

    The first call renders the glyphs into the cache (a few seconds); later calls read the cache.
    """
    index = json.loads((_cache_dir() / "index.json").read_text(encoding="utf-8"))
    return tuple(Glyph(r["char"], r["key"], r["names"]["en"], dict(r["names"])) for r in index if r["names"].get("en"))


@lru_cache(maxsize=4096)
def glyph_image(key: str) -> Image.Image:
    """The cached native-size RGBA image of a glyph (by ``Glyph.key``). Do not modify it."""
    with Image.open(_cache_dir() / "png" / f"{key}.png") as im:
        return im.convert("RGBA")


@lru_cache(maxsize=16384)
def glyph_at(key: str, px: int) -> Image.Image:
    """The glyph resized so that its longer side is ``px`` pixels (aspect kept). Do not modify it."""
    im = glyph_image(key)
    scale = px / max(im.size)
    size = (max(1, round(im.width * scale)), max(1, round(im.height * scale)))
    # Pillow resizes RGBA with premultiplied alpha, so edges do not pick up the transparent black.
    return im.resize(size, Image.Resampling.LANCZOS)


def _order_key(g: Glyph) -> str:
    return hashlib.sha256(g.key.encode()).hexdigest()


def vocabulary(size: int | None = None) -> list[Glyph]:
    """Glyphs with plain English names in a fixed pseudo-random order; the first ``size`` of them.

    The order is a hash of the code points, not a seed: it mixes the emoji categories (faces,
    food, animals, objects ...) and is the same on every machine, so a smaller vocabulary is
    always a prefix of a larger one (the CPU demo's glyphs are among the GPU demo's).
    """
    glyphs = sorted((g for g in list_glyphs() if g.plain), key=_order_key)
    names = set()
    unique = []
    for g in glyphs:  # a name must identify one glyph (class folders, captions)
        if g.name.lower() not in names:
            names.add(g.name.lower())
            unique.append(g)
    if size is not None and size > len(unique):
        raise ValueError(f"asked for {size} glyphs but only {len(unique)} usable emoji are available")
    return unique if size is None else unique[:size]
