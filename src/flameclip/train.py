"""The training loop: one code path for one process and for ``torchrun`` (DDP, gloo or nccl).

Read top to bottom: set-up, data, model, optimiser, resume, then the step loop with checkpoints,
logging and evaluation hooks. FLAME reads caption embeddings from the store; the CLIP baseline
(``model.text_tower = "clip"``) trains open_clip's text transformer on the raw captions instead.
Everything else, including the loss, is shared.

Exact resume: every random choice of a sample depends on (seed, epoch, index) only, the batch order
on (seed, epoch) only, and a checkpoint holds model, optimiser and step. A run killed and resumed
therefore ends with the same weights as a run that was never stopped.
"""

from __future__ import annotations

import contextlib
import copy
import csv
import math
import os
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.distributed as dist
from tqdm.auto import tqdm

from .checkpoints import (  # noqa: F401 - re-exported
    check_resume,
    check_store_identity,
    checkpoint_dir,
    find_checkpoint,
    save_checkpoint,
    store_identity,
)
from .config import LLMIdentity, TrainConfig, validate_config
from .config_toml import save_config
from .data.images import (
    CaptionTokens,
    DataError,
    EpochBatchSampler,
    ImageTextDataset,
    StoreText,
    group_units,
    collate,
    default_workers,
    read_images,
)
from .data.centering import CenteredStore, row_facets, store_means, store_whitening
from .data.transforms import eval_transform, train_transform
from .evaluate.curves import CurveLog, build_recall_set, recall
from .losses import build_loss
from .model import FlameModel
from .run_log import MetricsLog, plot_losses
from .step_kernels import attention_kernel, fused_adamw_ok

# ----------------------------------------------------------------------------------------------
# Set-up helpers


@dataclass
class Dist:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        return self.rank == 0


def init_distributed(device: str) -> tuple[Dist, torch.device]:
    d = Dist(int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1)), int(os.environ.get("LOCAL_RANK", 0)))
    if device == "auto":
        device = f"cuda:{d.local_rank}" if torch.cuda.is_available() else "cpu"
    dev = torch.device(device)
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise RuntimeError(f"device '{device}' was asked for, but this machine has no CUDA device: use device=cpu or auto")
        if dev.index is None:  # "cuda" means this process's GPU under torchrun
            dev = torch.device("cuda", d.local_rank)
        torch.cuda.set_device(dev)
    if d.world_size > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if dev.type == "cuda" else "gloo")
    return d, dev


def lr_at(step: int, cfg: TrainConfig, total: int) -> float:
    """Linear warm-up, then cosine decay to ``min_lr_ratio * lr``."""
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    progress = (step - cfg.warmup_steps) / max(1, total - cfg.warmup_steps)
    cosine = 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))
    return cfg.lr * (cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * cosine)


