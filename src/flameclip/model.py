"""FLAME model: a trainable image tower + per-token projector against frozen LLM text embeddings.

The text side of FLAME is a frozen LLM whose caption embeddings were computed once and stored, so
in "llm" mode the model holds no text encoder at all: ``encode_text`` takes the stored [..., D]
vectors and at most applies a trainable Linear (when a shared space narrower/wider than D is
asked for). "clip" mode swaps in a trainable open_clip text transformer: the CLIP baseline,
trained by the same loop.

Checkpoints are a folder with model.safetensors + config.json (no pickle: loading one never runs
code). The LLM itself is never stored; ``ModelConfig.llm`` records which LLM made the embeddings.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import asdict, fields

import torch
import torch.nn as nn
import torch.nn.functional as F
from safetensors.torch import load_file, save_file

from .config import ModelConfig
from .fileio import file_sha256, fsync_dir, fsync_file, tmp_name, write_tmp_bytes
from .vision import AttentionPool, TokenProjector, build_image_tower

# /2 records the sha256 of model.safetensors in config.json and checks it on load; /1 folders (no
# digest) still load.
MODEL_FORMAT = "flameclip-model/2"
READABLE_FORMATS = ("flameclip-model/1", MODEL_FORMAT)
WEIGHTS_NAME = "model.safetensors"
CONFIG_NAME = "config.json"


class ModelLoadError(RuntimeError):
    """A checkpoint does not fit the model its config describes."""


def _name_list(names: list[str], limit: int = 8) -> str:
    names = sorted(names)
    shown = ", ".join(names[:limit])
    return shown + (f", ... ({len(names) - limit} more)" if len(names) > limit else "")


def load_state_dict_strict(model: nn.Module, state: dict[str, torch.Tensor], source: str = "state dict") -> None:
    """``model.load_state_dict(state)`` that fails with one line naming every bad key.

    torch's own strict error spans many lines and stops at the first problem kind; a checkpoint
    from another config (or another version) should say at once what does not fit.
    """
    expected = model.state_dict()
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    shapes = [
        f"{k} {list(state[k].shape)} vs {list(v.shape)}"
        for k, v in expected.items()
        if k in state and state[k].shape != v.shape
    ]
    problems = []
    if missing:
        problems.append(f"missing keys: {_name_list(missing)}")
    if unexpected:
        problems.append(f"unexpected keys: {_name_list(unexpected)}")
    if shapes:
        problems.append(f"shape mismatches (checkpoint vs model): {_name_list(shapes)}")
    if problems:
        raise ModelLoadError(f"{source} does not fit the model: " + "; ".join(problems))
    model.load_state_dict(state, strict=True)


class ResidualMLP(nn.Module):
    """``x + fc2(gelu(fc1(norm(x))))`` with ``fc2`` zero-initialised: the identity at the start."""

    def __init__(self, dim: int):
        super().__init__()
        self.norm = nn.LayerNorm(dim)
        self.fc1 = nn.Linear(dim, dim)
        self.fc2 = nn.Linear(dim, dim)
        nn.init.zeros_(self.fc2.weight)
        nn.init.zeros_(self.fc2.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.fc2(F.gelu(self.fc1(self.norm(x))))


class FlameModel(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        cfg.validate()
        self.cfg = cfg
        self.embed_dim = cfg.shared_dim

        self.visual = build_image_tower(cfg)
        self.projector = TokenProjector(self.visual.width, self.embed_dim)
        self.attn_pool = AttentionPool(self.visual.width, self.embed_dim) if cfg.vision_pool == "attention" else None

        self.text_proj = None  # llm mode, optional Linear(D, E)
        self.text_adapter = None  # llm mode, optional residual MLP blocks on the frozen states
        self.text_encoder = None  # clip mode, the trainable text transformer
        if cfg.text_tower == "llm":
            if cfg.embed_dim is not None:
                self.text_proj = nn.Linear(cfg.text_dim, cfg.embed_dim)
            if cfg.text_adapter_depth:
                self.text_adapter = nn.Sequential(*[ResidualMLP(cfg.text_dim) for _ in range(cfg.text_adapter_depth)])
            if cfg.center_mode != "none":
                # Set once from the store before training (see train.py), saved with the weights.
                self.register_buffer("text_mean", torch.zeros(cfg.text_dim))
            if cfg.center_mode == "prompt":
                self.register_buffer("text_facet_means", torch.zeros(len(cfg.text_facets), cfg.text_dim))
            if cfg.text_whiten:
                self.register_buffer("text_whitening", torch.eye(cfg.text_dim))  # set from the store, like the means
        else:
            # Imported here: open_clip is only needed by the baseline, and is slow to import.
            from .baselines.clip_text import ClipTextTower

            self.text_encoder = ClipTextTower(cfg)

        # The scale is learned in log space (it stays positive and moves multiplicatively), the
        # bias as is; both are 0-d like open_clip's.
        self.log_logit_scale = nn.Parameter(torch.tensor(math.log(cfg.init_logit_scale)))
        self.logit_bias = nn.Parameter(torch.tensor(float(cfg.init_logit_bias)))

        if cfg.grad_checkpointing:
            self.set_grad_checkpointing(True)

    # ------------------------------------------------------------------ image side

    def image_tokens(self, images: torch.Tensor) -> torch.Tensor:
        """Patch tokens after the projector [B, N, E], before pooling (what word maps read)."""
        return self.projector(self.visual(images))

    def encode_image(self, images: torch.Tensor, normalize: bool = True) -> torch.Tensor:
        """Image embedding [B, E]: the mean of the projected patch tokens (or their attention-pooled
        mix, ``vision_pool="attention"``), L2-normalised."""
        if self.attn_pool is None:
            return TokenProjector.pool(self.image_tokens(images), normalize=normalize)
        features = self.visual(images)
        x = self.attn_pool(features, self.projector(features))
        return F.normalize(x, dim=-1) if normalize else x

    def pooled_features(self, images: torch.Tensor) -> torch.Tensor:
        """Tower features [B, w] before the projector (mean of patch tokens), for linear probes."""
        return self.visual.pooled_features(images)

    # ------------------------------------------------------------------ text side

    def encode_text(self, text: torch.Tensor, normalize: bool = True) -> torch.Tensor:
        """Text embedding [..., E].

        llm mode: ``text`` is a float tensor [..., D] of stored LLM embeddings (e.g. [B, P, D]
        for P facets per caption). clip mode: ``text`` is a LongTensor [..., L] of CLIP ids.
        """
        if self.text_encoder is None:
            if not text.is_floating_point() or text.shape[-1] != self.cfg.text_dim:
                raise ValueError(
                    f"llm mode expects float LLM embeddings [..., {self.cfg.text_dim}], "
                    f"got {text.dtype} {list(text.shape)}"
                )
            # Stored embeddings may be fp16; normalise in the model's precision.
            x = text.to(self.log_logit_scale.dtype)
            if self.cfg.center_mode == "global":
                x = x - self.text_mean
            if self.cfg.text_whiten:
                x = x @ self.text_whitening  # linear, so it commutes with the mean over facets
            if self.text_adapter is not None:
                x = self.text_adapter(x)
            if self.text_proj is not None:
                x = self.text_proj(x)
        else:
            length = self.text_encoder.context_length
            if text.is_floating_point() or text.shape[-1] != length:
                raise ValueError(
                    f"clip mode expects CLIP token ids [..., {length}], got {text.dtype} {list(text.shape)}"
                )
            lead = text.shape[:-1]
            x = self.text_encoder(text.reshape(-1, length)).reshape(*lead, -1)
        return F.normalize(x, dim=-1) if normalize else x

    def center_states(self, states: torch.Tensor, prompt_set: str) -> torch.Tensor:
        """LLM states [N, K, D] of ``prompt_set`` as ``encode_text`` takes them after ``mean(dim=1)``.

        With "prompt" centring, facet k of the set loses its own mean; a set this model was not
        trained with loses the mean of every trained row. Otherwise the states pass unchanged
        (global centring happens inside ``encode_text``, where it commutes with the facet mean).
        """
        if self.cfg.center_mode != "prompt":
            return states
        names = [f"{prompt_set}:{k}" for k in range(states.shape[1])]
        if all(n in self.cfg.text_facets for n in names):
            means = self.text_facet_means[[self.cfg.text_facets.index(n) for n in names]]
        else:
            means = self.text_mean.expand(len(names), -1)
        return states - means.to(states.device, states.dtype)

    # ------------------------------------------------------------------ both

    def logit_params(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(scale, bias) of the logits; the scale is capped so training cannot blow it up."""
        scale = self.log_logit_scale.exp().clamp(max=self.cfg.max_logit_scale)
        return scale, self.logit_bias

    def forward(self, images: torch.Tensor, text: torch.Tensor) -> dict[str, torch.Tensor]:
        scale, bias = self.logit_params()
        return {
            "image_features": self.encode_image(images),
            "text_features": self.encode_text(text),
            "logit_scale": scale,
            "logit_bias": bias,
        }

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        self.visual.set_grad_checkpointing(enable)
        if self.text_encoder is not None:
            self.text_encoder.set_grad_checkpointing(enable)

    def no_weight_decay_names(self) -> set[str]:
        """Names of the parameters that must not be weight-decayed.

        Everything below 2-d (biases, norm gains, the logit scale and bias), every parameter of a
        norm layer, and what the towers themselves list (timm: pos_embed, cls_token, ...;
        open_clip: positional_embedding): decaying those pulls them to zero for no benefit.
        """
        params = dict(self.named_parameters())
        names = {n for n, p in params.items() if p.ndim < 2}
        norms = (nn.LayerNorm, nn.GroupNorm, nn.RMSNorm, nn.modules.batchnorm._BatchNorm)
        for prefix, module in self.named_modules():
            dot = f"{prefix}." if prefix else ""
            if isinstance(module, norms):
                names.update(dot + n for n, _ in module.named_parameters(recurse=False))
            listed = getattr(module, "no_weight_decay", None)
            if module is not self and callable(listed):
                names.update(dot + n for n in listed() if dot + n in params)
        return names

    # ------------------------------------------------------------------ checkpoints

    def save_pretrained(self, directory: str) -> None:
        """Write ``directory``/model.safetensors and config.json, each atomically.

        Both files are written to temporary names first. The old config.json (if any) is removed
        before the weights are swapped in and the new config is renamed last, so a crash at any
        point leaves either a whole old checkpoint, a whole new one, or a folder without
        config.json that ``from_pretrained`` refuses; never new weights under an old config.
        """
        os.makedirs(directory, exist_ok=True)
        weights = os.path.join(directory, WEIGHTS_NAME)
        config = os.path.join(directory, CONFIG_NAME)
        tensors = {k: v.detach().to("cpu").contiguous() for k, v in self.state_dict().items()}
        tmp_weights = tmp_name(weights)
        tmp_config = None
        try:
            save_file(tensors, tmp_weights, metadata={"format": "pt", "flameclip": MODEL_FORMAT})
            fsync_file(tmp_weights)
            meta = {**asdict(self.cfg), "format": MODEL_FORMAT, "weights_sha256": file_sha256(tmp_weights)}
            tmp_config = write_tmp_bytes(config, (json.dumps(meta, indent=2) + "\n").encode())
            if os.path.exists(config):
                os.remove(config)
            os.replace(tmp_weights, weights)
            os.replace(tmp_config, config)
        finally:
            for tmp in (tmp_weights, tmp_config):
                if tmp is not None and os.path.exists(tmp):
                    os.remove(tmp)
        fsync_dir(directory)

    @classmethod
    def from_pretrained(cls, directory: str, map_location: str | torch.device = "cpu") -> FlameModel:
        weights = os.path.join(directory, WEIGHTS_NAME)
        config = os.path.join(directory, CONFIG_NAME)
        absent = [n for n in (WEIGHTS_NAME, CONFIG_NAME) if not os.path.isfile(os.path.join(directory, n))]
        if absent:
            raise FileNotFoundError(f"{directory} is not a flameclip model folder: no {' and no '.join(absent)}")
        try:
            with open(config, encoding="utf-8") as f:
                raw = json.load(f)
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise ModelLoadError(f"{config}: not a readable model config ({e}); the checkpoint is damaged") from None
        if not isinstance(raw, dict):
            raise ModelLoadError(f"{config}: not a flameclip model config (a JSON object was expected)")
        fmt = raw.pop("format", None)
        if fmt not in READABLE_FORMATS:
            raise ModelLoadError(f"{config}: format {fmt!r}, expected {MODEL_FORMAT!r}: not saved by flameclip")
        digest = raw.pop("weights_sha256", None)
        if fmt == MODEL_FORMAT and (not digest or file_sha256(weights) != digest):
            raise ModelLoadError(f"{weights} does not match the digest recorded in its config.json: the file is damaged "
                                 "or was replaced; use another checkpoint (training keeps the last two)")
        known = {f.name for f in fields(ModelConfig)}
        unknown = sorted(set(raw) - known)
        if unknown:
            raise ModelLoadError(f"{config}: unknown config fields {', '.join(unknown)}")
        try:
            model = cls(ModelConfig(**raw))
        except (TypeError, ValueError) as e:
            raise ModelLoadError(f"{config}: the model config cannot be built ({e})") from None
        try:
            state = load_file(weights, device="cpu")
        except Exception as e:  # noqa: BLE001 - safetensors raises its own types for truncated files
            raise ModelLoadError(f"{weights}: not a readable safetensors file ({e}); the checkpoint is damaged") from None
        load_state_dict_strict(model, state, source=weights)
        return model.to(map_location)
