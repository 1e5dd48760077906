"""The configs: ModelConfig (the model a checkpoint holds), TrainConfig (a training run, read from
TOML and overridden by ``key=value`` on the command line), EmbedConfig (an embed job) and
LLMIdentity (which LLM made a set of text states).

A config file is a TOML document whose top-level keys are ``TrainConfig`` fields and whose
``[model]`` table holds ``ModelConfig`` fields. Overrides use dotted keys (``model.vision_depth=4``)
and TOML literal syntax for values (``lr=3e-4``, ``text_columns=["raw","long"]``, ``resume="latest"``;
a bare word that is not a TOML literal is taken as a string).
"""

from __future__ import annotations

import copy
import dataclasses
import difflib
import math
import tomllib
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path

TEXT_TOWERS = ("llm", "clip")
# Whose spread the whitening of the frozen states equalises (data.centering.store_whitening).
WHITENING_COVARIANCES = ("total", "within-image")


@dataclass(frozen=True)
class LLMIdentity:
    """Which LLM made a set of text states, and how: what keeps query states matched to the
    training captions' states. ``embed`` writes it into a store's fingerprint, training copies it
    into the checkpoint (``ModelConfig.llm``), and inference reads it back to encode queries the
    same way. Stored as a plain dict (``record``) so that manifests and config.json stay JSON."""

    llm: str | None = None  # packaged name or path
    weights_sha256: str | None = None
    layer: int | None = None  # the decoder layer read (resolved, not -2)
    num_layers: int | None = None
    hidden_size: int | None = None
    compute_dtype: str | None = None  # a torch dtype name ("bfloat16"); absent in older records: fp32
    max_tokens: int | None = None  # the facet sequence cap, prompt included
    route: str | None = None  # recorded only for an inexact route (the ablation's "causal")

    @classmethod
    def from_record(cls, record: dict | None) -> LLMIdentity:
        """From a store fingerprint or a checkpoint's ``llm`` (other keys, e.g. prompt_sets, are not its)."""
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in (record or {}).items() if k in names})

    def record(self) -> dict:
        return {k: v for k, v in dataclasses.asdict(self).items() if v is not None}

    def query_key(self, name: str | None, dtype: str) -> dict:
        """The text cache's key for query states: this LLM (or the folder ``name`` it was found at),
        layer, the short compute dtype queries run in, and an inexact route."""
        key = {"llm": self.llm or name, "weights_sha256": self.weights_sha256, "layer": self.layer, "compute_dtype": dtype}
        if self.route:
            key["route"] = self.route
        return key


