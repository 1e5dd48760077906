"""The GPU paths: exact FDA under CUDA kernels, bf16 encoding, embedding and training on CUDA.

Skipped where there is no CUDA device (CI has none). No packaged LLM weights are needed: each LLM
here is a random-weights copy of a real architecture and tokenizer (tests/random_llm.py), since
weights change neither the exactness of the packed routes nor the code paths. The source folders
come from FLAMECLIP_TEST_HF (folders with config.json + tokenizer files, separated by ':'), or the
packaged SmolLM2's converted folder when it is installed.
"""

import csv
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")

from safetensors.torch import load_file  # noqa: E402

from flameclip.config import load_config  # noqa: E402
from flameclip.embed import EmbedConfig, run_embed  # noqa: E402
from flameclip.model import FlameModel  # noqa: E402
from flameclip.store import EmbeddingStore  # noqa: E402
from flameclip.text.facets import FacetEncoder, tokenize_caption  # noqa: E402
from flameclip.text.llm import load_llm  # noqa: E402
from flameclip.text.prompts import load_prompt_set  # noqa: E402
from flameclip.train import train  # noqa: E402

from .conftest import CAPTIONS  # noqa: E402
from .random_llm import make_random_llm  # noqa: E402
from .shapes_data import make_shapes  # noqa: E402
from .subprocess_kill import kill_when_exists  # noqa: E402

TOL_FP32 = 1e-5  # as on CPU: the packed routes are exact up to float summation order
TOL_BF16 = 5e-2  # bf16 keeps 8 mantissa bits (0.4% per rounding); a few percent after 30 layers


def _sources() -> list[str]:
    env = os.environ.get("FLAMECLIP_TEST_HF")
    if env:
        return [p for p in env.split(os.pathsep) if p]
    return ["packaged:smollm2-135m"]


@pytest.fixture(scope="module", params=_sources(), ids=lambda s: Path(s).name)
def llm_dir(request, tmp_path_factory):
    src = request.param
    if src.startswith("packaged:"):
        from flameclip.text.llm import LLMNotFoundError, hf_folder, resolve

        try:
            src = str(hf_folder(resolve(src.split(":", 1)[1])))
        except LLMNotFoundError as e:
            pytest.skip(str(e))
    return make_random_llm(src, tmp_path_factory.mktemp("llm") / Path(src).name)


def relative_error(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a.float() - b.float()).norm(dim=-1) / b.float().norm(dim=-1).clamp_min(1e-12)).max().item()


@torch.inference_mode()
def separate_passes(llm, captions, prompt_set):
    """K plain, unpadded, unmasked forward passes per caption on the model's own device."""
    ps = load_prompt_set(prompt_set)
    device = next(llm.model.parameters()).device
    out = []
    for i, c in enumerate(captions):
        item = tokenize_caption(llm.tokenizer, ps, c, 100_000, index=i)
        rows = [llm.model(input_ids=torch.tensor([item.shared + t], device=device), use_cache=False)
                .last_hidden_state[0, -1].float().cpu() for t in item.tails]
        out.append(torch.stack(rows))
    return torch.stack(out)


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
def test_cuda_packed_routes_equal_separate_passes_fp32(llm_dir, attn):
    llm = load_llm(str(llm_dir), dtype="fp32", device="cuda", attn_implementation=attn)
    ref = separate_passes(llm, CAPTIONS, "long7")
    for route in ("fda", "kv"):
        got = FacetEncoder(llm, route=route, batch_size=3).encode(CAPTIONS, "long7")
        assert relative_error(got, ref) < TOL_FP32, route


def test_cuda_bf16_encoding_stays_close_to_fp32(llm_dir):
    ref = separate_passes(load_llm(str(llm_dir), dtype="fp32", device="cuda"), CAPTIONS, "long7")
    llm = load_llm(str(llm_dir), dtype="bf16", device="cuda")
    got = FacetEncoder(llm, route="fda", batch_size=3).encode(CAPTIONS, "long7")
    err = relative_error(got, ref)
    assert err < TOL_BF16, err
    # ... and the bf16 packed pass is as close to bf16 separate passes as bf16 allows.
    assert relative_error(got, separate_passes(llm, CAPTIONS, "long7")) < TOL_BF16


