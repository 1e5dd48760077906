"""The training step's kernel choices compute what PyTorch's defaults compute, and are made where meant."""

from __future__ import annotations

import contextlib
import copy

import pytest
import torch
import torch.nn.functional as F

from flameclip.config import ModelConfig, TrainConfig
from flameclip.data.images import default_workers
from flameclip.model import FlameModel
from flameclip.step_kernels import attention_kernel, fused_adamw_ok
from flameclip.train import build_optimizer


def _attention(q, k, v):
    return F.scaled_dot_product_attention(q, k, v)


def test_math_attention_only_on_a_cpu_in_bf16_autocast():
    q = torch.randn(2, 3, 65, 16, requires_grad=True)
    plain = attention_kernel("cpu")
    assert plain.__class__.__name__ == "nullcontext"  # fp32: PyTorch's own choice
    with torch.autocast("cpu", dtype=torch.bfloat16):
        chosen = attention_kernel("cpu")
        assert chosen.__class__.__name__ != "nullcontext"
        assert attention_kernel("meta").__class__.__name__ == "nullcontext"  # not a CPU
    # Inside the chosen context the flash kernel is refused: asking for it alone fails.
    from torch.nn.attention import SDPBackend, sdpa_kernel

    with torch.autocast("cpu", dtype=torch.bfloat16), attention_kernel("cpu"):
        out = _attention(q, q, q)
    with torch.autocast("cpu", dtype=torch.bfloat16), sdpa_kernel([SDPBackend.MATH]):
        ref = _attention(q, q, q)
    assert torch.equal(out, ref)


def test_math_attention_computes_the_flash_kernels_function_and_gradient():
    torch.manual_seed(0)
    q, k, v = (torch.randn(4, 3, 65, 32, dtype=torch.float64).float().requires_grad_() for _ in range(3))
    grads, outs = [], []
    for math in (False, True):
        for t in (q, k, v):
            t.grad = None
        with torch.autocast("cpu", dtype=torch.bfloat16):
            with attention_kernel("cpu") if math else contextlib.nullcontext():
                out = _attention(q, k, v)
        out.float().pow(2).sum().backward()
        outs.append(out.float())
        grads.append([t.grad.clone() for t in (q, k, v)])
    # bf16 arithmetic on both sides: equal to bf16 rounding, not to the bit.
    assert torch.allclose(outs[0], outs[1], atol=3e-2, rtol=3e-2)
    for a, b in zip(grads[0], grads[1]):
        assert torch.allclose(a, b, atol=0.15, rtol=5e-2), (a - b).abs().max()


def _tiny_cfg() -> TrainConfig:
    model = ModelConfig(vision="custom", image_size=16, patch_size=8, vision_width=16, vision_depth=1,
                        vision_heads=2, text_dim=8, text_tower="llm")
    return TrainConfig(model=model, lr=1e-2, weight_decay=0.1)


def test_the_trainers_adamw_is_fused_on_a_cpu_and_steps_like_the_loop():
    cfg = _tiny_cfg()
    torch.manual_seed(0)
    model = FlameModel(cfg.model)
    twin = copy.deepcopy(model)
    opt = build_optimizer(model, cfg)
    assert opt.defaults["fused"] is True
    loop = torch.optim.AdamW([{"params": [dict(twin.named_parameters())[n] for n, p in model.named_parameters()
                                          if any(p is q for q in g["params"])], "weight_decay": g["weight_decay"]}
                              for g in opt.param_groups], lr=cfg.lr, betas=tuple(cfg.betas))
    assert not loop.defaults["fused"]
    images = torch.randn(4, 3, 16, 16)
    target = torch.randn(4, model.encode_image(images).shape[-1])  # features are unit vectors: pull them somewhere
    for _ in range(3):
        for m, o in ((model, opt), (twin, loop)):
            o.zero_grad()
            (m.encode_image(images) * target).sum().backward()
            o.step()
    moved = [not torch.equal(a, b) for a, b in zip(model.parameters(), FlameModel(cfg.model).parameters())]
    assert any(moved)
    # Equal where the gradient is not tiny: where it is (the CLS token, which the pooled output
    # barely sees), Adam's eps dominates the update and the two implementations round it apart.
    compared = 0
    for (name, a), b in zip(model.named_parameters(), twin.parameters()):
        if a.grad is None:  # not in the image tower: neither optimiser touched it
            assert torch.equal(a, b), name
        elif a.grad.abs().max() > 1e-4:
            compared += 1
            # within 1% of one step's size (lr 1e-2): betas, weight decay or the groups wrong would be far off
            assert torch.allclose(a, b, atol=1e-4, rtol=0), (name, (a - b).abs().max())
    assert compared >= 10


def test_fused_adamw_is_refused_where_it_cannot_run():
    assert fused_adamw_ok([torch.zeros(2)])
    assert not fused_adamw_ok([torch.zeros(2, dtype=torch.int64)])
    assert not fused_adamw_ok([torch.zeros(2, device="meta")])
    assert not fused_adamw_ok([])


@pytest.mark.parametrize("cores, device, want", [(2, "cpu", 0), (1, "cpu", 0), (2, "cuda", 1), (4, "cpu", 3),
                                                 (16, "cuda", 4), (16, "cpu", 4)])
def test_loader_workers_leave_a_small_cpu_to_the_step(monkeypatch, cores, device, want):
    monkeypatch.setattr("os.cpu_count", lambda: cores)
    assert default_workers(device) == want