@dataclass
class ModelConfig:
    vision: str = "custom"  # timm model name (e.g. "vit_base_patch16_224") or "custom"
    image_size: int = 64
    patch_size: int = 8  # the custom ViT's; a timm name fixes its own
    vision_width: int = 192
    vision_depth: int = 6
    vision_heads: int = 3
    text_dim: int = 576  # width D of the stored LLM embeddings (FLAME)
    # The shared space. None = the LLM space D itself (the reference). Set => a trainable
    # Linear(D, embed_dim) on the text side and the image projector outputs embed_dim.
    embed_dim: int | None = None
    text_tower: str = "llm"  # "llm" = frozen LLM embeddings (FLAME) | "clip" = open_clip text transformer
    clip_context_length: int = 77
    clip_width: int = 256
    clip_layers: int = 4
    clip_heads: int = 4
    init_logit_scale: float = 10.0  # the reference's initial values (sigmoid loss)
    init_logit_bias: float = -10.0
    max_logit_scale: float = 100.0
    grad_checkpointing: bool = False
    # Centre the stored text embeddings before normalising. LLM states share a few huge activations
    # (SmolLM2: one dimension holds most of the norm), so all captions start with a cosine near 0.9.
    #   false / "none": the reference (no centring);
    #   true / "global": subtract one mean state of the training store;
    #   "prompt": every prompt facet (single's one, long7's seven, ...) gets its own mean, since each
    #     facet adds its own offset ("overall atmosphere" rows of any two scenes stay at cosine 0.8
    #     after one global mean). Stored rows are centred as they are read, queries per facet
    #     before their facets are averaged (see ``center_states``).
    text_center: bool | str = False
    # The prompt facets of the training store's rows, as "set:index" (set from the store by the
    # trainer): "prompt" centring holds a mean for each, and a query is checked against them
    text_facets: list[str] = field(default_factory=list)
    # Whiten the centred LLM states with a fixed matrix fitted once on the training store (frozen,
    # like the centring): 0 = off (the reference); p in (0, 1] divides every principal direction
    # by (its variance)^(p/2), so 1 is full whitening and 0.5 halves the spread of the spectrum.
    # A few directions (template, length, prompt) hold most of the variance of raw states; what
    # tells scenes apart lives in the small ones, which plain cosine similarity barely sees.
    text_whiten: float = 0.0
    # Whose spread the whitening equalises: "total" (all centred rows, the default) or
    # "within-image" (each row about its own image's mean row: the directions where an image's
    # captions and facets disagree are damped, those they share weigh more). Needs several rows per
    # image; on the demo's validation split it trades held-out long and short captions for alt-text,
    # other languages and unseen phrasing (BENCHMARKS.md, "Whitening within an image").
    text_whiten_covariance: str = "total"
    # A trainable adapter on the frozen LLM states (FLAME only): this many residual MLP blocks of the
    # text's own width, each zero-initialised so training starts from the paper's frozen-only text
    # side. 0 (the default) is the paper's form; ShareLock and LiT-style setups train such a head.
    text_adapter_depth: int = 0
    # Stochastic depth in the custom ViT (timm's drop_path_rate): a regulariser against memorising.
    vision_drop_path: float = 0.0
    # How the custom ViT cuts the image into tokens: "patch" (one strided convolution, the ViT's) or
    # "conv" (a stack of 3x3 stride-2 convolutions down to the same grid, Xiao et al. 2021, "Early
    # convolutions help transformers see better"): a small-data prior that costs little compute.
    vision_stem: str = "patch"
    # The image embedding from the projected patch tokens: "mean" (the reference) or "attention",
    # a weighted mean whose weights the image decides (per slice of the embedding; starts as the mean).
    vision_pool: str = "mean"
    # name + fingerprint of the LLM that made the text embeddings; the LLM itself is never stored
    llm: dict = field(default_factory=dict)

    def validate(self) -> None:
        # Checked when a model is built, not in __post_init__, so a config may be filled in field
        # by field (e.g. from command-line flags) before it is complete.
        if self.text_tower not in TEXT_TOWERS:
            raise ValueError(f"text_tower must be one of {TEXT_TOWERS}, got {self.text_tower!r}")
        if self.text_tower == "clip" and not self.embed_dim:
            raise ValueError("text_tower='clip' needs embed_dim: the CLIP baseline has no LLM space to share")
        if self.embed_dim is not None and self.embed_dim <= 0:
            raise ValueError(f"embed_dim must be positive or None, got {self.embed_dim}")
        if self.center_mode not in ("none", "global", "prompt"):
            raise ValueError(f"text_center must be true, false, \"global\" or \"prompt\", got {self.text_center!r}")
        if not 0.0 <= self.text_whiten <= 1.0:
            raise ValueError(f"text_whiten must be in [0, 1], got {self.text_whiten}")
        if self.text_whiten_covariance not in WHITENING_COVARIANCES:
            raise ValueError(f"text_whiten_covariance must be one of {WHITENING_COVARIANCES}, "
                             f"got {self.text_whiten_covariance!r}")
        if self.text_whiten_covariance != "total" and not self.text_whiten:
            raise ValueError(f"text_whiten_covariance={self.text_whiten_covariance!r} needs whitening: "
                             "set text_whiten to a power in (0, 1]")
        if self.text_whiten and (self.text_tower != "llm" or self.center_mode == "none"):
            raise ValueError("text_whiten applies to centred LLM states: set text_center to \"global\" or \"prompt\"")
        if self.text_adapter_depth < 0:
            raise ValueError(f"text_adapter_depth must be >= 0, got {self.text_adapter_depth}")
        if self.text_adapter_depth and self.text_tower != "llm":
            raise ValueError("text_adapter_depth applies to FLAME's frozen LLM states (text_tower='llm') only")
        if not 0.0 <= self.vision_drop_path < 1.0:
            raise ValueError(f"vision_drop_path must be in [0, 1), got {self.vision_drop_path}")
        if self.vision_stem not in ("patch", "conv"):
            raise ValueError(f"vision_stem must be \"patch\" or \"conv\", got {self.vision_stem!r}")
        if self.vision_stem == "conv" and (self.vision != "custom" or self.patch_size & (self.patch_size - 1)):
            raise ValueError("vision_stem=\"conv\" needs vision=\"custom\" and a power-of-two patch_size")
        if self.vision_pool not in ("mean", "attention"):
            raise ValueError(f"vision_pool must be \"mean\" or \"attention\", got {self.vision_pool!r}")
        from .vision.tower import check_vision_name

        try:
            check_vision_name(self.vision)
        except ValueError as e:
            raise ValueError(str(e).replace("vision = ", "vision: ", 1)) from None
        for key in ("image_size", "patch_size", "vision_width", "vision_depth", "vision_heads", "clip_context_length",
                    "clip_width", "clip_layers", "clip_heads"):
            if getattr(self, key) < 1:
                raise ValueError(f"{key} must be at least 1, got {getattr(self, key)}")
        if self.vision == "custom" and self.image_size % self.patch_size:
            raise ValueError(f"image_size {self.image_size} must be a multiple of patch_size {self.patch_size}")
        if self.vision == "custom" and self.vision_width % self.vision_heads:
            raise ValueError(f"vision_width {self.vision_width} must be a multiple of vision_heads {self.vision_heads}")
        if self.init_logit_scale <= 0 or self.max_logit_scale <= 0:
            raise ValueError("init_logit_scale and max_logit_scale must be positive")

    @property
    def center_mode(self) -> str:
        """``text_center`` as one word: none, global or prompt (true means global)."""
        if isinstance(self.text_center, bool):
            return "global" if self.text_center else "none"
        return self.text_center

    @property
    def shared_dim(self) -> int:
        """Width E of the space images and texts are compared in."""
        return self.embed_dim or self.text_dim


