"""The sides that ``bench_train.py`` times, one builder each.

Each builder takes the benchmark's parsed arguments and a device, and returns ``(step, info)``:
``step()`` runs one optimiser step on tensors made up front (no data loading), and ``info`` holds
the trainable parameter count. ``bench_train.py`` says what each side is and what is matched
between them.
"""

from __future__ import annotations

import contextlib
import math

import torch
import torch.nn as nn
import torch.nn.functional as F
from open_clip.loss import ClipLoss
from open_clip.model import CLIP, CLIPTextCfg, CLIPVisionCfg

from flameclip.config import TrainConfig
from flameclip.losses import build_loss
from flameclip.model import FlameModel, ModelConfig
from flameclip.train import build_optimizer, train_step
from flameclip.vision import TokenProjector, build_image_tower

CLIP_VOCAB = 49408


def _autocast(args, device):
    return torch.autocast(device.type, dtype=torch.bfloat16) if args.precision == "bf16" else contextlib.nullcontext()


def _model_config(args, text_dim: int) -> ModelConfig:
    return ModelConfig(vision="custom", image_size=args.image_size, patch_size=args.patch_size,
                       vision_width=args.width, vision_depth=args.depth, vision_heads=args.heads,
                       text_dim=text_dim, text_tower="llm")


def _train_config(args, mcfg: ModelConfig) -> TrainConfig:
    return TrainConfig(model=mcfg, batch_size=args.batch_size, positives=args.positives, loss="sigmoid",
                       precision=args.precision)


def _adamw(model: nn.Module, cfg: TrainConfig) -> torch.optim.AdamW:
    """The same AdamW as flameclip's (lr, betas, weight decay; none on <2-d params and listed
    embeddings), for the models that are not a FlameModel."""
    listed = set()
    for prefix, module in model.named_modules():
        fn = getattr(module, "no_weight_decay", None)
        if callable(fn):
            dot = f"{prefix}." if prefix else ""
            listed.update(dot + n for n in fn())
    decay, keep = [], []
    for name, p in model.named_parameters():
        if p.requires_grad:
            (keep if p.ndim < 2 or name in listed else decay).append(p)
    groups = [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": keep, "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=cfg.lr, betas=tuple(cfg.betas))


def _n_params(*modules) -> int:
    return sum(p.numel() for m in modules for p in m.parameters() if p.requires_grad)


def _images(args, device):
    return torch.randn(args.batch_size, 3, args.image_size, args.image_size, device=device)


def build_flameclip(args, device, projector: bool = True):
    # Without the projector the tower's patch tokens are compared to the texts directly, so the
    # stored embeddings must have the tower's width.
    text_dim = args.text_dim if projector else args.width
    mcfg = _model_config(args, text_dim)
    cfg = _train_config(args, mcfg)
    model = FlameModel(mcfg)
    if not projector:
        model.projector = nn.Identity()
    model.to(device).train()
    opt = build_optimizer(model, cfg)
    loss_fn = build_loss(cfg.loss)
    autocast = _autocast(args, device)
    batch = [(_images(args, device), torch.randn(args.batch_size, args.positives, text_dim, device=device))]

    def step():
        train_step(model, model, loss_fn, opt, batch, device, autocast, cfg.grad_clip)

    return step, {"params": _n_params(model)}


def build_flame_head(args, device):
    """Projector + pooling + sigmoid loss + their AdamW on fixed tower tokens (grad to the tokens too)."""
    mcfg = _model_config(args, args.text_dim)
    cfg = _train_config(args, mcfg)
    n_tokens = (args.image_size // args.patch_size) ** 2
    proj = TokenProjector(args.width, args.text_dim).to(device).train()
    log_scale = nn.Parameter(torch.tensor(math.log(mcfg.init_logit_scale), device=device))
    bias = nn.Parameter(torch.tensor(mcfg.init_logit_bias, device=device))
    params = nn.ParameterList([log_scale, bias])
    opt = _adamw(nn.ModuleList([proj, params]), cfg)
    loss_fn = build_loss(cfg.loss)
    autocast = _autocast(args, device)
    tokens = torch.randn(args.batch_size, n_tokens, args.width, device=device, requires_grad=True)
    texts = torch.randn(args.batch_size, args.positives, args.text_dim, device=device)

    def step():
        with autocast:
            img = TokenProjector.pool(proj(tokens))
            txt = F.normalize(texts, dim=-1)
        loss = loss_fn(img.float(), txt.float(), log_scale.exp().clamp(max=mcfg.max_logit_scale), bias)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        tokens.grad = None

    return step, {"params": _n_params(proj, params)}


def build_bare(args, device):
    mcfg = _model_config(args, args.text_dim)
    cfg = _train_config(args, mcfg)
    # flameclip's tower builder only to get a trunk of exactly the same config; the step below
    # calls timm directly and nothing of flameclip.
    trunk = build_image_tower(mcfg).trunk.to(device).train()
    prefix = int(trunk.num_prefix_tokens)
    opt = _adamw(trunk, cfg)
    autocast = _autocast(args, device)
    images = _images(args, device)

    def step():
        with autocast:
            pooled = trunk.forward_features(images)[:, prefix:].mean(dim=1)
        loss = pooled.float().pow(2).mean()
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    return step, {"params": _n_params(trunk)}


def openclip_vision_cfg(args) -> CLIPVisionCfg:
    if args.openclip_vision == "timm":
        return CLIPVisionCfg(timm_model_name=args.timm_name, timm_model_pretrained=False, timm_pool="avg",
                             timm_proj="linear", image_size=args.image_size)
    return CLIPVisionCfg(layers=args.depth, width=args.width, head_width=args.width // args.heads, mlp_ratio=4.0,
                         patch_size=args.patch_size, image_size=args.image_size)


def build_openclip(args, device):
    mcfg = _model_config(args, args.text_dim)
    cfg = _train_config(args, mcfg)
    text_cfg = CLIPTextCfg(context_length=args.context_length, vocab_size=CLIP_VOCAB, width=args.text_width,
                           heads=args.text_heads, layers=args.text_layers)
    model = CLIP(embed_dim=args.embed_dim, vision_cfg=openclip_vision_cfg(args), text_cfg=text_cfg,
                 quick_gelu=False, output_dict=True).to(device).train()
    opt = _adamw(model, cfg)
    loss_fn = ClipLoss()
    autocast = _autocast(args, device)
    images = _images(args, device)
    tokens = torch.randint(0, CLIP_VOCAB, (args.batch_size, args.context_length), device=device)

    def step():
        with autocast:
            out = model(images, tokens)
        # in fp32 outside autocast, as flameclip's train_step does with its loss
        loss = loss_fn(out["image_features"].float(), out["text_features"].float(), out["logit_scale"].float())
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    return step, {"params": _n_params(model), "vision_params": _n_params(model.visual)}


def build_side(name: str, args, device):
    torch.manual_seed(0)
    if name == "flameclip":
        return build_flameclip(args, device, projector=True)
    if name == "flameclip-noproj":
        return build_flameclip(args, device, projector=False)
    if name == "flame-head":
        return build_flame_head(args, device)
    if name == "bare-timm":
        return build_bare(args, device)
    if name == "open_clip":
        return build_openclip(args, device)
    raise ValueError(f"unknown side {name!r}")