def build_optimizer(model: FlameModel, cfg: TrainConfig) -> torch.optim.AdamW:
    """AdamW with no weight decay on gains, biases, embeddings and the logit parameters."""
    no_decay = model.no_weight_decay_names()
    decay, keep = [], []
    for name, p in model.named_parameters():
        if p.requires_grad:
            (keep if name in no_decay else decay).append(p)
    groups = [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": keep, "weight_decay": 0.0}]
    # Fused where it can be: one kernel for all parameters (step_kernels.py says why).
    return torch.optim.AdamW(groups, lr=cfg.lr, betas=tuple(cfg.betas), fused=fused_adamw_ok(decay + keep) or None)


def build_dataset(cfg: TrainConfig, manifest: str, train: bool, centering: tuple | None = None):
    """Images of ``manifest`` joined to the text side; ``centering`` = (facet names, facet means) for
    "prompt" centring, which the stored rows then come back with."""
    records = read_images(manifest, cfg.image_root or None)
    if cfg.model.text_tower == "llm":
        if not cfg.store:
            raise DataError("FLAME training needs `store` (the folder made by `flameclip embed`)")
        from .store import EmbeddingStore

        store = EmbeddingStore(cfg.store)
        want = (cfg.model.llm or {}).get("weights_sha256")
        if want and store.fingerprint.get("weights_sha256") != want:
            raise DataError(f"{cfg.store} was embedded by another LLM than this model's ({cfg.model.llm.get('llm')})")
        if centering is not None:
            store = CenteredStore(store, *centering)
        text = StoreText(store, cfg.positives, cfg.text_columns or None, draw=cfg.positive_draw,
                         weights=cfg.column_weights)
    else:
        if not cfg.captions:
            raise DataError("the CLIP baseline needs `captions` (the captions file) for its text tower")
        from .baselines.clip_text import clip_tokenizer

        text = CaptionTokens(cfg.captions, cfg.text_columns or ["caption"], clip_tokenizer(), positives=1,
                             weights=cfg.column_weights)
    if cfg.skip_missing_text:
        kept = [r for r in records if text.has(r.id)]
        if len(kept) < len(records):
            gone = [r.id for r in records if not text.has(r.id)]
            print(f"[train] {manifest}: {len(gone)} of {len(records)} images have no text and are left out "
                  f"(skip_missing_text; first: {', '.join(gone[:3])})", flush=True)
        if not kept:
            raise DataError(f"{manifest}: no image has text; check that the store or captions file matches the images")
        records = kept
    tf = train_transform(cfg.model.image_size) if train else eval_transform(cfg.model.image_size)
    return ImageTextDataset(records, text, tf, seed=cfg.seed, use_views=train)


def loader_for(ds, cfg: TrainConfig, d: Dist, step: int, total: int, steps_per_epoch: int, device_type: str = "cpu"):
    """One loader from ``step`` to ``total``: its workers start once, not once per epoch."""
    batches = steps_per_epoch * cfg.grad_accum  # each epoch's batches; any rest of the permutation is dropped
    epoch, end_epoch = step // steps_per_epoch, -(-total // steps_per_epoch)
    sampler = EpochBatchSampler(len(ds), cfg.batch_size, epoch, cfg.seed, d.rank, d.world_size,
                                start_batch=(step % steps_per_epoch) * cfg.grad_accum, epochs=end_epoch - epoch,
                                batches_per_epoch=batches, units=group_units(ds.records) if cfg.batch_groups else None)
    workers = default_workers(device_type) if cfg.workers < 0 else cfg.workers
    # Its own generator: a loader draws its workers' base seed, and from the global generator that
    # draw would shift what the training step draws from it (drop path) between runs and resumes.
    return torch.utils.data.DataLoader(ds, batch_sampler=sampler, num_workers=workers, collate_fn=collate,
                                       pin_memory=False, generator=torch.Generator().manual_seed(cfg.seed))


# ----------------------------------------------------------------------------------------------
# Evaluation hook


def build_recall_sets(cfg: TrainConfig, train_ds, centering: tuple | None = None) -> list:
    """Recall sets for the learning curves: training images and, when given, held-out ones."""
    text = train_ds.text
    trained = cfg.text_columns or (list(text.store.columns) if hasattr(text, "store") else text.columns)
    columns = cfg.eval_columns or trained
    known = list(text.store.columns) if hasattr(text, "store") else text.columns
    unknown = [c for c in columns if c not in known]
    if unknown:
        raise DataError(f"eval_columns {unknown} are not caption columns of this run (known: {known})")
    seen = build_dataset(cfg, cfg.train_manifest, train=False, centering=centering)
    sets = [build_recall_set("train", seen, columns, cfg.eval_images)]
    held = build_dataset(cfg, cfg.val_manifest, train=False, centering=centering)
    overlap = {r.id for r in held.records} & {r.id for r in seen.records}
    if overlap:
        raise DataError(f"{cfg.val_manifest} shares {len(overlap)} id(s) with the training manifest "
                        f"(first: {sorted(overlap)[0]}): a held-out set must be held out")
    sets.append(build_recall_set("val", held, columns, cfg.eval_images))
    return sets


# ----------------------------------------------------------------------------------------------
# The loop


class TrainingDiverged(RuntimeError):
    """The loss stopped being a finite number; the weights were not updated with it."""


def train_step(ddp_model, model: FlameModel, loss_fn, opt, micro_batches, device, autocast, grad_clip: float = 0.0,
               world_size: int = 1):
    """One optimiser step over ``micro_batches`` of (images, texts); returns the loss (a tensor),
    averaged over processes.

    With gradient accumulation each micro-batch is its own contrastive problem (its negatives are
    the texts of that micro-batch across processes), and the losses are averaged. A loss that is not
    finite raises ``TrainingDiverged`` before the optimiser step, on every process alike (the check
    reads the global loss), so the weights and the last checkpoint stay as they were.
    """
    n = len(micro_batches)
    loss_sum = torch.zeros((), device=device)
    for i, (images, texts) in enumerate(micro_batches):
        # Only the last micro-batch synchronises gradients across processes.
        sync = i == n - 1 or not hasattr(ddp_model, "no_sync")
        with (contextlib.nullcontext() if sync else ddp_model.no_sync()):
            with autocast, attention_kernel(device):
                outs = ddp_model(images.to(device, non_blocking=True), texts.to(device, non_blocking=True))
            loss = loss_fn(outs["image_features"].float(), outs["text_features"].float(),
                           outs["logit_scale"].float(), outs["logit_bias"].float()) / n
            loss.backward()
        loss_sum += loss.detach()
    if world_size > 1:  # the global loss: every process takes the same decision below
        dist.all_reduce(loss_sum, op=dist.ReduceOp.AVG)
    if not torch.isfinite(loss_sum):
        opt.zero_grad(set_to_none=True)
        raise TrainingDiverged(f"the loss is {float(loss_sum)}")
    if grad_clip > 0:
        torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
    opt.step()
    opt.zero_grad(set_to_none=True)
    return loss_sum


@dataclass
class TrainResult:
    out: Path
    steps: int
    final_loss: float
    images_per_s: float
    skipped_images: int
    checkpoint: Path | None
    eval: dict


def train(cfg: TrainConfig, progress: bool = True) -> TrainResult:
    validate_config(cfg)
    # What the store decides (the text width, the LLM's identity, the facets) is filled into a
    # copy: the caller's config stays as it was given, and can be reused for another run.
    cfg = copy.deepcopy(cfg)
    d, device = init_distributed(cfg.device)
    out = Path(cfg.out)
    torch.manual_seed(cfg.seed)

    centering, means, whitening = None, None, None
    if cfg.model.text_tower == "llm" and cfg.model.center_mode != "none" and cfg.store:
        from .store import EmbeddingStore

        # From the training store, before any row is read: "prompt" centring changes what the rows are.
        store = EmbeddingStore(cfg.store)
        means = store_means(store, seed=cfg.seed)
        if cfg.model.center_mode == "prompt":
            centering = (means[1], means[2])  # text_facets is set below, for every FLAME run
        if cfg.model.text_whiten:
            whitening = store_whitening(store, cfg.model.text_whiten, *(centering or (None, None)), mean=means[0],
                                        seed=cfg.seed, covariance=cfg.model.text_whiten_covariance)
    train_ds = build_dataset(cfg, cfg.train_manifest, train=True, centering=centering)
    if cfg.model.text_tower == "llm":
        store = train_ds.text.store
        if cfg.model.text_dim != store.dim:
            cfg.model.text_dim = store.dim  # the store decides D; a mismatch would fail at the first step
        # max_tokens: queries are cut where the stored captions were
        cfg.model.llm = LLMIdentity.from_record(store.fingerprint).record()
        # Every FLAME checkpoint says which prompt sets its rows were stored with (not only with
        # "prompt" centring, where it already holds them): queries are checked against it.
        cfg.model.text_facets = list(dict.fromkeys(row_facets(store)))
    steps_per_epoch = len(train_ds) // (cfg.batch_size * d.world_size * cfg.grad_accum)
    if steps_per_epoch == 0:
        raise DataError(f"{len(train_ds)} samples are fewer than one global batch "
                        f"({cfg.batch_size} x {d.world_size} processes x {cfg.grad_accum} accumulation)")
    total = cfg.epochs * steps_per_epoch
    if cfg.max_steps:
        total = min(total, cfg.max_steps)

    model = FlameModel(cfg.model).to(device)
    if means is not None:
        model.text_mean.copy_(means[0].to(device))
        if centering is not None:
            model.text_facet_means.copy_(means[2].to(device))
        if whitening is not None:
            model.text_whitening.copy_(whitening.to(device))
    opt = build_optimizer(model, cfg)
    start_step, skipped = 0, set()
    store_record = store_identity(train_ds.text.store) if cfg.model.text_tower == "llm" else None
    ckpt = find_checkpoint(out, cfg.resume) if cfg.resume else None
    if not cfg.resume and any(checkpoint_dir(out).glob("step-*")):
        raise DataError(f"{out} already holds checkpoints: pass resume=latest to continue, or choose a new out folder")
    if ckpt is not None:
        loaded = FlameModel.from_pretrained(ckpt, map_location=device)
        check_resume(ckpt, loaded, cfg)
        model.load_state_dict(loaded.state_dict())
        try:
            state = torch.load(ckpt / "trainer_state.pt", map_location=device, weights_only=True)
            opt_state, rng, start_step = state["optimizer"], state["torch_rng"], int(state["step"])
        except Exception as e:  # noqa: BLE001 - truncated files raise EOFError, RuntimeError, pickle errors...
            raise DataError(f"{ckpt / 'trainer_state.pt'} is unreadable ({type(e).__name__}: {str(e)[:80]}); "
                            "resume from an earlier checkpoint with resume=<its folder>") from None
        if store_record:
            check_store_identity(ckpt, state.get("store"), store_record, cfg.store)
        opt.load_state_dict(opt_state)
        torch.set_rng_state(rng.cpu())
        skipped = set(state.get("skipped_ids", []))

    def trainer_extra() -> dict:  # what a checkpoint's trainer state holds besides optimiser, step and RNG
        return {"skipped_ids": sorted(skipped), **({"store": store_record} if store_record else {})}

    if d.main:
        out.mkdir(parents=True, exist_ok=True)
        save_config(cfg, out / "config.toml")
    ddp_model = model
    if d.world_size > 1:
        ddp_model = torch.nn.parallel.DistributedDataParallel(model, device_ids=[device] if device.type == "cuda" else None)
    loss_fn = build_loss(cfg.loss)
    # CPUs without native bf16 (no avx512_bf16 / AMX) run bf16 autocast slower than fp32: measured
    # 2x slower here, so "auto" means bf16 on GPU only.
    precision = cfg.precision if cfg.precision != "auto" else ("bf16" if device.type == "cuda" else "fp32")
    if precision not in ("bf16", "fp32"):
        raise ValueError(f"precision must be auto, bf16 or fp32, not '{cfg.precision}'")
    autocast = torch.autocast(device.type, dtype=torch.bfloat16) if precision == "bf16" else contextlib.nullcontext()
    log = MetricsLog(out, start_step if ckpt is not None else None) if d.main else None
    # Learning curves: recall on training and held-out images, from the texts trained on.
    recall_sets = build_recall_sets(cfg, train_ds, centering) if cfg.val_manifest and d.main else []
    curves = CurveLog(out, start_step if ckpt is not None else None) if recall_sets else None

    model.train()
    step = start_step
    epoch = step // steps_per_epoch
    it = iter(loader_for(train_ds, cfg, d, step, total, steps_per_epoch, device.type))
    bar = tqdm(total=total, initial=start_step, unit="step", desc="train", disable=not (progress and d.main))
    t_last, images_since, last_loss, eval_result = time.perf_counter(), 0, float("nan"), {}
    last_ckpt = ckpt
    try:
        while step < total:
            epoch = step // steps_per_epoch
            for g in opt.param_groups:
                g["lr"] = lr_at(step, cfg, total)
            micro_batches = []
            for _ in range(cfg.grad_accum):
                images, texts, bad = next(it)
                new = [b for b in bad if b[0] not in skipped]
                skipped.update(b[0] for b in bad)
                if new and d.main:  # say it once per image; the total is in the summary
                    tqdm.write("skipped unreadable image(s), replaced by the next sample: "
                               + "; ".join(f"{i} ({p}: {e})" for i, p, e in new[:3]))
                micro_batches.append((images, texts))
                images_since += images.shape[0] * d.world_size
            try:
                loss_sum = train_step(ddp_model, model, loss_fn, opt, micro_batches, device, autocast, cfg.grad_clip,
                                      d.world_size)
            except TrainingDiverged as e:
                kept = f"the last good checkpoint {last_ckpt} is kept" if last_ckpt else "no checkpoint was written"
                raise TrainingDiverged(f"training stopped at step {step + 1}: {e}; {kept}. Lower lr, check the "
                                       "data and positives, then resume=latest") from None
            step += 1
            last_loss = float(loss_sum)
            bar.update(1)
            bar.set_postfix(loss=f"{last_loss:.4f}", refresh=False)

            if d.main and (step % cfg.log_every == 0 or step == total):
                now = time.perf_counter()
                scale, bias = model.logit_params()
                log.log({"step": step, "epoch": epoch, "loss": last_loss, "lr": opt.param_groups[0]["lr"],
                         "logit_scale": scale.item(), "logit_bias": bias.item(),
                         "images_per_s": images_since / max(now - t_last, 1e-9), "skipped_images": len(skipped)})
                t_last, images_since = now, 0
            if curves is not None and ((cfg.eval_every and step % cfg.eval_every == 0) or step == total):
                eval_result = {}
                for rs in recall_sets:
                    eval_result.update(recall(model, rs, device, cfg.batch_size))
                curves.log(step, {rs.name: len(rs.pixels) for rs in recall_sets}, eval_result)
                if log.tb is not None:
                    for k, v in eval_result.items():
                        log.tb.add_scalar(f"recall/{k}", v, step)
            if d.main and (step % cfg.save_every == 0 or step == total):
                last_ckpt = save_checkpoint(out, step, model, opt, trainer_extra(), cfg.keep_checkpoints)
                plot_losses(out)
            if d.world_size > 1 and step % cfg.save_every == 0:
                dist.barrier()  # nobody runs ahead of a checkpoint being written
    except KeyboardInterrupt:
        # Keep the steps done since the last checkpoint: the run resumes from here with resume=latest.
        if d.main and step > start_step and (last_ckpt is None or not str(last_ckpt).endswith(f"{step:07d}")):
            save_checkpoint(out, step, model, opt, trainer_extra(), cfg.keep_checkpoints)
        raise
    del it  # the loader's workers stop here, not when train() returns
    bar.close()
    rate = 0.0
    if d.main:
        log.close()
        plot_losses(out)
        with open(out / "metrics.csv", newline="") as f:
            rates = [float(r["images_per_s"]) for r in csv.DictReader(f)]
        rate = sum(rates[1:]) / max(1, len(rates) - 1) if len(rates) > 1 else (rates[0] if rates else 0.0)
    if d.world_size > 1:
        dist.barrier()
        dist.destroy_process_group()
    return TrainResult(out, step, last_loss, rate, len(skipped), last_ckpt, eval_result)