@dataclass
class TrainConfig:
    # data
    train_manifest: str = ""  # jsonl/csv/parquet with id and image columns, or webdataset shards (a/{000..009}.tar)
    image_root: str = ""  # folder that relative image paths start from (default: the manifest's folder)
    store: str = ""  # embedding store made by `flameclip embed` (FLAME)
    captions: str = ""  # captions file (CLIP baseline: its text tower reads raw text)
    text_columns: list[str] = field(default_factory=list)  # store/caption columns to draw positives from (all if empty)
    positives: int = 6  # P positives per image per step (the reference draws 6 of 11 rows)
    # "rows": positives uniform over all rows (the reference; 7 facets outweigh 1 row); "columns":
    # each from a column drawn uniformly, then a row of it (columns weigh alike, as CLIP's caption).
    positive_draw: str = "rows"
    # Each text column's share of the positives, in text_columns order (the store's when that is
    # empty): for FLAME with positive_draw="columns" and for CLIP's caption. Empty: equal shares.
    column_weights: list[float] = field(default_factory=list)
    val_manifest: str = ""  # optional held-out manifest for the periodic evaluation (learning curves)
    eval_columns: list[str] = field(default_factory=list)  # caption columns scored in curves.csv (default: all trained on)
    eval_images: int = 200  # images per recall set (training and held-out) in curves.csv
    # Images whose id has no text (no row in the store or the captions file): an error naming them
    # (false), or left out and counted (true; e.g. images the recaptioner could not decode).
    skip_missing_text: bool = False
    # model and loss
    model: ModelConfig = field(default_factory=ModelConfig)
    loss: str = "sigmoid"  # sigmoid (reference) | softmax
    # optimisation
    batch_size: int = 64  # per process
    grad_accum: int = 1  # micro-batches per optimiser step (negatives stay within a micro-batch)
    # Keep the records of a manifest group (its "group" column) in one batch, so that scenes which
    # differ in one detail are each other's negatives (hard negatives); records without one shuffle alone.
    batch_groups: bool = False
    epochs: int = 1
    max_steps: int = 0  # stop after this many optimiser steps (0: run all epochs)
    lr: float = 5e-4
    betas: tuple[float, float] = (0.9, 0.95)
    weight_decay: float = 0.5
    warmup_steps: int = 2000
    min_lr_ratio: float = 0.0
    grad_clip: float = 0.0  # 0: off
    precision: str = "auto"  # auto (bf16 on GPU, fp32 on CPU) | bf16 (autocast) | fp32
    workers: int = -1  # data loader workers (-1: a sensible default for this machine)
    seed: int = 0
    device: str = "auto"
    # outputs
    out: str = "runs/train"
    save_every: int = 500  # checkpoint every N steps (and at the end)
    keep_checkpoints: int = 2
    log_every: int = 10
    eval_every: int = 0  # run the evaluation hooks every N steps (0: only at the end, if any)
    resume: str = ""  # "latest" or a checkpoint folder

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