@pytest.fixture(scope="module")
def cuda_data(tmp_path_factory, llm_dir):
    folder = tmp_path_factory.mktemp("shapes-cuda")
    d = make_shapes(folder, n=64, size=48)
    prompts = {"raw": "single", "short": "short3"}
    for dev in ("cuda", "cpu"):
        run_embed(EmbedConfig(captions=str(d["captions"]), out=str(folder / f"store-{dev}"), prompts=prompts,
                              llm=str(llm_dir), device=dev), progress=False)
    d["store"] = folder / "store-cuda"
    d["store_cpu"] = folder / "store-cpu"
    return d


def test_cuda_store_equals_cpu_store(cuda_data):
    a, b = EmbeddingStore(cuda_data["store"]), EmbeddingStore(cuda_data["store_cpu"])
    ids = list(a.ids())
    assert a.fingerprint == b.fingerprint and ids == list(b.ids())
    x = torch.from_numpy(a.get_many(ids))
    y = torch.from_numpy(b.get_many(ids))
    # Both are fp16 on disk: one rounding (2^-11 relative) on each side, plus kernel order.
    assert relative_error(x, y) < 2e-3


TINY = ["model.image_size=32", "model.patch_size=8", "model.vision_width=64", "model.vision_depth=2",
        "model.vision_heads=2", "workers=0", "warmup_steps=2", "log_every=1", "batch_size=16", "positives=2"]


def _overrides(data, out, *extra):
    return [f"train_manifest={data['manifest']}", f"store={data['store']}", f"out={out}", *TINY, *extra]


def test_cuda_bf16_training_learns_and_loads_on_cpu(cuda_data, tmp_path):
    cfg = load_config(None, _overrides(cuda_data, tmp_path / "run", "epochs=8", "lr=2e-3", "device=auto",
                                       "precision=auto"))
    res = train(cfg, progress=False)
    with open(tmp_path / "run" / "metrics.csv", newline="") as f:
        losses = [float(r["loss"]) for r in csv.DictReader(f)]
    assert res.steps == 8 * (64 // 16) and losses[-1] < 0.7 * losses[0], losses
    # The checkpoint is device-free: it loads on the CPU and embeds like on the GPU (fp32 both).
    cpu = FlameModel.from_pretrained(res.checkpoint).eval()
    gpu = FlameModel.from_pretrained(res.checkpoint, map_location="cuda").eval()
    x = torch.randn(4, 3, 32, 32)
    with torch.no_grad():
        assert relative_error(gpu.encode_image(x.cuda()).cpu(), cpu.encode_image(x)) < 1e-4


def test_cuda_killed_and_resumed_run_ends_with_the_same_weights(cuda_data, tmp_path):
    common = ["epochs=4", "save_every=2", "keep_checkpoints=10", "precision=fp32", "device=cuda"]

    def run(out, *extra):
        return subprocess.Popen([sys.executable, "-m", "flameclip.cli", "train", "--no-progress",
                                 *_overrides(cuda_data, out, *common, *extra)],
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)

    p = run(tmp_path / "full")
    assert p.wait(timeout=600) == 0, p.stderr.read()[-2000:]
    p = run(tmp_path / "cut")
    kill_when_exists(p, tmp_path / "cut" / "checkpoints" / "step-0000006")
    assert not (tmp_path / "cut" / "checkpoints" / "step-0000016").exists(), "the kill must land mid-run"
    p = run(tmp_path / "cut", "resume=latest")
    assert p.wait(timeout=600) == 0, p.stderr.read()[-2000:]
    a = load_file(tmp_path / "full" / "checkpoints" / "step-0000016" / "model.safetensors")
    b = load_file(tmp_path / "cut" / "checkpoints" / "step-0000016" / "model.safetensors")
    for k in a:
        assert torch.equal(a[k], b[k]), k
