"""Image search: building an index, exact search, checkpoint checks, contact sheets, the CLI.

Everything runs on a tiny CLIP-baseline checkpoint made here, so text queries need no LLM.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw

from flameclip import search as fs
from flameclip.cli import search as search_cli
from flameclip.contact_sheet import contact_sheet
from flameclip.data.images import DataError
from flameclip.inference import load
from flameclip.model import FlameModel, ModelConfig

COLOURS = [(220, 40, 40), (40, 170, 60), (40, 70, 220), (240, 210, 40), (140, 60, 170), (245, 140, 30),
           (20, 20, 20), (250, 250, 250), (0, 180, 180), (200, 0, 120), (120, 90, 40), (130, 130, 130)]


def tiny_checkpoint(folder, seed: int):
    torch.manual_seed(seed)
    model = FlameModel(ModelConfig(vision="custom", image_size=32, patch_size=8, vision_width=32, vision_depth=1,
                                   vision_heads=2, text_tower="clip", embed_dim=32, clip_width=32, clip_layers=1,
                                   clip_heads=2))
    model.save_pretrained(str(folder))
    return folder


def draw(i: int) -> Image.Image:
    """A coloured background with a contrasting shape whose place depends on i: 12 distinct images."""
    im = Image.new("RGB", (40, 48), COLOURS[i])
    d = ImageDraw.Draw(im)
    x, y = 4 + 7 * (i % 4), 4 + 12 * (i // 4)
    fill = COLOURS[(i + 5) % len(COLOURS)]
    (d.ellipse if i % 2 else d.rectangle)((x, y, x + 12, y + 12), fill=fill)
    return im


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("search")
    images = root / "images"
    (images / "sub").mkdir(parents=True)
    names = []
    for i in range(12):
        # Half in a subfolder, so the walk is tested recursively.
        rel = f"img{i:02d}.png" if i < 6 else f"sub/img{i:02d}.png"
        draw(i).save(images / rel)
        names.append(rel)
    (images / "notes.txt").write_text("not an image\n")
    (images / "sub" / "broken.png").write_bytes(b"\x00garbage, not a PNG" * 10)
    ckpt = tiny_checkpoint(root / "ckpt", seed=0)
    other = tiny_checkpoint(root / "other", seed=1)
    summary = fs.build_index(images, ckpt, batch_size=5, progress=False, device="cpu")
    return {"root": root, "images": images, "names": sorted(names), "ckpt": ckpt, "other": other,
            "summary": summary, "index": images / fs.INDEX_DIRNAME}


def test_build_index_counts_and_files(setup):
    s = setup["summary"]
    assert s["indexed"] == 12
    assert s["skipped_not_image"] == 1 and s["not_image_examples"] == ["notes.txt"]
    assert s["skipped_unreadable"] == 1 and "sub/broken.png" in s["unreadable_examples"][0]
    assert s["embed_dim"] == 32 and s["index_bytes"] > 12 * 32 * 2

    index = setup["index"]
    # Only the three index files: no temporary files left behind by the atomic writes.
    assert sorted(p.name for p in index.iterdir()) == ["embeddings.npy", "index.json", "paths.json"]
    meta = json.loads((index / "index.json").read_text())
    assert meta["format"] == "flameclip-index/1"
    assert meta["count"] == 12 and meta["embed_dim"] == 32 and meta["text_tower"] == "clip"
    assert meta["checkpoint_fingerprint"] == fs.checkpoint_fingerprint(setup["ckpt"])
    assert json.loads((index / "paths.json").read_text()) == setup["names"]  # sorted, relative, posix
    emb = np.load(index / "embeddings.npy")
    assert emb.dtype == np.float16 and emb.shape == (12, 32)
    np.testing.assert_allclose(np.linalg.norm(emb.astype(np.float32), axis=1), 1.0, atol=2e-3)


def test_index_embeddings_match_encode_image(setup):
    model = load(setup["ckpt"], device="cpu")
    ims = [Image.open(setup["images"] / rel) for rel in setup["names"]]
    want = model.encode_image(ims).numpy()
    got = np.load(setup["index"] / "embeddings.npy").astype(np.float32)
    np.testing.assert_allclose(got, want, atol=2e-3)  # fp16 keeps ~3 decimal digits

    index = fs.ImageIndex(setup["index"], setup["ckpt"])
    for i in (0, 7, 11):
        (path, score), *_ = index.search(torch.from_numpy(want[i]), k=3)[0]
        assert path == setup["names"][i]
        assert score == pytest.approx(1.0, abs=2e-3)


@pytest.mark.parametrize("chunk_rows", [65_536, 5])
def test_numpy_search_equals_brute_force(setup, chunk_rows):
    index = fs.ImageIndex(setup["index"])
    assert len(index) == 12
    index.chunk_rows = chunk_rows  # 5: the top-k of several chunks must merge into the same answer
    q = torch.nn.functional.normalize(torch.randn(4, 32, generator=torch.Generator().manual_seed(3)), dim=1)
    emb = np.load(setup["index"] / "embeddings.npy").astype(np.float32)
    scores = q.numpy() @ emb.T
    for k in (1, 5, 12, 50):
        got = index.search(q, k=k)
        assert [len(r) for r in got] == [min(k, 12)] * 4
        for row, want_scores in zip(got, scores):
            order = np.argsort(-want_scores, kind="stable")[: min(k, 12)]
            assert [p for p, _ in row] == [index.paths[j] for j in order]
            np.testing.assert_allclose([s for _, s in row], want_scores[order], atol=1e-6)


def test_search_rejects_bad_queries(setup):
    index = fs.ImageIndex(setup["index"])
    with pytest.raises(ValueError, match="width"):
        index.search(torch.randn(2, 16))
    with pytest.raises(ValueError, match="k must"):
        index.search(torch.randn(1, 32), k=0)


def test_other_checkpoint_is_refused(setup):
    assert fs.checkpoint_fingerprint(setup["ckpt"]) == fs.checkpoint_fingerprint(setup["ckpt"])
    assert fs.checkpoint_fingerprint(setup["ckpt"]) != fs.checkpoint_fingerprint(setup["other"])
    with pytest.raises(DataError, match="another checkpoint") as e:
        fs.ImageIndex(setup["index"], setup["other"])
    assert "\n" not in str(e.value) and "flameclip index" in str(e.value)
    with pytest.raises(DataError, match="another checkpoint"):
        fs.search(setup["index"], setup["other"], "a red square")


def test_text_search_with_clip_checkpoint(setup):
    results = fs.search(setup["index"], setup["ckpt"], "a red square on a blue background", k=5)
    assert len(results) == 5
    scores = [s for _, s in results]
    assert scores == sorted(scores, reverse=True)
    assert all(-1.0 <= s <= 1.0 for s in scores)
    assert {p for p, _ in results} <= set(setup["names"])
    # Same query, same answer; a long query (auto -> long7) still works for the CLIP baseline.
    assert fs.search(setup["index"], setup["ckpt"], "a red square on a blue background", k=5) == results
    assert len(fs.search(setup["index"], setup["ckpt"], " ".join(["word"] * 40), k=3)) == 3


def test_resolve_mode(tmp_path):
    assert fs.resolve_mode("a cat") == "single"
    assert fs.resolve_mode(" ".join(["w"] * 30)) == "single"
    assert fs.resolve_mode(" ".join(["w"] * 31)) == "long7"
    assert fs.resolve_mode("a cat", "long7") == "long7"
    # a long query goes through the long set the checkpoint's rows were stored with (the demo's long3)
    long_query = " ".join(["w"] * 31)
    demo_facets = ["single:0", "short3:0", "short3:1", "short3:2", "long3:0", "long3:1", "long3:2"]
    assert fs.resolve_mode(long_query, "auto", demo_facets) == "long3"
    assert fs.resolve_mode(long_query, "auto", demo_facets + ["long7:0"]) == "long7"
    assert fs.resolve_mode(long_query, "auto", ["single:0", "short3:0"]) == "long7"
    assert fs.resolve_mode("a cat", "auto", demo_facets) == "single"
    with pytest.raises(DataError, match="mode"):
        fs.resolve_mode("a cat", "medium")
    # A prompt set file (a store embedded with one) is taken as it is; a missing one is refused.
    own = tmp_path / "own.json"
    with pytest.raises(DataError, match="JSON file"):
        fs.resolve_mode("a cat", str(own))
    own.write_text('{"name": "own", "prefix": "{caption}", "prompts": [" in one word:"]}')
    assert fs.resolve_mode("a cat", str(own)) == str(own)


def test_contact_sheet(setup, tmp_path):
    query = "a very long query about coloured shapes " * 10  # 400 characters: wrapped and truncated
    results = fs.search(setup["index"], setup["ckpt"], query, k=7)
    results.append(("gone/missing.png", 0.01))  # deleted since indexing: a placeholder, not a crash
    path = contact_sheet(results, setup["images"], tmp_path / "sheets" / "r.png", query)
    with Image.open(path) as im:
        assert im.format == "PNG"
        assert im.width > 100 and im.height > 100


def test_rebuild_ignores_its_own_index_and_hidden_files(setup, tmp_path):
    images = tmp_path / "images"
    images.mkdir()
    for i in range(3):
        draw(i).save(images / f"{i}.png")
    (images / ".hidden").mkdir()
    draw(5).save(images / ".hidden" / "x.png")
    first = fs.build_index(images, setup["ckpt"], progress=False, device="cpu")
    second = fs.build_index(images, setup["ckpt"], progress=False, device="cpu")
    for s in (first, second):  # the .flameclip-index files are never counted as skipped
        assert (s["indexed"], s["skipped_not_image"], s["skipped_unreadable"]) == (3, 0, 0)


def test_empty_folder_and_missing_index(setup, tmp_path):
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "readme.md").write_text("hi")
    with pytest.raises(DataError, match="no readable images"):
        fs.build_index(tmp_path / "empty", setup["ckpt"], progress=False, device="cpu")
    with pytest.raises(DataError, match="not a flameclip index"):
        fs.ImageIndex(tmp_path / "empty")


def test_cli_index_and_search(setup, tmp_path, capsys):
    parser = argparse.ArgumentParser()
    sub = parser.add_subparsers(dest="command")
    search_cli.add_index_parser(sub)
    search_cli.add_search_parser(sub)

    out = tmp_path / "idx"
    args = parser.parse_args(["index", str(setup["images"]), "--checkpoint", str(setup["ckpt"]), "--out", str(out),
                              "--batch-size", "4", "--no-progress", "--device", "cpu"])
    assert search_cli.run_index(args) == 0
    text = capsys.readouterr().out
    for label in ("indexed", "skipped (not an image)", "skipped (unreadable)", "images/s", "index size"):
        assert label in text
    assert "sub/broken.png" in text
    # An index kept outside the image folder still finds the images.
    assert fs.ImageIndex(out).image_root.resolve() == setup["images"].resolve()

    png = tmp_path / "results.png"
    args = parser.parse_args(["search", "a green circle", "--index", str(out), "--checkpoint", str(setup["ckpt"]),
                              "--k", "3", "--out", str(png), "--device", "cpu"])
    assert search_cli.run_search(args) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split() == ["rank", "score", "path"]
    ranks = [line.split(maxsplit=2) for line in lines[1:4]]
    assert [r[0] for r in ranks] == ["1", "2", "3"]
    assert all(Path(r[2]).is_file() for r in ranks)  # printed paths point at the images themselves
    assert png.is_file() and "contact sheet" in lines[4]


@pytest.mark.parametrize("damage, message", [
    ("meta not json", r"index.json is damaged"),
    ("meta without digests", r"lacks embeddings_sha256, paths_sha256"),
    ("flipped byte", r"embeddings.npy is not the file the index wrote"),
    ("truncated embeddings", r"is damaged|is not the file the index wrote"),
    ("edited paths", r"paths.json is not the file the index wrote"),
])
def test_a_damaged_index_is_refused_by_name(setup, tmp_path, damage, message):
    import shutil

    index = tmp_path / "index"
    shutil.copytree(setup["index"], index)
    meta = index / fs.META_NAME
    emb, paths = index / fs.EMBEDDINGS_NAME, index / fs.PATHS_NAME
    if damage == "meta not json":
        meta.write_text("{ not json")
    elif damage == "meta without digests":
        m = json.loads(meta.read_text())
        del m["embeddings_sha256"], m["paths_sha256"]
        meta.write_text(json.dumps(m))
    elif damage == "flipped byte":
        data = bytearray(emb.read_bytes())
        data[-7] ^= 0x40  # inside the last embedding, not the header: np.load would read it silently
        emb.write_bytes(bytes(data))
    elif damage == "truncated embeddings":
        emb.write_bytes(emb.read_bytes()[:200])
    else:
        p = json.loads(paths.read_text())
        p[0], p[1] = p[1], p[0]  # same names, other order: every hit would name the wrong file
        paths.write_text(json.dumps(p))
    with pytest.raises(DataError, match=message):
        fs.ImageIndex(index)
    assert fs.ImageIndex(setup["index"]).embeddings.shape[0] == len(setup["names"])  # the original still loads
