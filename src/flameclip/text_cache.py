"""The on-disk cache of LLM facet states of texts (queries, and captions with `embed --text-cache`).

Under ``root/<hash of the LLM fingerprint and prompt set>/`` the cache is a few embedding stores
(segments) whose ids are the texts' hashes. A miss writes its new texts as one more segment;
segments of similar size are then merged into one (size-tiered, as a log-structured merge tree
does), so a search session that misses one query at a time keeps O(log n) segments, each state is
rewritten O(log n) times, and a lookup checks a handful of stores, not one per past query.

A segment is written complete before the ones it replaces are removed, so a crash leaves either the
old segments or the merged one (or both, which hold the same rows). Every segment carries the LLM
fingerprint; one made by another LLM, or left incomplete, is ignored.
"""

from __future__ import annotations

import hashlib
import json
import fcntl
import shutil
import sys
from pathlib import Path

import numpy as np
import torch

from .store import EmbeddingStore, StoreWriter, read_manifest
from .store.verify import verify_store
from .text.llm import cache_dir

MERGE_RATIO = 2  # merge two segments when the larger holds at most this many times the smaller's texts


def default_root() -> Path:
    return cache_dir() / "text-embeddings"


class TextEmbeddingCache:
    """LLM facet states ``[N, K, D]`` of texts, memoised per text on disk and in memory."""

    def __init__(self, root: str | Path | None = None):
        self.root = Path(root) if root else default_root()
        self._memo: dict[tuple[str, str], np.ndarray] = {}

    @staticmethod
    def text_id(text: str) -> str:
        return hashlib.sha256(text.encode()).hexdigest()[:32]

    def folder(self, llm_fp: dict, prompt_set) -> Path:
        h = hashlib.sha256(json.dumps(llm_fp, sort_keys=True).encode() + prompt_set.fingerprint().encode())
        return self.root / h.hexdigest()[:24]

    def segments(self, folder: Path, llm_fp: dict) -> list[EmbeddingStore]:
        """The complete segments made by this LLM, largest first."""
        found = []
        for sub in sorted(folder.iterdir()) if folder.exists() else []:
            if not (sub / "manifest.json").exists():
                continue
            try:
                found.append(EmbeddingStore(sub, expect_fingerprint=llm_fp))
            except (ValueError, RuntimeError, FileNotFoundError):
                continue  # incomplete (a run killed while writing it) or another LLM's: not ours to read
        return sorted(found, key=len, reverse=True)

    def lookup(self, llm_fp: dict, prompt_set, texts: list[str]) -> dict[str, np.ndarray]:
        """The states ``[K, D]`` of those of ``texts`` the cache holds (memory first, then the segments)."""
        folder = self.folder(llm_fp, prompt_set)
        fkey = str(folder)
        unique = list(dict.fromkeys(texts))
        ids = {t: self.text_id(t) for t in unique}
        missing = [t for t in unique if (fkey, ids[t]) not in self._memo]
        if missing:
            for store in self.segments(folder, llm_fp):
                try:
                    found = {t: store.get(ids[t]) for t in missing if ids[t] in store}
                except (RuntimeError, OSError) as e:
                    _drop_if_damaged(store, e)  # its texts count as missing
                    continue
                finally:
                    store.close()
                self._memo.update({(fkey, ids[t]): row for t, row in found.items()})
                missing = [t for t in missing if (fkey, ids[t]) not in self._memo]
        return {t: self._memo[(fkey, ids[t])] for t in unique if (fkey, ids[t]) in self._memo}

    def add(self, llm_fp: dict, prompt_set, texts: list[str], states: np.ndarray) -> None:
        """Remember ``states[i]`` for ``texts[i]`` (distinct texts) in memory and as one new segment."""
        if not texts:
            return
        folder = self.folder(llm_fp, prompt_set)
        ids = [self.text_id(t) for t in texts]
        self._memo.update({(str(folder), i): row for i, row in zip(ids, states)})
        _write_segment(folder, llm_fp, ids, np.asarray(states, np.float32), prompt_set.k)
        self._merge(folder, llm_fp, prompt_set.k)

    def get_or_compute(self, llm_fp: dict, prompt_set, texts: list[str], encoder_factory, progress: bool = False):
        found = self.lookup(llm_fp, prompt_set, texts)
        missing = [t for t in dict.fromkeys(texts) if t not in found]
        if missing:
            states = encoder_factory().encode(missing, prompt_set, progress=progress).numpy()
            self.add(llm_fp, prompt_set, missing, states)
            found.update(zip(missing, states))
        return torch.from_numpy(np.stack([found[t] for t in texts]))

    def _merge(self, folder: Path, llm_fp: dict, k: int, max_passes: int = 64) -> None:
        """Merge the two smallest segments while they are of similar size (the larger at most twice).

        One process merges a folder at a time (an advisory lock; a process that finds it taken
        leaves the merging to the holder). Readers take no lock: a segment that vanishes under a
        reader is skipped, and its texts are still in the merged one.
        """
        with open(folder / ".merge.lock", "w") as lock:
            try:
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                return
            for _ in range(max_passes):  # bounded, even if a folder cannot be removed
                segments = self.segments(folder, llm_fp)
                for s in segments:
                    s.close()
                if len(segments) < 2 or len(segments[-2]) > MERGE_RATIO * len(segments[-1]):
                    return
                small = segments[-2:]
                try:
                    ids = list(dict.fromkeys(i for s in small for i in s.ids()))
                    states = np.stack([next(s.get(i) for s in small if i in s) for i in ids])
                except (RuntimeError, OSError) as e:
                    for s in small:  # only the pair member that really is damaged goes
                        _drop_if_damaged(s, e)
                    continue
                finally:
                    for s in small:
                        s.close()
                merged = _write_segment(folder, llm_fp, ids, states, k)
                for s in small:
                    if Path(s.root) != merged:
                        shutil.rmtree(s.root, ignore_errors=True)


def _segment_name(folder: Path, ids: list[str]) -> Path:
    return folder / hashlib.sha256("\n".join(ids).encode()).hexdigest()[:16]


def _write_segment(folder: Path, llm_fp: dict, ids: list[str], states: np.ndarray, k: int) -> Path:
    """Write a complete segment of ``ids`` (written before anything it replaces is removed)."""
    sub = _segment_name(folder, ids)
    try:
        EmbeddingStore(sub, expect_fingerprint=llm_fp).close()
        return sub  # already complete: the same ids give the same rows
    except (ValueError, RuntimeError, FileNotFoundError, OSError):
        shutil.rmtree(sub, ignore_errors=True)  # absent, or left incomplete by a killed run
    writer = StoreWriter(sub, fingerprint=llm_fp, columns=[{"name": "text", "k": k}], dim=states.shape[-1],
                         ids=ids, shard_size=4096, dtype="fp32")
    for j in writer.pending_shards():
        lo, hi = writer.shard_range(j)
        writer.write_shard(j, states[lo:hi])
    writer.finalize()
    return sub


def _drop_if_damaged(store: EmbeddingStore, e: Exception) -> None:
    """Remove a segment that cannot be read; one another process's merge removed is just gone."""
    store.close()
    manifest = read_manifest(store.root) if Path(store.root, "manifest.json").exists() else None
    if manifest is None:
        return
    _, problems = verify_store(store.root, manifest, full=False)  # sizes and headers of every shard
    if problems:
        print(f"[text cache] dropping a damaged cache segment {store.root} ({e})", file=sys.stderr)
        shutil.rmtree(store.root, ignore_errors=True)
