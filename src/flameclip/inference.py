"""Inference: ``flameclip.load(checkpoint)`` -> a model with ``encode_image`` / ``encode_text``.

For a FLAME checkpoint a text goes through the frozen LLM (the one recorded in the checkpoint, by
name and weights hash) under a prompt set, and then through the model's (usually empty) text side:

* ``mode="single"``: the single prompt; zero-shot class names, short and non-English queries;
* ``mode="long7"`` (or ``"short3"``): the facet states are averaged, then normalised; long queries.

LLM outputs are cached on disk (``text_cache.py``), keyed by the LLM's fingerprint, the prompt set
and the texts, so a second checkpoint trained on the same LLM, or a second evaluation, does not run
the LLM again; the LLM is loaded only on a cache miss.

The CLIP-benchmark contract is met by :meth:`FlameCLIP.as_clip_benchmark`, which returns
``(model, transform, tokenizer)`` where ``tokenizer(texts)`` gives what ``model.encode_text`` takes.
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch
import torch.nn.functional as F

from .config import LLMIdentity
from .data.centering import facet_sets
from .data.transforms import eval_transform
from .model import FlameModel
from .text_cache import TextEmbeddingCache


class FlameCLIP:
    """A trained checkpoint ready for inference (FLAME or the CLIP baseline)."""

    def __init__(self, model: FlameModel, device="cpu", llm: str | None = None, llm_dtype: str | None = None,
                 text_cache: str | Path | None = None, batch_size: int = 64, progress: bool = False):
        self.model = model.eval().to(device)
        self.device = torch.device(device)
        self.cfg = model.cfg
        self.preprocess = eval_transform(self.cfg.image_size)
        self.batch_size = batch_size
        self.progress = progress  # a bar while the LLM encodes texts not in the cache
        self._llm_name = llm or (self.cfg.llm or {}).get("llm")
        # Queries are encoded in the dtype the training captions were (bf16 and fp32 states differ
        # slightly); checkpoints that do not record it were embedded in fp32.
        recorded = (self.cfg.llm or {}).get("compute_dtype")  # a torch name, as the store's fingerprint says
        self._llm_dtype = llm_dtype or {"bfloat16": "bf16", "float16": "fp16"}.get(recorded, "fp32")
        self._encoder = None
        self._noted: set[str] = set()  # prompt sets already reported as untrained
        self.cache = TextEmbeddingCache(text_cache)
        if self.is_flame and not self._llm_name:
            raise ValueError("this FLAME checkpoint does not record its LLM; pass llm=NAME")
        self._clip_tokenizer = None
        if not self.is_flame:
            from .baselines.clip_text import clip_tokenizer

            self._clip_tokenizer = clip_tokenizer(self.cfg.clip_context_length)

    @property
    def is_flame(self) -> bool:
        return self.cfg.text_tower == "llm"

    # ------------------------------------------------------------------ text
    def llm_fingerprint(self) -> dict:
        return LLMIdentity.from_record(self.cfg.llm).query_key(self._llm_name, self._llm_dtype)

    def _facet_encoder(self):
        """Load the LLM on first use and check it is the one the checkpoint was trained with."""
        if self._encoder is None:
            from .text.facets import FacetEncoder
            from .text.llm import load_llm

            from .text.llm import resolve

            want = self.cfg.llm or {}
            # Checked before loading: another LLM may not even have the recorded layer.
            source = resolve(self._llm_name)
            if want.get("weights_sha256") and source.weights_sha256 != want["weights_sha256"]:
                raise ValueError(
                    f"LLM '{self._llm_name}' is not the one this checkpoint was trained with, "
                    f"{want.get('llm')!r} (weights {source.weights_sha256[:12]}... vs {want['weights_sha256'][:12]}...); "
                    "pass llm= the LLM that embedded its training captions"
                )
            llm = load_llm(self._llm_name, layer=want.get("layer", -2), dtype=self._llm_dtype,
                           device=self.device)
            self._encoder = FacetEncoder(llm, route=want.get("route") or "auto", max_tokens=want.get("max_tokens"))
        return self._encoder

    def llm_states(self, texts: list[str], mode: str = "single", progress: bool = False) -> torch.Tensor:
        """The frozen LLM's facet states ``[N, K, D]`` (cached)."""
        from .text.prompts import load_prompt_set

        ps = load_prompt_set(mode)
        return self.cache.get_or_compute(self.llm_fingerprint(), ps, list(texts), self._facet_encoder,
                                         progress or self.progress)

    def tokenize(self, texts: list[str], mode: str = "single") -> torch.Tensor:
        """What ``encode_text`` takes: facet-mean LLM states [N, D] (FLAME) or CLIP ids [N, 77]."""
        if isinstance(texts, str):
            texts = [texts]
        if not self.is_flame:
            return self._clip_tokenizer(list(texts))
        # The reference's inference rule: average the facet states, then normalise (in encode_text).
        # With "prompt" centring each facet first loses its own mean, as the stored rows did in training.
        from .text.prompts import load_prompt_set

        ps = load_prompt_set(mode)
        self._note_untrained_set(ps)
        states = self.model.center_states(self.llm_states(texts, ps), ps.name)
        return states.mean(dim=1)

    def _note_untrained_set(self, ps) -> None:
        """Say once per prompt set when the checkpoint's rows were stored with other sets.

        Such a query is allowed (a user may try any set, and an ablation trained on one column still
        runs zero-shot with ``single``), but it is not what the model learned: the facets' states sit
        elsewhere (and get no mean of their own with "prompt" centring). A checkpoint from an older
        version that records no sets is not checked. Sets are told apart by name.
        """
        trained = self.cfg.text_facets
        if not trained or ps.name in self._noted or all(f"{ps.name}:{k}" in trained for k in range(ps.k)):
            return
        self._noted.add(ps.name)
        sets = ", ".join(facet_sets(trained))
        print(f"note: texts are queried with prompt set {ps.name!r}, but this checkpoint was trained on rows "
              f"stored with {sets}: figures from these queries are not those of a set it learned", file=sys.stderr)

    @torch.no_grad()
    def encode_text(self, texts, mode: str = "single") -> torch.Tensor:
        """Normalised text embeddings [N, E]; ``texts`` are strings or the output of ``tokenize``."""
        if not isinstance(texts, torch.Tensor) and len(texts) == 0:
            return torch.zeros(0, self.model.embed_dim)
        x = texts if isinstance(texts, torch.Tensor) else self.tokenize(texts, mode)
        out = [self.model.encode_text(x[i : i + self.batch_size].to(self.device)).float()
               for i in range(0, len(x), self.batch_size)]
        return torch.cat(out).cpu() if out else torch.zeros(0, self.model.embed_dim)

    # ------------------------------------------------------------------ images
    def _pixels(self, images) -> torch.Tensor:
        if isinstance(images, torch.Tensor):
            return images if images.dim() == 4 else images[None]
        return torch.stack([self.preprocess(im.convert("RGB")) for im in images])

    @torch.no_grad()
    def encode_image(self, images) -> torch.Tensor:
        """Normalised image embeddings [N, E] from PIL images or preprocessed tensors [N, 3, H, W]."""
        x = self._pixels(images)
        out = [self.model.encode_image(x[i : i + self.batch_size].to(self.device)).float()
               for i in range(0, len(x), self.batch_size)]
        return torch.cat(out).cpu()

    @torch.no_grad()
    def pooled_features(self, images) -> torch.Tensor:
        """Image tower features before the projector (for linear probes)."""
        x = self._pixels(images)
        return torch.cat([self.model.pooled_features(x[i : i + self.batch_size].to(self.device)).float().cpu()
                          for i in range(0, len(x), self.batch_size)])

    def similarity(self, images, texts, mode: str = "single") -> torch.Tensor:
        """Cosine similarities [N_images, N_texts]."""
        return self.encode_image(images) @ self.encode_text(texts, mode).T

    def zero_shot_classifier(self, classnames: list[str], templates=None) -> torch.Tensor:
        """Class weights [C, E]: every template rendered for every class, encoded with the single
        prompt, normalised, averaged over templates and normalised again."""
        if templates is None:
            from open_clip.zero_shot_metadata import OPENAI_IMAGENET_TEMPLATES

            templates = OPENAI_IMAGENET_TEMPLATES
        # "{}" (CLIP notebooks) and "{c}" (CLIP_benchmark) placeholders are both accepted.
        render = [(t if callable(t) else (lambda c, t=t: t.format(c, c=c))) for t in templates]
        texts = [r(c) for c in classnames for r in render]
        emb = self.encode_text(texts, mode="single").view(len(classnames), len(render), -1)
        return F.normalize(emb.mean(dim=1), dim=-1)

    def as_clip_benchmark(self):
        """``(model, transform, tokenizer)`` as CLIP_benchmark's model loaders return them."""
        return _BenchmarkModel(self), self.preprocess, _BenchmarkTokenizer(self)


