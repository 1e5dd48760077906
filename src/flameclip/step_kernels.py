"""Which kernels a training step runs: the attention kernel and the AdamW implementation.

Both choices compute the same function as PyTorch's defaults; they only change how fast it runs
(BENCHMARKS.md, "Kernels of a CPU training step", ``benchmarks/bench_cpu_kernels.py``):

- attention: on a CPU under bf16 autocast, PyTorch's scaled-dot-product attention picks its flash
  kernel, whose backward pass is slow for the short sequences of small image and text towers (65
  tokens in the demo's ViT, 77 in CLIP's text tower): it took a third of the demo's training step.
  There the "math" kernel (matrix products and a softmax) runs instead: 1.2x (FLAME) and 1.3x (CLIP)
  faster steps. In fp32 the flash kernel is the faster one (by 5%), and forward passes alone are
  faster with it in either precision, so evaluation and fp32 training keep PyTorch's choice, and so
  do GPUs.
- AdamW: the fused implementation updates every parameter in one kernel instead of a Python loop of
  small ones per tensor; it matters most for CLIP's token embedding (49,408 x width parameters, all
  updated every step).
"""

from __future__ import annotations

import contextlib

import torch


def attention_kernel(device: torch.device | str):
    """A context in which scaled-dot-product attention runs its math kernel, where that is faster:
    on a CPU inside bf16 autocast (enter it inside the autocast context). PyTorch's own choice elsewhere."""
    on_cpu_bf16 = (torch.device(device).type == "cpu" and torch.is_autocast_enabled("cpu")
                   and torch.get_autocast_dtype("cpu") == torch.bfloat16)
    if not on_cpu_bf16:
        return contextlib.nullcontext()
    from torch.nn.attention import SDPBackend, sdpa_kernel

    return sdpa_kernel([SDPBackend.MATH])


def fused_adamw_ok(params: list[torch.Tensor]) -> bool:
    """Whether fused AdamW can update these parameters: floating point, on a CPU or a CUDA device."""
    return bool(params) and all(p.is_floating_point() and p.device.type in ("cpu", "cuda") for p in params)
