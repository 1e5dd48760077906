"""Multi-positive sigmoid/softmax losses: open_clip parity, naive references, gradients, torchrun."""

import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from open_clip.loss import ClipLoss, SigLipLoss

from flameclip.losses import MultiPositiveSigmoidLoss, MultiPositiveSoftmaxLoss, build_loss
from tests.dist_loss_worker import LOSS_NAMES, make_problem

ROOT = Path(__file__).resolve().parents[1]


def _features(B, P, E, seed, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    img = F.normalize(torch.randn(B, E, generator=g, dtype=dtype), dim=-1)
    txt = F.normalize(torch.randn(B, P, E, generator=g, dtype=dtype), dim=-1)
    return img, txt


# -----------------------------------------------------------------------------
# naive references: loops over pairs, straight from the definitions


def naive_sigmoid(img, txt, scale, bias):
    B, P, _ = txt.shape
    total = 0.0
    for i in range(B):
        for j in range(B):
            for p in range(P):
                y = 1.0 if i == j else -1.0
                total = total - F.logsigmoid(y * (scale * img[i] @ txt[j, p] + bias))
    return total / (B * P)


def naive_softmax(img, txt, scale):
    B, P, _ = txt.shape
    texts = [(j, p) for j in range(B) for p in range(P)]
    i2t = 0.0
    for i in range(B):
        denom = torch.logsumexp(torch.stack([scale * img[i] @ txt[j, p] for j, p in texts]), 0)
        i2t = i2t + sum(-(scale * img[i] @ txt[i, p] - denom) for p in range(P)) / P
    t2i = 0.0
    for j, p in texts:
        denom = torch.logsumexp(torch.stack([scale * txt[j, p] @ img[i] for i in range(B)]), 0)
        t2i = t2i - (scale * txt[j, p] @ img[j] - denom)
    return (i2t / B + t2i / len(texts)) / 2


# -----------------------------------------------------------------------------
# P = 1 equals open_clip


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("B", [1, 7])
def test_p1_sigmoid_equals_open_clip(seed, B):
    img, txt = _features(B, 1, 32, seed)
    scale, bias = torch.tensor(10.0), torch.tensor(-10.0 + seed)  # seed varies the bias a little
    ours = MultiPositiveSigmoidLoss()(img, txt, scale, bias)
    ref = SigLipLoss()(img, txt[:, 0], scale, bias)
    torch.testing.assert_close(ours, ref, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("B", [1, 7])
def test_p1_softmax_equals_open_clip(seed, B):
    img, txt = _features(B, 1, 32, seed)
    scale = torch.tensor(10.0 + 5 * seed)
    ours = MultiPositiveSoftmaxLoss()(img, txt, scale)
    ref = ClipLoss()(img, txt[:, 0], scale)
    torch.testing.assert_close(ours, ref, rtol=1e-6, atol=1e-6)
    # a bias cancels in the softmax
    torch.testing.assert_close(MultiPositiveSoftmaxLoss()(img, txt, scale, torch.tensor(-10.0)), ref,
                               rtol=1e-5, atol=1e-5)


# -----------------------------------------------------------------------------
# P > 1 equals the naive definitions, values and gradients


@pytest.mark.parametrize("B,P", [(5, 3), (2, 7), (4, 1)])
def test_sigmoid_equals_naive(B, P):
    img, txt = _features(B, P, 16, seed=B * 10 + P)
    scale, bias = torch.tensor(7.0), torch.tensor(-3.0)
    ours = build_loss("sigmoid")(img, txt, scale, bias)
    ref = naive_sigmoid(img.double(), txt.double(), 7.0, -3.0)
    torch.testing.assert_close(ours.double(), ref, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("B,P", [(5, 3), (2, 7), (4, 1)])
def test_softmax_equals_naive(B, P):
    img, txt = _features(B, P, 16, seed=B * 10 + P)
    ours = build_loss("softmax")(img, txt, torch.tensor(12.0))
    ref = naive_softmax(img.double(), txt.double(), 12.0)
    torch.testing.assert_close(ours.double(), ref, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("name", ["sigmoid", "softmax"])
def test_gradients_match_naive_autograd(name):
    B, P = 4, 3
    img, txt = _features(B, P, 8, seed=5)
    scale = torch.tensor(6.0, requires_grad=True)
    bias = torch.tensor(-2.0, requires_grad=True)

    leaves = [img.clone().requires_grad_(True), txt.clone().requires_grad_(True)]
    build_loss(name)(*leaves, scale, bias).backward()
    ours = [leaves[0].grad, leaves[1].grad, scale.grad]

    ref_leaves = [img.double().requires_grad_(True), txt.double().requires_grad_(True),
                  scale.detach().double().requires_grad_(True), bias.detach().double().requires_grad_(True)]
    if name == "sigmoid":
        naive_sigmoid(*ref_leaves).backward()
        torch.testing.assert_close(bias.grad.double(), ref_leaves[3].grad, rtol=1e-5, atol=1e-6)
    else:
        naive_softmax(*ref_leaves[:3]).backward()
    for g, r in zip(ours, [leaf.grad for leaf in ref_leaves[:3]]):
        torch.testing.assert_close(g.double(), r, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("name", ["sigmoid", "softmax"])
def test_gradcheck_float64(name):
    # finite differences: the analytic backward of the vectorised loss is right
    img, txt = _features(3, 2, 5, seed=9, dtype=torch.float64)
    inputs = (img.requires_grad_(True), txt.requires_grad_(True),
              torch.tensor(4.0, dtype=torch.float64, requires_grad=True),
              torch.tensor(-1.0, dtype=torch.float64, requires_grad=True))
    assert torch.autograd.gradcheck(build_loss(name), inputs)


# -----------------------------------------------------------------------------
# properties and input handling


@pytest.mark.parametrize("name", ["sigmoid", "softmax"])
def test_aligned_positives_give_lower_loss(name):
    B, P, E = 6, 3, 32
    g = torch.Generator().manual_seed(3)
    img = F.normalize(torch.randn(B, E, generator=g), dim=-1)
    # each text is a noisy copy of its own image
    txt = F.normalize(img[:, None] + 0.3 * torch.randn(B, P, E, generator=g), dim=-1)
    shuffled = txt[torch.roll(torch.arange(B), 1)]  # every image now holds another's captions
    loss = build_loss(name)
    scale, bias = torch.tensor(10.0), torch.tensor(-5.0)
    aligned_loss, shuffled_loss = loss(img, txt, scale, bias), loss(img, shuffled, scale, bias)
    assert aligned_loss < shuffled_loss - 1.0, (aligned_loss, shuffled_loss)


@pytest.mark.parametrize("name", ["sigmoid", "softmax"])
def test_bf16_inputs_are_computed_in_float32(name):
    img, txt = _features(5, 3, 16, seed=4)
    img16, txt16 = img.bfloat16(), txt.bfloat16()
    scale, bias = torch.tensor(10.0), torch.tensor(-4.0)
    out = build_loss(name)(img16, txt16, scale, bias)
    assert out.dtype == torch.float32
    # the same as float32 maths on the bf16-rounded values; bf16 maths would be ~1e-2 off
    ref = build_loss(name)(img16.float(), txt16.float(), scale, bias)
    torch.testing.assert_close(out, ref, rtol=1e-6, atol=1e-6)


def test_bad_inputs_are_refused():
    img, txt = _features(4, 2, 8, seed=0)
    loss = build_loss("sigmoid")
    s, b = torch.tensor(10.0), torch.tensor(-10.0)
    with pytest.raises(ValueError, match=r"\[B, P, E\]"):
        loss(img, txt[:, 0], s, b)
    with pytest.raises(ValueError, match="does not match"):
        loss(img[:3], txt, s, b)
    with pytest.raises(ValueError, match="does not match"):
        loss(img[:, :4], txt, s, b)
    with pytest.raises(ValueError, match="unknown loss 'infonce'"):
        build_loss("infonce")


# -----------------------------------------------------------------------------
# two torchrun processes == one process over the global batch


@pytest.fixture(scope="module")
def torchrun_results(tmp_path_factory):
    out = tmp_path_factory.mktemp("dist_loss")
    env = dict(os.environ, OMP_NUM_THREADS="1", CUDA_VISIBLE_DEVICES="")
    # the worker imports `flameclip` and must not depend on the test's cwd
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT / "src"), env.get("PYTHONPATH")]))
    # --standalone lets torchrun pick a free port itself (no bind-then-release race).
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           str(ROOT / "tests" / "dist_loss_worker.py"), str(out)]
    r = subprocess.run(cmd, env=env, cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr[-3000:]
    return {name: torch.load(out / f"{name}.pt", weights_only=True) for name in LOSS_NAMES}


@pytest.mark.slow
@pytest.mark.parametrize("name", LOSS_NAMES)
def test_torchrun_matches_single_process(torchrun_results, name):
    dist_res = torchrun_results[name]
    world = dist_res["world"]
    assert world == 2

    model, x_img, x_txt = make_problem()
    x_img.requires_grad_(True)
    x_txt.requires_grad_(True)
    loss = build_loss(name)(*model(x_img, x_txt))
    loss.backward()

    torch.testing.assert_close(dist_res["loss"], loss.detach(), rtol=0, atol=1e-5)
    for pname, p in model.named_parameters():
        torch.testing.assert_close(dist_res["grads"][pname], p.grad, rtol=0, atol=1e-5, msg=pname)
    # each rank's feature gradients are world x the global ones (the DDP average undoes it)
    torch.testing.assert_close(dist_res["x_img_grad"] / world, x_img.grad, rtol=0, atol=1e-5)
    torch.testing.assert_close(dist_res["x_txt_grad"] / world, x_txt.grad, rtol=0, atol=1e-5)
    # and the split is not trivially the same as each rank ignoring the other's batch
    half = x_img.shape[0] // world
    local_only = sum(build_loss(name)(*model(x_img[r * half:(r + 1) * half], x_txt[r * half:(r + 1) * half]))
                     for r in range(world)) / world
    assert not math.isclose(local_only.item(), loss.item(), abs_tol=1e-3)