class _BenchmarkModel(torch.nn.Module):
    """``encode_image`` / ``encode_text`` on tensors, the interface CLIP_benchmark calls."""

    def __init__(self, wrapped: FlameCLIP):
        super().__init__()
        self.wrapped = wrapped
        self.model = wrapped.model

    def encode_image(self, images, normalize: bool = False):
        return self.wrapped.model.encode_image(images.to(self.wrapped.device))

    def encode_text(self, tokens, normalize: bool = False):
        return self.wrapped.model.encode_text(tokens.to(self.wrapped.device))


class _BenchmarkTokenizer:
    def __init__(self, wrapped: FlameCLIP, mode: str = "single"):
        self.wrapped, self.mode = wrapped, mode

    def __call__(self, texts):
        return self.wrapped.tokenize([texts] if isinstance(texts, str) else list(texts), self.mode)


def load(checkpoint: str | Path, llm: str | None = None, device: str | None = None, **kw) -> FlameCLIP:
    """Load a checkpoint folder (``save_pretrained`` output) for inference."""
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    return FlameCLIP(FlameModel.from_pretrained(checkpoint), device=device, llm=llm, **kw)


def load_for_clip_benchmark(model_name: str = "", pretrained: str = "", cache_dir: str | None = None, device="cpu"):
    """A CLIP_benchmark model loader: ``pretrained`` is the checkpoint folder."""
    return load(pretrained or model_name, device=device).as_clip_benchmark()


def create_model_and_transforms(checkpoint: str | Path, device: str | None = None, **kw):
    """open_clip-style front door: ``(model, train_transform, eval_transform)``."""
    from .data.transforms import train_transform

    m = load(checkpoint, device=device, **kw)
    return m, train_transform(m.cfg.image_size), m.preprocess

