"""``flameclip embed``: captions -> frozen LLM -> K facet embeddings per caption -> embedding store.

The work is cut into shards of the store. Each shard is computed whole and written atomically, so a
run that is killed loses at most the shard in flight, and running the same command again resumes
with the first missing shard. Under ``torchrun`` rank r takes shards r, r + W, r + 2W, ...; the
store is the same bytes whatever the number of processes.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from dataclasses import dataclass, field

import numpy as np
import torch
from tqdm.auto import tqdm

from .config import EmbedConfig, LLMIdentity
from .data.captions import read_captions
from .launch import process_device, rank_and_world
from .store import StoreWriter
from .text.facets import EXACT_ROUTES, CaptionError, FacetEncoder
from .text.llm import load_llm
from .text.prompts import clean_caption, load_prompt_set
from .text_cache import TextEmbeddingCache


@dataclass
class EmbedSummary:
    samples: int = 0
    embedded: int = 0  # samples encoded by this run (the rest were already in the store)
    skipped: int = 0  # samples left out because a caption was empty (--skip-empty)
    truncated: int = 0  # captions cut to fit the context
    repeats: int = 0  # captions equal to an earlier one of their shard and column: encoded once
    cached: int = 0  # captions whose states came from the text cache
    max_tokens: int = 0  # the cap they were cut to
    tokens: int = 0
    seconds: float = 0.0
    store_bytes: int = 0
    complete: bool = False
    skipped_ids: list[str] = field(default_factory=list)

    def table(self) -> str:
        rate = self.embedded / self.seconds if self.seconds > 0 else 0.0
        tok = self.tokens / self.seconds if self.seconds > 0 else 0.0
        rows = [
            ("samples in file", f"{self.samples}"),
            ("embedded this run", f"{self.embedded}"),
            ("skipped (empty caption)", f"{self.skipped}"),
            ("captions truncated", f"{self.truncated}"),
            ("repeated captions (encoded once)", f"{self.repeats}"),
            ("captions from the text cache", f"{self.cached}"),
            ("time", f"{self.seconds:.1f} s"),
            ("captions/s", f"{rate:.2f}"),
            ("tokens/s", f"{tok:.0f}"),
            ("store size", f"{self.store_bytes / 2**20:.2f} MiB"),
            ("store complete", "yes" if self.complete else "no (run again to resume)"),
        ]
        w = max(len(k) for k, _ in rows)
        return "\n".join(f"{k:<{w}}  {v}" for k, v in rows)


class EmbedError(RuntimeError):
    """A one-line, user-facing reason why embedding cannot go on."""


def caption_digests(ids: list[str], columns: list[list[str]], shard_size: int) -> list[str]:
    """Per shard, the sha256 of what its samples were embedded from: ids and cleaned captions."""
    out = []
    for lo in range(0, len(ids), shard_size):
        h = hashlib.sha256()
        for g in range(lo, min(lo + shard_size, len(ids))):
            h.update(json.dumps([ids[g], *(clean_caption(col[g]) for col in columns)], ensure_ascii=False).encode())
        out.append(h.hexdigest())
    return out


def run_embed(cfg: EmbedConfig, progress: bool = True) -> EmbedSummary:
    rank, world = rank_and_world()
    device = process_device(cfg.device)
    if world > 1 and not torch.distributed.is_initialized():
        backend = "nccl" if device.startswith("cuda") else "gloo"
        torch.distributed.init_process_group(backend)

    columns = list(cfg.prompts)
    prompt_sets = {c: load_prompt_set(p) for c, p in cfg.prompts.items()}
    table = read_captions(cfg.captions, columns, cfg.id_column)

    # Empty captions: an error naming the sample, or (when asked) the sample is left out and counted.
    keep, skipped = [], []
    for i, sid in enumerate(table.ids):
        empty = [c for c in columns if not clean_caption(table.columns[c][i])]
        if empty and not cfg.skip_empty:
            raise EmbedError(
                f"{cfg.captions}: sample '{sid}' has an empty '{empty[0]}' caption; "
                "fix it, drop the sample, or pass --skip-empty to leave such samples out"
            )
        for c in columns:
            try:
                table.columns[c][i].encode("utf-8")
            except UnicodeEncodeError as e:  # a lone surrogate (JSON "\ud800"): no tokenizer can take it
                raise EmbedError(f"{cfg.captions}: sample '{sid}', column '{c}': not valid Unicode (a lone surrogate "
                                 f"at character {e.start}); fix the captions file") from None
            except AttributeError:
                pass  # not a string: the empty-caption rule above has named it
        (skipped if empty else keep).append(i)
    ids = [table.ids[i] for i in keep]

    llm = load_llm(cfg.llm, layer=cfg.layer, dtype=cfg.compute_dtype, device=device)
    encoder = FacetEncoder(llm, route=cfg.route, max_tokens=cfg.max_tokens, batch_size=cfg.batch_size)
    # The exact routes give the same numbers, so they share stores; the ablation's does not.
    identity = LLMIdentity(**llm.fingerprint(), max_tokens=encoder.max_tokens,
                           route=None if encoder.route in EXACT_ROUTES else encoder.route)
    fingerprint = {
        **identity.record(),
        "prompt_sets": {c: {"name": ps.name, "sha": ps.fingerprint(), "k": ps.k} for c, ps in prompt_sets.items()},
    }
    # The cache is keyed by everything that makes a caption's states, except the prompt set (its own key).
    cache = TextEmbeddingCache(cfg.text_cache) if cfg.text_cache else None
    cache_key = {k: v for k, v in fingerprint.items() if k != "prompt_sets"}
    store_columns = [{"name": c, "k": prompt_sets[c].k, "prompt_set": prompt_sets[c].to_dict()} for c in columns]
    digests = caption_digests(ids, [[table.columns[c][i] for i in keep] for c in columns], cfg.shard_size)
    writer = StoreWriter(
        cfg.out,
        fingerprint=fingerprint,
        columns=store_columns,
        dim=llm.hidden_size,
        ids=ids,
        shard_size=cfg.shard_size,
        dtype=cfg.store_dtype,
        rank=rank,
        world_size=world,
        caption_digests=digests,
    )

    summary = EmbedSummary(samples=len(table.ids), skipped=len(skipped), skipped_ids=[table.ids[i] for i in skipped])
    pending = writer.pending_shards()
    todo = sum(len(writer.shard_ids(j)) for j in pending)
    bar = tqdm(total=todo * len(columns), unit="caption", desc=f"embed[rank {rank}]" if world > 1 else "embed",
               disable=not progress)
    start = time.perf_counter()
    done_tokens = 0

    def on_batch(n_captions: int, n_tokens: int) -> None:
        nonlocal done_tokens
        done_tokens += n_tokens
        bar.update(n_captions)
        bar.set_postfix(tokens_s=f"{done_tokens / max(time.perf_counter() - start, 1e-9):.0f}", refresh=False)

    for j in pending:
        lo, hi = writer.shard_range(j)
        parts = []
        for c in columns:
            texts = [table.columns[c][keep[g]] for g in range(lo, hi)]
            # A text that repeats in the shard (alt-texts often do) is encoded once and its rows
            # copied: the same tokens give the same states, so the store is unchanged.
            first = {}  # each distinct text -> the first sample that has it (errors name that sample)
            for g, t in enumerate(texts):
                first.setdefault(t, g)
            unique = list(first)
            where = {t: k for k, t in enumerate(unique)}
            slot = [where[t] for t in texts]  # each sample's row among the distinct texts
            try:
                items = [encoder.tokenize([t], prompt_sets[c], start_index=lo + g)[0] for t, g in first.items()]
            except CaptionError as e:
                raise EmbedError(f"{cfg.captions}: sample '{ids[e.index]}', column '{c}': {e}") from None
            found = cache.lookup(cache_key, prompt_sets[c], unique) if cache else {}
            new = [k for k, t in enumerate(unique) if t not in found]
            states = encoder.encode_tokenized([items[k] for k in new], on_batch=on_batch).numpy()
            if cache:
                cache.add(cache_key, prompt_sets[c], [unique[k] for k in new], states)
                found.update({unique[k]: row for k, row in zip(new, states)})
                rows = np.stack([found[t] for t in unique])
            else:
                rows = states
            parts.append(rows[slot])
            bar.update(len(texts) - len(new))
            summary.cached += len(unique) - len(new)
            summary.repeats += len(texts) - len(unique)
            summary.truncated += sum(items[k].truncated for k in slot)
        writer.write_shard(j, np.concatenate(parts, axis=1))
        summary.embedded += hi - lo
    bar.close()
    summary.seconds = time.perf_counter() - start
    summary.tokens = encoder.stats.tokens
    summary.max_tokens = encoder.max_tokens

    if world > 1:
        # Wait for every rank's shards before the index is built over all of them.
        torch.distributed.barrier()
    if rank == 0:
        summary.complete = writer.finalize()
        summary.store_bytes = sum(
            os.path.getsize(os.path.join(dp, f)) for dp, _, fs in os.walk(cfg.out) for f in fs
        )
    if world > 1:
        torch.distributed.barrier()
        torch.distributed.destroy_process_group()
    return summary
