"""Training checkpoints: atomic writes, pruning, finding the one to resume, and checking it fits.

A checkpoint is ``out/checkpoints/step-XXXXXXX/``: the model folder (safetensors + config.json with
the weights' sha256) and ``trainer_state.pt`` (optimiser, step, RNG; loaded with weights_only).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path

import torch

from .config import TrainConfig
from .data.images import DataError
from .model import FlameModel

CHECKPOINTS = "checkpoints"


def checkpoint_dir(out: str | Path) -> Path:
    return Path(out) / CHECKPOINTS


def save_checkpoint(out: Path, step: int, model: FlameModel, opt, extra: dict, keep: int) -> Path:
    """Write ``checkpoints/step-XXXXXXX`` atomically (temporary folder, then rename), then prune."""
    root = checkpoint_dir(out)
    root.mkdir(parents=True, exist_ok=True)
    final = root / f"step-{step:07d}"
    tmp = root / f".tmp-step-{step:07d}"
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp)
    torch.save({"optimizer": opt.state_dict(), "step": step, "torch_rng": torch.get_rng_state(), **extra},
               tmp / "trainer_state.pt")
    # A folder of the same step (a resumed run writing it again) is moved aside, not deleted first,
    # so a crash between the two renames leaves a whole checkpoint under one name or the other.
    old_final = root / f".old-step-{step:07d}"
    if final.exists():
        shutil.rmtree(old_final, ignore_errors=True)
        os.replace(final, old_final)
    os.replace(tmp, final)
    shutil.rmtree(old_final, ignore_errors=True)
    for old in sorted(root.glob("step-*"))[:-keep] if keep > 0 else []:
        shutil.rmtree(old, ignore_errors=True)
    return final


def find_checkpoint(out: str | Path, resume: str) -> Path | None:
    if resume == "latest":
        found = sorted(checkpoint_dir(out).glob("step-*"))
        return found[-1] if found else None
    p = Path(resume)
    if not (p / "trainer_state.pt").exists():
        raise FileNotFoundError(f"{p}: not a training checkpoint (no trainer_state.pt)")
    return p


def check_resume(ckpt: Path, saved: FlameModel, cfg: TrainConfig) -> None:
    """Refuse to resume a checkpoint with another model or another store than it was trained on.

    Runs before anything is written, so a refused resume leaves every checkpoint in place.
    """
    from dataclasses import asdict

    was, now = asdict(saved.cfg), asdict(cfg.model)
    was_llm, now_llm = was.get("llm") or {}, now.get("llm") or {}
    # Keys both record (a checkpoint from an older version may lack one, e.g. max_tokens).
    shared = set(was_llm) & set(now_llm) | {"weights_sha256"}
    if cfg.model.text_tower == "llm" and any(was_llm.get(k) != now_llm.get(k) for k in shared):
        def name(fp):
            return f"{fp.get('llm')} (weights {str(fp.get('weights_sha256'))[:12]}, layer {fp.get('layer')})"

        raise DataError(f"cannot resume {ckpt}: it was trained on a store embedded by {name(was_llm)}, "
                        f"but {cfg.store} was embedded by {name(now_llm)}; "
                        "use the store it was trained on, or start a new run in another out folder")
    # grad_checkpointing trades memory for time and may change between runs; nothing else may.
    # An older version recorded text_facets only with "prompt" centring; train.py's store identity
    # check (check_store_identity) still refuses a store of another prompt set.
    skip = {"llm", "grad_checkpointing"} | ({"text_facets"} if not was.get("text_facets") else set())
    differ = sorted(k for k in was if k not in skip and was[k] != now.get(k))
    if differ:
        listed = "; ".join(f"model.{k} {was[k]!r} in the checkpoint, {now.get(k)!r} now" for k in differ[:4])
        raise DataError(f"cannot resume {ckpt}: the model differs ({listed}); "
                        "use the checkpoint's settings (its config.toml), or start a new run in another out folder")


# What a recorded store identity's parts mean, for the refusal message.
_STORE_PARTS = {"fingerprint": "another LLM, layer, prompt set, token cap or route",
                "ids_sha256": "other samples", "captions_sha256": "other caption text"}


def store_identity(store) -> dict[str, str]:
    """What makes a store's rows, as the trainer state records it: the embedding fingerprint, the
    sample ids and the captions (the manifest's digests of each, hashed once more)."""
    m = store.manifest
    fingerprint = json.dumps(m.get("fingerprint"), sort_keys=True)
    captions = hashlib.sha256(json.dumps(m.get("captions_sha256")).encode()).hexdigest()
    return {"fingerprint": fingerprint, "ids_sha256": str(m.get("ids_sha256")), "captions_sha256": captions}


def check_store_identity(ckpt: Path, recorded: dict | None, now: dict, store_path: str) -> None:
    """Refuse to resume on a store other than the one the checkpoint was trained on.

    The model's LLM record catches another LLM; this catches the same LLM with other prompt sets,
    other samples or edited captions. A checkpoint from before the record was kept is not checked.
    """
    if not recorded:
        return
    differ = [k for k in _STORE_PARTS if recorded.get(k) != now.get(k)]
    if not differ:
        return
    what = "; ".join(_STORE_PARTS[k] for k in differ)
    if "fingerprint" in differ:
        was, is_ = json.loads(recorded["fingerprint"]), json.loads(now["fingerprint"])
        keys = sorted(k for k in set(was) | set(is_) if was.get(k) != is_.get(k))
        what += f" ({', '.join(keys)})"
    raise DataError(f"cannot resume {ckpt}: {store_path} is not the store it was trained on ({what}); "
                    "use that store, or start a new run in another out folder")
