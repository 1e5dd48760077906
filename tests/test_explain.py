"""Word maps: the readout head equals the LLM's, regions are read in row-major order, pooled, decoded
and rendered; checkpoints whose image space is not the LLM's are refused."""

import argparse

import pytest
import torch
from PIL import Image
from transformers import AutoModelForCausalLM

from flameclip.explain import (
    ExplainError,
    WordMap,
    _load_head_modules,
    load_readout,
    pool_tokens,
    render_word_map,
    word_maps,
    word_table,
)
from flameclip.cli.explain import add_parser, run
from flameclip.inference import load
from flameclip.model import FlameModel, ModelConfig
from flameclip.text.llm import hf_folder, resolve

# 32 px images in 4 px patches: an 8x8 patch grid, so 2x2 windows give 4x4 regions and 4x4 windows 2x2.
TINY = dict(vision="custom", image_size=32, patch_size=4, vision_width=32, vision_depth=1, vision_heads=2,
            text_dim=576)


def smollm2_record(**kw):
    return {"llm": "smollm2-135m", "weights_sha256": resolve("smollm2-135m").weights_sha256, "layer": 29,
            "hidden_size": 576, **kw}


def checkpoint(tmp_path, name="flame", **kw):
    torch.manual_seed(0)
    cfg = ModelConfig(**{**TINY, "llm": smollm2_record(), **kw})
    FlameModel(cfg).save_pretrained(str(tmp_path / name))
    return tmp_path / name


