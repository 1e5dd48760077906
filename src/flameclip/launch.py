"""Where this process stands under ``torchrun``: its rank, the world size, and its device.

Jobs that split work by rank without a process group (embed, recaption) read these from the
environment torchrun sets; a plain ``python`` run is rank 0 of 1.
"""

from __future__ import annotations

import os

import torch


def rank_and_world() -> tuple[int, int]:
    return int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))


def process_device(name: str = "auto") -> str:
    """``name``, or for "auto" this process's GPU (its LOCAL_RANK) when there is one, else the CPU."""
    if name != "auto":
        return name
    return f"cuda:{int(os.environ.get('LOCAL_RANK', 0))}" if torch.cuda.is_available() else "cpu"
