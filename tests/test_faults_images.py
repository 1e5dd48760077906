"""Hostile image files: over-large, truncated, not images. Refused by size before decoding, named."""

import pytest
import torch
from PIL import Image

from flameclip.fileio import ImageTooLarge, open_rgb
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


def test_evaluation_images_stream_one_batch_at_a_time(tmp_path):
    # A large evaluation set must not be decoded into memory before the first batch is used.
    paths = []
    for i in range(10):
        paths.append(str(tmp_path / f"{i}.png"))
        Image.new("RGB", (8, 8), (i, 0, 0)).save(paths[-1])
    seen = []

    def transform(im):
        seen.append(im.getpixel((0, 0))[0])
        return torch.zeros(3, 8, 8)

    batches = iterate_images(paths, transform, batch_size=3)
    x, idx = next(batches)
    assert x.shape == (3, 3, 8, 8) and idx == [0, 1, 2]
    assert seen == [0, 1, 2]
    assert [i for _, b in batches for i in b] == list(range(3, 10))
