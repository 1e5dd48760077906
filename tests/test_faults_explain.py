"""Hostile files for ``flameclip explain``: every one ends in one line naming the file, exit 2, and
touches nothing. The checkpoint and image faults are made for real; none of them reaches the LLM."""

import struct
import zlib

import pytest

from flameclip.cli import main

from .test_explain import checkpoint, picture


def _one_line(capsys, *names) -> str:
    err = capsys.readouterr().err
    assert err.startswith("flameclip explain:") and err.count("\n") == 1, err
    for name in names:
        assert str(name) in err, err
    return err


def _png_claiming(width: int, height: int) -> bytes:
    """A PNG whose header claims ``width`` x ``height`` pixels, with no pixel data behind it."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IEND", b"")


@pytest.fixture
def ckpt(tmp_path):
    return checkpoint(tmp_path)


def test_unreadable_images_are_one_line_each(tmp_path, ckpt, capsys):
    good = tmp_path / "good.png"
    picture().save(good)
    data = good.read_bytes()
    cases = {
        "truncated.png": data[: len(data) // 2],
        "text.png": b"a caption, not a picture\n",
        "empty.png": b"",
        "bomb.png": _png_claiming(100_000, 100_000),  # 10 gigapixels: refused before any decoding
    }
    for name, content in cases.items():
        (tmp_path / name).write_bytes(content)
        assert main(["explain", str(tmp_path / name), "--checkpoint", str(ckpt)]) == 2
        err = _one_line(capsys, tmp_path / name)
        assert "cannot read image" in err
        if name == "bomb.png":  # what to do, not only what went wrong
            assert "FLAMECLIP_MAX_PIXELS" in err
        assert (tmp_path / name).read_bytes() == content  # the input is left as it was
    assert main(["explain", str(tmp_path / "absent.png"), "--checkpoint", str(ckpt)]) == 2
    _one_line(capsys, tmp_path / "absent.png")
    assert not list(tmp_path.glob("*.words.png"))  # no map was written for any of them


def test_damaged_checkpoints_are_one_line_and_left_as_they_were(tmp_path, ckpt, capsys):
    img = tmp_path / "img.png"
    picture().save(img)
    weights = ckpt / "model.safetensors"
    original = weights.read_bytes()
    flipped = bytearray(original)
    for i in range(len(flipped) // 2, len(flipped) // 2 + 64):
        flipped[i] ^= 0xFF
    weights.write_bytes(bytes(flipped))
    assert main(["explain", str(img), "--checkpoint", str(ckpt)]) == 2
    _one_line(capsys, ckpt)
    assert weights.read_bytes() == bytes(flipped)

    weights.write_bytes(original[: len(original) // 3])  # truncated
    assert main(["explain", str(img), "--checkpoint", str(ckpt)]) == 2
    _one_line(capsys, ckpt)

    weights.write_bytes(original)
    (ckpt / "config.json").write_text("{ not json")
    assert main(["explain", str(img), "--checkpoint", str(ckpt)]) == 2
    _one_line(capsys, ckpt / "config.json")

    assert main(["explain", str(img), "--checkpoint", str(tmp_path / "nowhere")]) == 2
    _one_line(capsys, tmp_path / "nowhere")