@dataclass
class EmbedConfig:
    """An embed job (``flameclip embed``): which captions, which LLM and prompts, where the store goes."""

    captions: str
    out: str
    prompts: dict[str, str]  # caption column -> prompt set (built-in name or JSON file)
    llm: str = "smollm2-135m"
    id_column: str = "id"
    layer: int = -2
    compute_dtype: str = "fp32"  # the LLM's dtype while encoding
    store_dtype: str = "fp16"  # fp16 | int8 | fp32
    route: str = "auto"
    batch_size: int = 16
    max_tokens: int | None = None
    shard_size: int = 4096
    device: str = "auto"
    skip_empty: bool = False
    text_cache: str | None = None  # a folder: states of texts encoded before are read from it, new ones added


def _coerce(value, tp, key: str = ""):
    """Check a parsed TOML value against a dataclass field type; ints become floats and lists tuples."""
    origin = typing.get_origin(tp)
    if tp is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if origin is tuple and isinstance(value, list):
        return tuple(value)
    if origin is list and isinstance(value, list):
        return value
    if origin in (typing.Union, types.UnionType):  # e.g. int | None
        if value is None or any(_matches(value, a) for a in typing.get_args(tp)):
            return value
    elif _matches(value, tp):
        return value
    raise ValueError(f"setting '{key}' must be {getattr(tp, '__name__', tp)}, got {value!r}")


def _matches(value, tp) -> bool:
    if tp is type(None):
        return value is None
    if tp is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if tp is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if tp in (str, bool, dict):
        return isinstance(value, tp)
    origin = typing.get_origin(tp)
    return origin is not None and isinstance(value, origin)


def _apply(obj, data: dict, where: str):
    hints = typing.get_type_hints(type(obj))
    names = {f.name for f in dataclasses.fields(obj)}
    for key, value in data.items():
        if key not in names:
            close = difflib.get_close_matches(key, sorted(names), n=1)
            hint = f"did you mean '{close[0]}'?" if close else f"known: {', '.join(sorted(names))}"
            raise ValueError(f"{where}: unknown setting '{key}' ({hint})")
        current = getattr(obj, key)
        if dataclasses.is_dataclass(current):
            if not isinstance(value, dict):
                raise ValueError(f"{where}: '{key}' is a table of settings")
            _apply(current, value, f"{where}.{key}")
        else:
            setattr(obj, key, _coerce(value, hints[key], f"{where}: {key}"))


def _parse_value(text: str):
    try:
        return tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        return text  # a bare word: a string