def picture(size=(48, 40)):
    """A non-square image with distinct quadrants, so a rendering shows where it was cropped."""
    img = Image.new("RGB", size, (40, 90, 160))
    img.paste((230, 200, 60), (0, 0, size[0] // 2, size[1] // 2))
    img.paste((70, 160, 80), (size[0] // 2, size[1] // 2, size[0], size[1]))
    return img


@pytest.fixture(scope="module")
def readout():
    return load_readout("smollm2-135m")


@pytest.fixture(scope="module")
def full_smollm2():
    """The whole SmolLM2 as HF builds it: the reference the readout must match."""
    folder = hf_folder(resolve("smollm2-135m"))
    return AutoModelForCausalLM.from_pretrained(str(folder), dtype=torch.float32, local_files_only=True).eval()


@pytest.fixture(scope="module")
def flame(tmp_path_factory):
    return load(checkpoint(tmp_path_factory.mktemp("ckpt")), device="cpu")


def token_id(readout, word):
    ids = readout.tokenizer.encode(word, add_special_tokens=False)
    assert len(ids) == 1, f"{word!r} is not one token"
    return ids[0]


def fake_tokens(monkeypatch, flame, grid_of_ids, readout, scale=10.0):
    """Make image_tokens return, for patch (r, c), the lm_head row of token grid_of_ids[r][c], scaled."""
    rows = readout.head.weight[torch.tensor(grid_of_ids).flatten()] * scale  # row-major, like the ViT
    monkeypatch.setattr(flame.model, "image_tokens", lambda images: rows[None].clone())
    return rows


# ------------------------------------------------------------------ the readout is the LLM's head


def test_readout_equals_the_full_models_norm_and_head(readout, full_smollm2):
    h = torch.randn(4, 576, generator=torch.Generator().manual_seed(0)) * 3
    with torch.no_grad():
        normed = full_smollm2.lm_head(full_smollm2.model.norm(h)).softmax(-1)
        raw = full_smollm2.lm_head(h).softmax(-1)
    torch.testing.assert_close(readout.probs(h), normed, atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(readout.probs(h, apply_norm=False), raw, atol=1e-6, rtol=1e-5)
    # Only the norm and head were materialised, not the 30 decoder layers.
    assert sum(p.numel() for p in readout.head.parameters()) == 49152 * 576


@pytest.mark.parametrize("arch", ["qwen2", "gemma3"])
def test_head_loading_on_other_architectures(tmp_path, arch):
    """Untied head (qwen2) and Gemma's (1 + weight) norm with a tied head read like HF reads them."""
    from transformers import Gemma3TextConfig, Qwen2Config

    torch.manual_seed(0)
    common = dict(vocab_size=300, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                  num_attention_heads=2, num_key_value_heads=1)
    cfg = (Qwen2Config(**common, tie_word_embeddings=False) if arch == "qwen2"
           else Gemma3TextConfig(**common, head_dim=16, tie_word_embeddings=True))
    model = AutoModelForCausalLM.from_config(cfg).eval()
    with torch.no_grad():  # Gemma initialises its norm to zeros (gain 1): make the gains matter
        model.model.norm.weight.normal_()
    model.save_pretrained(tmp_path / arch)
    norm, head = _load_head_modules(tmp_path / arch)
    h = torch.randn(5, 32)
    with torch.no_grad():
        torch.testing.assert_close(head(norm(h)), model.lm_head(model.model.norm(h)))


def test_vocabulary_skips_special_and_punctuation_and_merges_spellings(readout):
    words = readout.words
    for special in readout.tokenizer.all_special_ids:
        assert words[special] == ""
    assert words[token_id(readout, " cat")] == "cat"  # leading-space marker stripped
    assert words[token_id(readout, ".")] == "" and words[token_id(readout, " ")] == ""
    # " dog" and "dog" are one word: their probabilities add up.
    p = torch.zeros(len(words))
    p[token_id(readout, " dog")], p[token_id(readout, "dog")], p[token_id(readout, " cat")] = 0.3, 0.25, 0.4
    p[token_id(readout, ".")] = 0.05
    top = readout.top_words(p, 3)
    assert top[0][0] == "dog" and top[0][1] == pytest.approx(0.55) and top[1] == ("cat", pytest.approx(0.4))


# ------------------------------------------------------------------ reshaping, pooling, decoding


@pytest.mark.parametrize("apply_norm", [True, False])
def test_regions_are_read_row_major_pooled_and_decoded(monkeypatch, flame, readout, full_smollm2, apply_norm):
    cat, dog, tree = (token_id(readout, w) for w in (" cat", " dog", " tree"))
    # Top-left quadrant cat, top-right tree, bottom half dog: not symmetric under transposition, so
    # reading columns for rows would put "tree" bottom-left.
    ids = [[(cat if c < 4 else tree) if r < 4 else dog for c in range(8)] for r in range(8)]
    fake_tokens(monkeypatch, flame, ids, readout)
    # Guard, with HF's own model: each planted direction is read as its word.
    with torch.no_grad():
        for tid in (cat, dog, tree):
            h = readout.head.weight[tid] * 10
            logits = full_smollm2.lm_head(full_smollm2.model.norm(h) if apply_norm else h)
            assert readout.words[int(logits.argmax())] == readout.words[tid]

    maps = word_maps(flame, picture(), windows=(2, 4), top_k=3, apply_norm=apply_norm)
    assert [(m.grid, m.window, m.patch_grid) for m in maps] == [(4, 2, 8), (2, 4, 8)]
    top = [[[cell[0][0] for cell in row] for row in m.words] for m in maps]
    assert top[0] == [["cat", "cat", "tree", "tree"]] * 2 + [["dog"] * 4] * 2
    assert top[1] == [["cat", "tree"], ["dog", "dog"]]
    for m in maps:
        for row in m.words:
            for cell in row:
                assert len(cell) == 3 and all(0 < p <= 1 for _, p in cell)
                assert [p for _, p in cell] == sorted((p for _, p in cell), reverse=True)
    assert maps[1].words[0][0][0][1] > 0.5  # a pure region is read with confidence


def test_each_region_is_the_mean_of_its_window(monkeypatch, flame, readout, full_smollm2):
    """Each region is read from the mean of its window's tokens: HF's own SmolLM2 (final norm, lm_head)
    applied to that mean gives, as its most probable readable token, one of the region's words."""
    g = torch.Generator().manual_seed(1)
    tokens = torch.randn(64, 576, generator=g) * 2
    monkeypatch.setattr(flame.model, "image_tokens", lambda images: tokens[None].clone())
    (m,) = word_maps(flame, picture(), windows=(2,), top_k=4)
    grid = tokens.view(8, 8, 576)
    special = set(readout.tokenizer.all_special_ids)
    for i in range(4):
        for j in range(4):
            block = grid[2 * i:2 * i + 2, 2 * j:2 * j + 2].reshape(4, 576).mean(0)
            with torch.no_grad():
                probs = full_smollm2.lm_head(full_smollm2.model.norm(block)).softmax(-1)
            for tid in probs.argsort(descending=True)[:200].tolist():
                text = readout.tokenizer.decode([tid]).strip()
                if tid not in special and any(ch.isalnum() for ch in text):
                    break
            # Merging spellings (" dog" + "dog") can lift another word above it, never push it out
            # of the top 4; and the top word is at least as probable as any one readable token.
            assert text in [w for w, _ in m.words[i][j]]
            assert m.words[i][j][0][1] >= float(probs[tid]) * (1 - 1e-4)


def test_grid_not_divisible_by_the_window_drops_the_remainder(tmp_path, readout, monkeypatch):
    # 24 px / 4 px = a 6x6 patch grid: a 4x4 window gives one region over patches 0..3 only.
    flame = load(checkpoint(tmp_path, image_size=24), device="cpu")
    cat, dog = token_id(readout, " cat"), token_id(readout, " dog")
    fake_tokens(monkeypatch, flame, [[cat if r < 4 and c < 4 else dog for c in range(6)] for r in range(6)], readout)
    m2, m4 = word_maps(flame, picture(), windows=(2, 4), top_k=2)
    assert (m2.grid, m4.grid, m4.patch_grid) == (3, 1, 6)
    assert m4.words[0][0][0][0] == "cat"  # the dog-only remainder does not reach the region
    assert [[c[0][0] for c in row] for row in m2.words] == [["cat", "cat", "dog"], ["cat", "cat", "dog"], ["dog"] * 3]
    assert "last 2 patch rows/cols not covered" in word_table([m4])
    with pytest.raises(ExplainError, match="does not fit the 6x6"):
        word_maps(flame, picture(), windows=(8,))
    with pytest.raises(ExplainError, match="square"):
        pool_tokens(torch.zeros(12, 4), 2)


def test_real_model_gives_a_full_map_and_table(flame, readout):
    maps = word_maps(flame, picture(), top_k=5)
    assert [m.grid for m in maps] == [4, 2]
    for m in maps:
        assert len(m.words) == m.grid and all(len(row) == m.grid for row in m.words)
        assert all(len(cell) == 5 and all(w and any(ch.isalnum() for ch in w) for w, _ in cell)
                   for row in m.words for cell in row)
    table = word_table(maps)
    assert "window 2x2 patches: 4x4 regions" in table and "window 4x4 patches: 2x2 regions" in table
    assert "(3, 3)" in table and "(1, 1)" in table and "(2, 2)  " not in table.split("window 4x4")[1]
    w, p = maps[0].words[0][0][0]
    assert f"(0, 0)  {w} {p:.3f}" in table


# ------------------------------------------------------------------ rendering


def test_png_renders(tmp_path):
    maps = [
        WordMap(grid=4, window=2, words=[[[("cat", 0.81), ("kitten", 0.1)]] * 4, [[("photosynthesis", 0.4)]] * 4,
                                         [[("dog", 0.5)]] * 4, [[("a", 0.2)]] * 4], patches=8),
        WordMap(grid=1, window=4, words=[[[("internationalization", 0.33)]]], patches=6),
    ]
    out = render_word_map(picture((300, 200)), maps, tmp_path / "sub" / "map.png", title="test map")
    assert out.exists()
    with Image.open(out) as im:
        assert im.format == "PNG" and im.width > 100 and im.height > 100
        assert im.width > im.height  # panels side by side


# ------------------------------------------------------------------ refusals


def test_clip_baseline_is_refused(tmp_path):
    ckpt = checkpoint(tmp_path, name="clip", text_tower="clip", embed_dim=32, clip_width=32, clip_layers=1,
                      clip_heads=2, llm={})
    with pytest.raises(ExplainError) as e:
        word_maps(load(ckpt, device="cpu"), picture())
    assert "CLIP baseline" in str(e.value) and "\n" not in str(e.value)


def test_learned_shared_space_is_refused(tmp_path):
    with pytest.raises(ExplainError, match="embed_dim is set"):
        word_maps(load(checkpoint(tmp_path, embed_dim=64), device="cpu"), picture())


def test_text_adapter_is_refused(tmp_path):
    with pytest.raises(ExplainError, match="text adapter"):
        word_maps(load(checkpoint(tmp_path, text_adapter_depth=1), device="cpu"), picture())


def test_whitened_tokens_are_read_back_in_the_llms_space(tmp_path, readout, monkeypatch):
    """A checkpoint trained on whitened states: its tokens x @ W are read as x, the LLM's own states."""
    torch.manual_seed(0)
    cfg = ModelConfig(**{**TINY, "llm": smollm2_record(), "text_center": "global", "text_whiten": 1.0})
    model = FlameModel(cfg)
    q, _ = torch.linalg.qr(torch.randn(576, 576, dtype=torch.float64))
    spectrum = torch.logspace(-1.5, 1.5, 576, dtype=torch.float64)  # symmetric, invertible, far from the identity
    model.text_whitening.copy_(((q * spectrum) @ q.T).float())
    model.save_pretrained(str(tmp_path / "w"))
    flame = load(tmp_path / "w", device="cpu")
    words = [token_id(readout, w) for w in (" cat", " dog", " tree")]
    ids = [[words[(r // 2 + c // 2) % 3] for c in range(8)] for r in range(8)]  # 2x2 blocks of one word
    rows = readout.head.weight[torch.tensor(ids).flatten()] * 10.0
    whitened = rows.double() @ flame.model.text_whitening.double()
    monkeypatch.setattr(flame.model, "image_tokens", lambda images: whitened.float()[None].clone())
    got = word_maps(flame, picture(), windows=(2,), readout=readout)
    plain = load(checkpoint(tmp_path, name="plain", text_center="global"), device="cpu")
    monkeypatch.setattr(plain.model, "image_tokens", lambda images: rows[None].clone())
    want = word_maps(plain, picture(), windows=(2,), readout=readout)
    top = [[[cell[0][0] for cell in row] for row in m.words] for m in got]
    assert top == [[[cell[0][0] for cell in row] for row in m.words] for m in want]
    assert top[0][0] == ["cat", "dog", "tree", "cat"]


def test_other_llm_weights_are_refused(tmp_path):
    ckpt = checkpoint(tmp_path, llm=smollm2_record(weights_sha256="0" * 64))
    with pytest.raises(ExplainError) as e:
        word_maps(load(ckpt, device="cpu"), picture())
    assert "not the one this checkpoint was trained with" in str(e.value) and "\n" not in str(e.value)
    ckpt = checkpoint(tmp_path, name="nohash", llm=smollm2_record(weights_sha256=None))
    with pytest.raises(ExplainError, match="weights hash"):
        word_maps(load(ckpt, device="cpu"), picture())


# ------------------------------------------------------------------ command line


def parse(argv):
    parser = argparse.ArgumentParser(prog="flameclip")
    add_parser(parser.add_subparsers(dest="command", required=True))
    return parser.parse_args(argv)


def test_cli_prints_table_and_writes_png(tmp_path, capsys):
    ckpt = checkpoint(tmp_path)
    picture().save(tmp_path / "img.png")
    out = tmp_path / "words.png"
    args = parse(["explain", str(tmp_path / "img.png"), "--checkpoint", str(ckpt), "--windows", "4",
                  "--top-k", "2", "--out", str(out), "--no-norm"])
    assert (args.windows, args.top_k, args.no_norm) == ([4], 2, True)
    assert run(args) == 0
    printed = capsys.readouterr().out
    assert "window 4x4 patches: 2x2 regions" in printed and "window 2x2" not in printed
    assert f"word map: {out}" in printed and out.exists()
    defaults = parse(["explain", "x.jpg", "--checkpoint", "c"])
    assert (defaults.windows, defaults.top_k, defaults.no_norm, defaults.out) == ([2, 4], 5, False, None)


def test_cli_refusal_is_one_line(tmp_path, capsys):
    ckpt = checkpoint(tmp_path, name="clip", text_tower="clip", embed_dim=32, clip_width=32, clip_layers=1,
                      clip_heads=2, llm={})
    picture().save(tmp_path / "img.png")
    assert run(parse(["explain", str(tmp_path / "img.png"), "--checkpoint", str(ckpt)])) == 2
    err = capsys.readouterr().err
    assert err.startswith("flameclip explain:") and err.count("\n") == 1
    (tmp_path / "bad.png").write_text("not an image")
    assert run(parse(["explain", str(tmp_path / "bad.png"), "--checkpoint", str(ckpt)])) == 2
    assert "cannot read image" in capsys.readouterr().err
