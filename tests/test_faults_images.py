"""Hostile image files: over-large, truncated, not images. Refused by size before decoding, named."""

import pytest
from PIL import Image

from flameclip.data.image_io import ImageTooLarge, open_rgb
from flameclip.data.images import DataError
from flameclip.evaluate.datasets import iterate_images


@pytest.fixture
def huge_png(tmp_path):
    path = tmp_path / "huge.png"
    Image.new("1", (8000, 8000)).save(path)  # 64 MP, a few kB on disk
    return path


def test_an_8000x8000_image_is_refused_before_decoding(huge_png):
    with pytest.raises(ImageTooLarge, match=r"huge.png: 8000x8000 pixels is over the limit of 50 MP"):
        open_rgb(huge_png)


def test_the_limit_can_be_raised(huge_png, monkeypatch):
    monkeypatch.setenv("FLAMECLIP_MAX_PIXELS", str(8000 * 8000))
    assert open_rgb(huge_png).size == (8000, 8000)


def test_evaluation_names_every_bad_file_and_why(tmp_path, huge_png):
    good = tmp_path / "good.png"
    Image.new("RGB", (32, 32), (200, 10, 10)).save(good)
    cut = tmp_path / "cut.png"
    cut.write_bytes(good.read_bytes()[:40])
    text = tmp_path / "notes.png"
    text.write_text("not an image")
    with pytest.raises(DataError) as e:
        list(iterate_images([str(good), str(huge_png), str(cut), str(text)], lambda im: im, batch_size=2))
    msg = str(e.value)
    assert msg.startswith("3 unreadable image(s)")
    assert "huge.png (ImageTooLarge: 8000x8000 pixels is over the limit of 50 MP)" in msg
    assert "cut.png (" in msg and "notes.png (UnidentifiedImageError)" in msg