def load_config(path: str | None, overrides: list[str] = (), base: TrainConfig | None = None) -> TrainConfig:
    """A config: ``base`` (default: every field's default; copied, never changed), then the TOML file
    at ``path``, then the ``key=value`` overrides, validated."""
    cfg = copy.deepcopy(base) if base is not None else TrainConfig()
    if path:
        p = Path(path)
        if not p.exists():
            raise FileNotFoundError(f"{p}: config file not found")
        try:
            data = tomllib.loads(p.read_text(encoding="utf-8"))
        except tomllib.TOMLDecodeError as e:
            raise ValueError(f"{p}: not valid TOML ({e})") from None
        except UnicodeDecodeError as e:
            raise ValueError(f"{p}: not UTF-8 text (byte {e.start}); save the config as UTF-8") from None
        _apply(cfg, data, str(p))
    for item in overrides:
        key, sep, text = item.partition("=")
        if not sep:
            raise ValueError(f"override '{item}' must look like key=value")
        nested: dict = {}
        cur = nested
        parts = key.strip().split(".")
        for part in parts[:-1]:
            cur = cur.setdefault(part, {})
        cur[parts[-1]] = _parse_value(text.strip())
        _apply(cfg, nested, "override")
    validate_config(cfg)
    return cfg


def with_settings(cfg: TrainConfig, settings: dict) -> TrainConfig:
    """A new config: ``cfg`` with ``settings`` replaced (TrainConfig fields, and under "model" a dict
    of ModelConfig fields), validated. ``cfg`` itself is not changed."""
    cfg, settings = copy.deepcopy(cfg), copy.deepcopy(settings)  # the new config shares no list with either
    top = {k: v for k, v in settings.items() if k != "model"}
    model = settings.get("model", {})
    for obj, keys, where in ((cfg, top, ""), (cfg.model, model, "model.")):
        unknown = sorted(set(keys) - {f.name for f in dataclasses.fields(obj)})
        if unknown:
            raise ValueError(f"unknown setting '{where}{unknown[0]}'")
    out = dataclasses.replace(cfg, **top, model=dataclasses.replace(cfg.model, **model))
    validate_config(out)
    return out


# Settings that must be at least this (a zero or negative one would divide by zero, train on nothing
# or write a NaN loss into a checkpoint).
MINIMUM = {"positives": 1, "batch_size": 1, "grad_accum": 1, "epochs": 1, "max_steps": 0, "warmup_steps": 0,
           "save_every": 1, "keep_checkpoints": 0, "log_every": 1, "eval_every": 0, "eval_images": 1}


def validate_config(cfg: TrainConfig) -> None:
    """Refuse settings no run can use, naming the key; called on load and again by ``train``."""
    # NaN passes every "at least" test below, and inf lr trains NaN weights: any number must be finite.
    for prefix, obj in (("", cfg), ("model.", cfg.model)):
        for f in dataclasses.fields(obj):
            v = getattr(obj, f.name)
            values = v if isinstance(v, (list, tuple)) else [v]  # betas is a pair
            if any(isinstance(x, float) and not math.isfinite(x) for x in values):
                raise ValueError(f"setting '{prefix}{f.name}' must hold finite numbers, got {v}")
    for key, low in MINIMUM.items():
        if getattr(cfg, key) < low:
            raise ValueError(f"setting '{key}' must be at least {low}, got {getattr(cfg, key)}")
    if not cfg.lr >= 0:  # 0 is allowed: it trains nothing, which tests and dry runs use
        raise ValueError(f"setting 'lr' must be >= 0, got {cfg.lr}")
    if cfg.weight_decay < 0 or cfg.grad_clip < 0 or not 0 <= cfg.min_lr_ratio <= 1:
        raise ValueError("settings 'weight_decay' and 'grad_clip' must be >= 0 and 'min_lr_ratio' in [0, 1]")
    from .losses import LOSSES

    if cfg.positive_draw not in ("rows", "columns"):
        raise ValueError(f"setting 'positive_draw' must be \"rows\" or \"columns\", got {cfg.positive_draw!r}")
    if cfg.column_weights and (min(cfg.column_weights) < 0 or sum(cfg.column_weights) <= 0):
        raise ValueError(f"setting 'column_weights' must be >= 0 with a positive sum, got {cfg.column_weights}")
    if cfg.loss not in LOSSES:
        raise ValueError(f"setting 'loss' must be one of {', '.join(sorted(LOSSES))}, got {cfg.loss!r}")
    try:
        cfg.model.validate()
    except ValueError as e:
        raise ValueError(f"model.{e}") from None
