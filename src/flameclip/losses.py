"""Contrastive losses for FLAME: one image against P positive captions.

The text side is a frozen LLM whose caption embeddings are precomputed, so every image
comes with P "facet" embeddings of its caption (one per prompt). All P are positives of
their image; every other text of the global batch (all ranks) is a negative.

Shapes (local to this process):
    image_features: [B, E], L2-normalised
    text_features:  [B, P, E], L2-normalised; text_features[i] are the positives of image i
    logit_scale:    scalar tensor, already exponentiated (and clamped), e.g. 10.0
    logit_bias:     scalar tensor, e.g. -10.0

Distributed convention (the same as open_clip's SigLipLoss and ClipLoss(local_loss=True)):
when torch.distributed is initialised with world_size W > 1, each rank returns

    local_loss = W * (this rank's share of the global loss)

so that mean over ranks of local_loss == the single-process loss over the global batch,
and, because DDP averages gradients over ranks, the averaged parameter gradients equal
the single-process gradients. (A rank's gradient w.r.t. its own feature tensors is
therefore W times the single-process one; only the DDP average is meaningful.)
All ranks must hold the same B, P and E: the gather below does not check shapes.
"""

import torch
import torch.distributed as dist
import torch.nn as nn
import torch.nn.functional as F

# -----------------------------------------------------------------------------
# distributed helpers


def _rank_and_world():
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


class _AllGather(torch.autograd.Function):
    """Concatenate every rank's tensor along dim 0, with a gradient back to the owner.

    The loss on every rank reads every rank's slice, so the gradient of a slice is the
    sum over ranks of their gradients w.r.t. it. We all-reduce the full gradient and keep
    our slice: twice the traffic of a reduce-scatter, but it works on every backend (gloo
    has none) and it is one small tensor per step next to DDP's all-reduce of the weights.
    """

    @staticmethod
    def forward(ctx, x):
        x = x.contiguous()
        parts = [torch.empty_like(x) for _ in range(dist.get_world_size())]
        dist.all_gather(parts, x)
        ctx.n = x.shape[0]
        return torch.cat(parts, dim=0)

    @staticmethod
    def backward(ctx, grad):
        grad = grad.contiguous().clone()  # all_reduce is in place; autograd may reuse grad
        dist.all_reduce(grad, op=dist.ReduceOp.SUM)
        return grad.narrow(0, dist.get_rank() * ctx.n, ctx.n)


def _gather(x, world):
    return _AllGather.apply(x) if world > 1 else x


# -----------------------------------------------------------------------------
# shared input handling


def _prepare(image_features, text_features, logit_scale, logit_bias):
    if image_features.ndim != 2:
        raise ValueError(f"image_features must be [B, E], got shape {tuple(image_features.shape)}")
    if text_features.ndim != 3:
        raise ValueError(f"text_features must be [B, P, E] (P positives per image; use [:, None] for P=1), "
                         f"got shape {tuple(text_features.shape)}")
    B, E = image_features.shape
    if text_features.shape[0] != B or text_features.shape[2] != E:
        raise ValueError(f"text_features {tuple(text_features.shape)} does not match "
                         f"image_features {tuple(image_features.shape)}: expected [{B}, P, {E}]")
    # bf16/fp16 features lose too much in exp/log over thousands of logits: compute in at
    # least float32 (float64 stays float64, which lets gradcheck test the exact maths)
    dtype = torch.promote_types(image_features.dtype, torch.float32)
    img = image_features.to(dtype)
    txt = text_features.to(dtype)
    scale = torch.as_tensor(logit_scale, device=img.device).to(dtype)
    bias = None if logit_bias is None else torch.as_tensor(logit_bias, device=img.device).to(dtype)
    return img, txt, scale, bias


# -----------------------------------------------------------------------------
# losses


class MultiPositiveSigmoidLoss(nn.Module):
    """SigLIP loss with P positive captions per image (the FLAME reference loss).

    Every (image, text) pair of the global batch is an independent binary problem:
    label +1 if the text is one of the image's P captions, -1 otherwise.

        global loss = -sum over all global pairs of logsigmoid(label * logit) / (global #texts)

    We divide by the number of texts (B*P) rather than images (B, open_clip's choice):
    the sum has one positive per text, so this keeps the loss scale independent of P.
    With P=1 both are the same and this equals open_clip's SigLipLoss. Each rank returns
    the sum over its own images against all global texts divided by its own B*P, which is
    W times its share of the global loss (see the module docstring).
    """

    def forward(self, image_features, text_features, logit_scale, logit_bias):
        img, txt, scale, bias = _prepare(image_features, text_features, logit_scale, logit_bias)
        rank, world = _rank_and_world()
        B, P, E = txt.shape

        all_txt = _gather(txt, world).reshape(-1, E)  # [W*B*P, E], ordered (rank, image, facet)
        logits = scale * img @ all_txt.T  # [B, W*B*P]
        if bias is not None:
            logits = logits + bias

        # global image index owning each text vs. global index of each of our images
        owner = torch.arange(world * B, device=img.device).repeat_interleave(P)
        mine = rank * B + torch.arange(B, device=img.device)
        labels = 2 * (mine[:, None] == owner[None, :]).to(logits.dtype) - 1
        return -F.logsigmoid(labels * logits).sum() / (B * P)


class MultiPositiveSoftmaxLoss(nn.Module):
    """Symmetric InfoNCE (CLIP loss) with P positive captions per image.

    image->text: for each image, the log-softmax over all texts of the global batch,
                 averaged over its P positives; then averaged over images.
    text->image: each text has exactly one positive image: cross-entropy over all images
                 of the global batch, averaged over texts.

        global loss = (mean over global images of i2t + mean over global texts of t2i) / 2

    With P=1 this equals open_clip's ClipLoss. Each rank returns the same expression with
    the means over its own images/texts (still against the global batch), which is W times
    its share of the global loss since all ranks hold equally many. logit_bias is accepted
    for a uniform interface; it cancels in the softmax.
    """

    def forward(self, image_features, text_features, logit_scale, logit_bias=None):
        img, txt, scale, bias = _prepare(image_features, text_features, logit_scale, logit_bias)
        rank, world = _rank_and_world()
        B, P, E = txt.shape
        txt = txt.reshape(B * P, E)  # ordered (image, facet)
        all_img = _gather(img, world)  # [W*B, E]
        all_txt = _gather(txt, world)  # [W*B*P, E]
        mine = rank * B + torch.arange(B, device=img.device)  # global index of our images

        logits_i2t = scale * img @ all_txt.T  # [B, W*B*P]
        logits_t2i = scale * txt @ all_img.T  # [B*P, W*B]
        if bias is not None:
            logits_i2t = logits_i2t + bias
            logits_t2i = logits_t2i + bias

        # image i's positives sit at global text columns (rank*B + i)*P + p
        pos = mine[:, None] * P + torch.arange(P, device=img.device)[None, :]  # [B, P]
        i2t = -logits_i2t.log_softmax(dim=1).gather(1, pos).mean()
        t2i = F.cross_entropy(logits_t2i, mine.repeat_interleave(P))
        return (i2t + t2i) / 2


LOSSES = {"sigmoid": MultiPositiveSigmoidLoss, "softmax": MultiPositiveSoftmaxLoss}


def build_loss(name: str) -> nn.Module:
    if name not in LOSSES:
        raise ValueError(f"unknown loss {name!r}; choose one of {sorted(LOSSES)}")
    return LOSSES[name]()
