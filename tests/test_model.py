"""FlameModel: shapes, norms, checkpoints, weight-decay groups, logit params, grad checkpointing."""

import json
import math
import os
import socket

import pytest
import torch
from safetensors.torch import load_file, save_file

from flameclip.model import CONFIG_NAME, MODEL_FORMAT, WEIGHTS_NAME, FlameModel, ModelConfig, ModelLoadError, file_sha256

# 16 px images in 4 px patches: 16 patch tokens, plus timm's CLS token that must be dropped.
TINY = dict(image_size=16, patch_size=4, vision_width=16, vision_depth=2, vision_heads=2, text_dim=12)
N_PATCHES = (16 // 4) ** 2


def llm_cfg(**kw):
    return ModelConfig(**{**TINY, **kw})


def clip_cfg(**kw):
    return ModelConfig(**{**TINY, "text_tower": "clip", "embed_dim": 8, "clip_width": 16, "clip_layers": 1,
                          "clip_heads": 2, **kw})


def images(b=3, size=16, seed=0):
    return torch.randn(b, 3, size, size, generator=torch.Generator().manual_seed(seed))


def llm_text(*shape, seed=1):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


@pytest.fixture(scope="module")
def tok():
    from flameclip.baselines import clip_tokenizer

    return clip_tokenizer()


def clip_text(tok, n=3):
    return tok(["a photo of a cat", "two dogs on a red sofa", "x"][:n])


def unit(x):
    return torch.allclose(x.norm(dim=-1), torch.ones(x.shape[:-1]), atol=1e-5)


# ----------------------------------------------------------------------------- shapes and norms


@pytest.mark.parametrize("embed_dim", [None, 10])
def test_llm_mode_shapes_norms_and_pooling(embed_dim):
    torch.manual_seed(0)
    model = FlameModel(llm_cfg(embed_dim=embed_dim))
    E = embed_dim or TINY["text_dim"]
    assert (model.text_proj is not None) == (embed_dim is not None)
    x = images()
    with torch.no_grad():
        img = model.encode_image(x)
        tokens = model.image_tokens(x)
        txt = model.encode_text(llm_text(3, 4, TINY["text_dim"]))  # 4 facets per caption
        txt_half = model.encode_text(llm_text(3, 4, TINY["text_dim"]).half())
        all_tokens = model.visual.trunk.forward_features(x)
        feats = model.pooled_features(x)
    assert img.shape == (3, E) and unit(img)
    assert txt.shape == (3, 4, E) and unit(txt)
    assert txt_half.dtype == torch.float32 and torch.allclose(txt_half, txt, atol=1e-2)
    # patch tokens only: the CLS token is dropped, and it is the first one timm returns
    assert model.visual.num_prefix_tokens == 1
    assert all_tokens.shape[1] == N_PATCHES + 1 and tokens.shape == (3, N_PATCHES, E)
    assert torch.allclose(model.projector(all_tokens[:, 1:]), tokens)
    assert torch.allclose(torch.nn.functional.normalize(tokens.mean(1), dim=-1), img, atol=1e-6)
    # the linear-probe features are the tower's, before the projector
    assert feats.shape == (3, TINY["vision_width"])
    assert torch.allclose(feats, all_tokens[:, 1:].mean(1), atol=1e-6)
    assert not unit(model.encode_image(x, normalize=False))
    with pytest.raises(ValueError, match="float LLM embeddings"):
        model.encode_text(torch.zeros(3, TINY["text_dim"], dtype=torch.long))
    with pytest.raises(ValueError, match="float LLM embeddings"):
        model.encode_text(llm_text(3, TINY["text_dim"] + 1))


def test_clip_mode_shapes_and_norms(tok):
    torch.manual_seed(0)
    model = FlameModel(clip_cfg())
    ids = clip_text(tok)
    with torch.no_grad():
        img = model.encode_image(images())
        txt = model.encode_text(ids)
        txt3 = model.encode_text(ids.unsqueeze(0))  # [1, N, 77]: leading dims are kept
        out = model(images(), ids)
    assert img.shape == (3, 8) and unit(img)
    assert txt.shape == (3, 8) and unit(txt)
    assert txt3.shape == (1, 3, 8) and torch.allclose(txt3[0], txt, atol=1e-6)
    assert set(out) == {"image_features", "text_features", "logit_scale", "logit_bias"}
    assert torch.allclose(out["text_features"], txt, atol=1e-6)
    with pytest.raises(ValueError, match="CLIP token ids"):
        model.encode_text(llm_text(3, 77))


def test_clip_mode_needs_embed_dim():
    with pytest.raises(ValueError, match="embed_dim"):
        FlameModel(clip_cfg(embed_dim=None))
    with pytest.raises(ValueError, match="text_tower"):
        FlameModel(llm_cfg(text_tower="bert"))


def test_timm_model_by_name():
    torch.manual_seed(0)
    model = FlameModel(ModelConfig(vision="vit_tiny_patch16_224", image_size=32, text_dim=12))
    x = images(2, 32)
    with torch.no_grad():
        tokens = model.image_tokens(x)
        feats = model.pooled_features(x)
    assert tokens.shape == (2, (32 // 16) ** 2, 12)
    assert feats.shape == (2, 192)  # vit_tiny's width
    # no pooling-only modules that no loss would ever train
    assert not any(k in n for n, _ in model.named_parameters() for k in ("head", "fc_norm", "attn_pool"))


# ----------------------------------------------------------------------------- checkpoints


@pytest.mark.parametrize("mode", ["llm", "llm+proj", "clip"])
def test_save_load_round_trip(tmp_path, tok, mode):
    torch.manual_seed(0)
    cfg = {"llm": llm_cfg, "llm+proj": lambda **k: llm_cfg(embed_dim=6, **k), "clip": clip_cfg}[mode](
        llm={"name": "smollm2-135m", "fingerprint": "abc123"})
    model = FlameModel(cfg)
    with torch.no_grad():
        model.logit_bias.fill_(-3.5)  # not the init value, so the load really restores it
    text = clip_text(tok) if mode == "clip" else llm_text(3, 2, TINY["text_dim"])
    folder = tmp_path / "ckpt"
    model.save_pretrained(str(folder))
    model.save_pretrained(str(folder))  # overwriting a checkpoint works too

    assert sorted(os.listdir(folder)) == sorted([WEIGHTS_NAME, CONFIG_NAME])
    assert not (folder / WEIGHTS_NAME).read_bytes().startswith((b"PK", b"\x80"))  # no zip / pickle
    meta = json.loads((folder / CONFIG_NAME).read_text())
    assert meta["format"] == MODEL_FORMAT and meta["llm"] == {"name": "smollm2-135m", "fingerprint": "abc123"}

    loaded = FlameModel.from_pretrained(str(folder))
    assert loaded.cfg == cfg
    with torch.no_grad():
        a, b = model(images(), text), loaded(images(), text)
    for k in a:
        assert torch.equal(a[k], b[k]), k
    assert loaded.logit_bias.item() == -3.5


def test_load_rejects_extra_and_missing_keys(tmp_path):
    model = FlameModel(llm_cfg())
    model.save_pretrained(str(tmp_path))
    state = load_file(str(tmp_path / WEIGHTS_NAME))
    del state["projector.fc1.bias"]
    state["surplus.weight"] = torch.zeros(2)
    save_file(state, str(tmp_path / WEIGHTS_NAME))
    # Made by something else, with a digest that matches: the keys are what must be named.
    meta = json.loads((tmp_path / CONFIG_NAME).read_text())
    meta["weights_sha256"] = file_sha256(str(tmp_path / WEIGHTS_NAME))
    (tmp_path / CONFIG_NAME).write_text(json.dumps(meta))
    with pytest.raises(ModelLoadError) as err:
        FlameModel.from_pretrained(str(tmp_path))
    msg = str(err.value)
    assert "projector.fc1.bias" in msg and "surplus.weight" in msg and "\n" not in msg


def test_load_rejects_wrong_shape(tmp_path):
    FlameModel(llm_cfg()).save_pretrained(str(tmp_path))
    meta = json.loads((tmp_path / CONFIG_NAME).read_text())
    meta["text_dim"] = 20  # the stored projector no longer fits
    (tmp_path / CONFIG_NAME).write_text(json.dumps(meta))
    with pytest.raises(ModelLoadError, match="shape mismatches.*projector.fc1.weight"):
        FlameModel.from_pretrained(str(tmp_path))


def test_load_from_folder_without_files(tmp_path):
    folder = tmp_path / "empty"
    folder.mkdir()
    with pytest.raises(FileNotFoundError) as err:
        FlameModel.from_pretrained(str(folder))
    msg = str(err.value)
    assert str(folder) in msg and WEIGHTS_NAME in msg and CONFIG_NAME in msg and "\n" not in msg


# ----------------------------------------------------------------------------- optimisation details


def test_no_weight_decay_names():
    for model in (FlameModel(llm_cfg(embed_dim=6)), FlameModel(clip_cfg())):
        nwd = model.no_weight_decay_names()
        params = dict(model.named_parameters())
        assert nwd <= set(params)
        assert {n for n in params if n.endswith("bias")} <= nwd
        norms = {f"{m}.{p}" for m, mod in model.named_modules() if isinstance(mod, torch.nn.LayerNorm)
                 for p, _ in mod.named_parameters(recurse=False)}
        assert norms and norms <= nwd
        assert {"log_logit_scale", "logit_bias", "visual.trunk.pos_embed", "visual.trunk.cls_token"} <= nwd
        assert "visual.trunk.blocks.0.attn.qkv.weight" not in nwd
        assert "visual.trunk.blocks.0.attn.qkv.bias" in nwd
        assert "visual.trunk.blocks.0.mlp.fc1.weight" not in nwd
        assert "projector.fc1.weight" not in nwd and "projector.fc2.weight" not in nwd
        assert not any(params[n].ndim >= 2 and n.endswith(("qkv.weight", "proj.weight", "in_proj_weight",
                                                             "fc.weight", "fc1.weight", "fc2.weight"))
                       for n in nwd)
    # the CLIP text tower's matrices are decayed, its position embedding is not
    assert "text_encoder.positional_embedding" in nwd
    assert "text_encoder.transformer.resblocks.0.attn.in_proj_weight" not in nwd
    assert "text_encoder.transformer.resblocks.0.attn.in_proj_bias" in nwd
    assert "text_encoder.text_projection" not in nwd


def test_logit_params_init_and_clamp():
    model = FlameModel(llm_cfg())
    scale, bias = model.logit_params()
    assert scale.item() == pytest.approx(10.0, rel=1e-6) and bias.item() == -10.0
    assert model.log_logit_scale.item() == pytest.approx(math.log(10.0))
    with torch.no_grad():
        model.log_logit_scale.fill_(8.0)  # exp(8) ~ 2981
    scale, _ = model.logit_params()
    assert scale.item() == 100.0
    custom = FlameModel(llm_cfg(init_logit_scale=1 / 0.07, init_logit_bias=0.0, max_logit_scale=50.0))
    scale, bias = custom.logit_params()
    assert scale.item() == pytest.approx(1 / 0.07, rel=1e-6) and bias.item() == 0.0


@pytest.mark.parametrize("mode", ["llm", "clip"])
def test_grad_checkpointing_matches(tok, mode):
    make = llm_cfg if mode == "llm" else clip_cfg
    torch.manual_seed(0)
    plain = FlameModel(make())
    ckpt = FlameModel(make(grad_checkpointing=True))
    ckpt.load_state_dict(plain.state_dict())
    assert ckpt.visual.trunk.grad_checkpointing and not plain.visual.trunk.grad_checkpointing

    # With checkpointing a block runs again during backward: count its forward calls to prove it
    # (pre-hooks: torch stops a recomputation early, before forward hooks would fire).
    blocks = [m.visual.trunk.blocks[0] for m in (plain, ckpt)]
    if mode == "clip":
        blocks += [m.text_encoder.transformer.resblocks[0] for m in (plain, ckpt)]
    calls = {id(b): 0 for b in blocks}
    for b in blocks:
        b.register_forward_pre_hook(lambda mod, *_: calls.__setitem__(id(mod), calls[id(mod)] + 1))

    text = clip_text(tok) if mode == "clip" else llm_text(3, TINY["text_dim"])
    results = []
    for model in (plain, ckpt):
        out = model(images(), text)
        logits = out["image_features"] @ out["text_features"].T * out["logit_scale"] + out["logit_bias"]
        logits.logsumexp(-1).sum().backward()
        results.append((out, {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}))
    (out_a, grads_a), (out_b, grads_b) = results
    for k in out_a:
        assert torch.equal(out_a[k], out_b[k]), k
    assert grads_a.keys() == grads_b.keys() and len(grads_a) == len(dict(plain.named_parameters()))
    for n in grads_a:
        assert torch.equal(grads_a[n], grads_b[n]), n
    assert [calls[id(b)] for b in blocks] == [1, 2] * (len(blocks) // 2)


# ----------------------------------------------------------------------------- CLIP tokenizer


def test_clip_tokenizer_offline(monkeypatch):
    def no_network(*args, **kwargs):
        raise AssertionError("the CLIP tokenizer tried to reach the network")

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(socket.socket, "connect", no_network)
    monkeypatch.setattr(socket, "create_connection", no_network)
    import open_clip

    from flameclip.baselines import CLIP_VOCAB_SIZE, clip_tokenizer

    tok = clip_tokenizer()
    texts = ["A photo of a cat.", "word " * 200]  # the second is cut to the context
    ids = tok(texts)
    assert ids.dtype == torch.long and ids.shape == (2, 77)
    sot, eot = CLIP_VOCAB_SIZE - 2, CLIP_VOCAB_SIZE - 1
    assert (ids[:, 0] == sot).all() and ids[1, -1] == eot
    assert ids[0].argmax() > 1 and ids[0, ids[0].argmax()] == eot and (ids[0, ids[0].argmax() + 1:] == 0).all()
    assert torch.equal(ids, open_clip.get_tokenizer("ViT-B-32")(texts))


def test_text_adapter_starts_as_the_identity_and_learns():
    from flameclip.model import FlameModel, ModelConfig

    torch.manual_seed(0)
    cfg = dict(image_size=32, patch_size=8, vision_width=32, vision_depth=1, vision_heads=2, text_dim=24)
    plain, adapted = FlameModel(ModelConfig(**cfg)), FlameModel(ModelConfig(**cfg, text_adapter_depth=2))
    states = torch.randn(5, 3, 24)
    # Zero-initialised last layers: at the start the adapted text side is the paper's frozen one.
    assert torch.allclose(adapted.encode_text(states), plain.encode_text(states), atol=1e-6)
    # Its parameters receive gradients (the frozen-only model has none on the text side).
    adapted.encode_text(states).sum().backward()
    grads = [p.grad for n, p in adapted.named_parameters() if n.startswith("text_adapter") and n.endswith("fc2.weight")]
    assert grads and all(g is not None and g.abs().sum() > 0 for g in grads)
    assert not any(n.startswith("text_adapter") for n, _ in plain.named_parameters())


def test_text_adapter_and_drop_path_settings_are_checked():
    from flameclip.model import FlameModel, ModelConfig

    with pytest.raises(ValueError, match="text_adapter_depth"):
        FlameModel(ModelConfig(text_adapter_depth=-1))
    with pytest.raises(ValueError, match="text_tower='llm'"):
        FlameModel(ModelConfig(text_adapter_depth=1, text_tower="clip", embed_dim=16))
    with pytest.raises(ValueError, match="vision_drop_path"):
        FlameModel(ModelConfig(vision_drop_path=1.0))
    m = FlameModel(ModelConfig(image_size=32, patch_size=8, vision_width=32, vision_depth=2, vision_heads=2,
                               vision_drop_path=0.2))
    rates = [b.drop_path1.drop_prob for b in m.visual.trunk.blocks if hasattr(b.drop_path1, "drop_prob")]
    assert rates and max(rates) == pytest.approx(0.2)


def test_conv_stem_gives_the_patch_grid_and_survives_a_round_trip(tmp_path):
    torch.manual_seed(0)
    patch, conv = FlameModel(llm_cfg()), FlameModel(llm_cfg(vision_stem="conv"))
    assert type(conv.visual.trunk.patch_embed).__name__ == "ConvStem"
    x = images()
    assert conv.visual(x).shape == patch.visual(x).shape
    conv.save_pretrained(str(tmp_path / "c"))
    loaded = FlameModel.from_pretrained(str(tmp_path / "c"))
    assert loaded.cfg.vision_stem == "conv"
    with torch.no_grad():
        assert torch.equal(loaded.encode_image(x), conv.encode_image(x))
    # Widths whose first stage is not a multiple of 8 channels (192 / 2^4 = 12 at patch 16) build too.
    wide = FlameModel(llm_cfg(vision_stem="conv", image_size=32, patch_size=16, vision_width=192, vision_heads=3))
    assert wide.visual(images(size=32)).shape == (3, 4, 192)
    for bad in (dict(vision_stem="convs"), dict(vision_stem="conv", patch_size=6, image_size=18)):
        with pytest.raises(ValueError, match="vision_stem"):
            llm_cfg(**bad).validate()


def test_attention_pool_starts_as_the_mean_then_weighs_tokens_per_head(tmp_path):
    torch.manual_seed(0)
    model = FlameModel(llm_cfg(embed_dim=8, vision_pool="attention"))
    x = images()
    with torch.no_grad():
        tokens = model.image_tokens(x)  # [B, N, 8]
        # Zero-initialised scores: the reference's mean of the projected tokens, normalised.
        mean = tokens.mean(dim=1)
        assert torch.allclose(model.encode_image(x), mean / mean.norm(dim=-1, keepdim=True), atol=1e-6)
        # Scores that single out one token per head: each slice of the embedding is that token's.
        features = model.visual(x)
        pick = [3, 7, 0, 12, 5, 9, 1, 15]  # a token index per head (8 heads of 1 dimension)
        scores = torch.zeros(x.shape[0], N_PATCHES, 8)
        for h, i in enumerate(pick):
            scores[:, i, h] = 1e4  # scores far apart: softmax weights of 1 and 0

        class Picked(torch.nn.Module):  # the scores as if each head's query had picked its token
            def forward(self, f):
                return scores

        model.attn_pool.score = Picked()
        pooled = model.attn_pool(features, tokens)
    want = torch.stack([tokens[:, i, h] for h, i in enumerate(pick)], dim=1)
    assert torch.allclose(pooled, want, atol=1e-5)
    # Its parameters learn, and a checkpoint keeps the setting and the weights.
    model = FlameModel(llm_cfg(embed_dim=8, vision_pool="attention"))
    model.encode_image(x).pow(3).sum().backward()
    assert model.attn_pool.score.weight.grad.abs().sum() > 0
    model.save_pretrained(str(tmp_path / "a"))
    loaded = FlameModel.from_pretrained(str(tmp_path / "a"))
    assert loaded.cfg.vision_pool == "attention"
    with torch.no_grad():
        assert torch.equal(loaded.encode_image(x), model.encode_image(x))
    assert FlameModel(llm_cfg()).attn_pool is None  # the reference's mean has no pooling weights
    with pytest.raises(ValueError, match="vision_pool"):
        llm_cfg(vision_pool="max").validate()
    with pytest.raises(ValueError, match="multiple"):
        FlameModel(llm_cfg(embed_dim=10, vision_pool="attention"))


@pytest.mark.parametrize("recorded, want", [("bfloat16", "bf16"), ("float32", "fp32"), (None, "fp32")])
def test_queries_are_encoded_in_the_dtype_the_training_captions_were(recorded, want):
    from flameclip.inference import FlameCLIP

    llm = {"llm": "gemma3-270m", "weights_sha256": "0" * 64, "layer": 17, "hidden_size": 64, "max_tokens": 512}
    if recorded:
        llm["compute_dtype"] = recorded
    m = FlameCLIP(FlameModel(ModelConfig(image_size=32, patch_size=8, vision_width=32, vision_depth=1,
                                         vision_heads=2, text_dim=64, embed_dim=64, llm=llm)))
    assert m.llm_fingerprint()["compute_dtype"] == want
    # An explicit choice still wins (and is part of the text cache's key).
    other = FlameCLIP(m.model, llm_dtype="fp16")
    assert other.llm_fingerprint()["compute_dtype"] == "fp16"
