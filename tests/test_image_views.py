"""Several images of one sample (``views`` in the manifest): one per epoch in training, the first in evaluation."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from PIL import Image

from flameclip.data.images import DataError, ImageTextDataset, read_image_manifest


class IdText:
    def check_ids(self, ids):
        pass

    def __call__(self, sid, rng):
        return torch.zeros(1, 2)


def first_pixel(im):
    return torch.tensor(im.getpixel((0, 0))[0])


@pytest.fixture
def manifest(tmp_path):
    # Sample i: its image is red level 10 i, its views 10 i + 1 and 10 i + 2.
    rows = []
    for i in range(6):
        for v in range(3):
            Image.new("RGB", (4, 4), (10 * i + v, 0, 0)).save(tmp_path / f"{i}-{v}.png")
        rows.append({"id": f"s{i}", "image": f"{i}-0.png", "views": [f"{i}-1.png", f"{i}-2.png"]})
    path = tmp_path / "m.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_training_draws_every_view_and_evaluation_only_the_image(manifest):
    records = read_image_manifest(manifest)
    assert records[2].views == (str(manifest.parent / "2-1.png"), str(manifest.parent / "2-2.png"))
    train = ImageTextDataset(records, IdText(), first_pixel, seed=0, use_views=True)
    seen = {int(train[(epoch, 2)][0]) for epoch in range(30)}
    assert seen == {20, 21, 22}
    again = ImageTextDataset(records, IdText(), first_pixel, seed=0, use_views=True)
    assert [int(again[(e, 2)][0]) for e in range(30)] == [int(train[(e, 2)][0]) for e in range(30)]  # (seed, epoch, index) only
    evaluation = ImageTextDataset(records, IdText(), first_pixel, seed=0)
    assert {int(evaluation[(epoch, 2)][0]) for epoch in range(30)} == {20}


def test_views_must_be_a_list_of_paths(tmp_path):
    Image.new("RGB", (4, 4)).save(tmp_path / "a.png")
    path = tmp_path / "m.jsonl"
    path.write_text(json.dumps({"id": "a", "image": "a.png", "views": [3]}) + "\n")
    with pytest.raises(DataError, match=r"record 1 \('a'\): 'views' must be a list of image paths"):
        read_image_manifest(path)
    csv = tmp_path / "m.csv"
    csv.write_text("id,image,views\na,a.png,b.png|c.png\n")
    assert [Path(v).name for v in read_image_manifest(csv)[0].views] == ["b.png", "c.png"]


def test_an_unreadable_view_is_reported_and_the_image_stands_in(manifest):
    records = read_image_manifest(manifest)
    (manifest.parent / "2-1.png").write_bytes(b"not a png")
    train = ImageTextDataset(records, IdText(), first_pixel, seed=0, use_views=True)
    seen, reported = set(), set()
    for epoch in range(30):
        pixel, _, bad = train[(epoch, 2)]
        seen.add(int(pixel))
        reported.update(path for _, path, _ in bad)
    assert seen == {20, 22}  # never the broken view, never another sample
    assert reported == {str(manifest.parent / "2-1.png")}
