"""Image-text training data: an image manifest joined by id to the text side.

The text side is either the embedding store (FLAME: P stored rows per image, drawn afresh at every
step) or the captions file tokenised for a trainable text tower (the CLIP baseline).

Every random choice for a sample (its crop, its P positives) is a pure function of
``(seed, epoch, index)``, so a resumed run sees exactly the samples and augmentations that an
uninterrupted run would, whatever the number of loader workers.
"""

from __future__ import annotations

import io
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from .captions import CaptionsFileError, iter_records, read_captions
from ..fileio import UNREADABLE, open_rgb, why_unreadable  # UNREADABLE is re-exported for the loaders


class DataError(ValueError):
    """Training data that cannot be used as given; one line that says what to do."""


# What opening a bad image file raises (a missing file is an OSError too).

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff")


@dataclass
class ImageRecord:
    id: str
    path: str  # an image file, or the tar shard that holds the image
    offset: int = -1  # byte offset of the image inside the tar shard (-1: a plain file)
    size: int = 0
    # Other image files of the same sample, each as true to its captions as ``path`` (other
    # drawings or photos of one scene); training picks one of path + views per epoch.
    views: tuple[str, ...] = ()
    # Records that share a group (e.g. scenes that differ in one detail) can be batched together
    # (``batch_groups``), so that each is a negative of the others; "" is a group of its own.
    group: str = ""


def sample_key(member: str) -> tuple[str, str]:
    """(sample key, extension) of a tar member, webdataset's way: "a/b.seg.jpg" -> ("a/b", "seg.jpg")."""
    folder, _, base = member.rpartition("/")
    stem, _, ext = base.partition(".")
    return (f"{folder}/{stem}" if folder else stem), ext


def read_webdataset(pattern: str) -> list[ImageRecord]:
    """Index webdataset tar shards for random access: one record per sample key with an image.

    Samples follow the webdataset convention (files sharing a key up to the first dot of their
    name form one sample); the sample key is the id joined to the store. Only tar headers are read,
    so indexing is fast, and random access keeps training order, resume and the global-batch
    split across processes exactly as for a manifest.
    """
    import tarfile

    from braceexpand import braceexpand

    shards = [p for part in pattern.split("::") for p in braceexpand(part)]
    out, seen = [], {}
    for shard in shards:
        if not Path(shard).exists():
            raise DataError(f"{shard}: webdataset shard not found")
        try:
            with tarfile.open(shard, "r:") as tar:
                for m in tar:
                    if not m.isfile():
                        continue
                    key, ext = sample_key(m.name)
                    if not ext or "." + ext.lower().rsplit(".", 1)[-1] not in IMAGE_EXTENSIONS:
                        continue
                    if key in seen:
                        raise DataError(f"{shard}: sample '{key}' has two images (also in {seen[key]})")
                    seen[key] = shard
                    out.append(ImageRecord(key, shard, m.offset_data, m.size))
        except tarfile.TarError as e:
            raise DataError(f"{shard}: not a readable tar shard ({e})") from None
    if not out:
        raise DataError(f"{pattern}: no images found in the webdataset shards")
    return out


def open_record(rec: ImageRecord, path: str | None = None) -> Image.Image:
    """The RGB image of a record: a file, or its bytes inside a tar shard (``path``: one of its views)."""
    if rec.offset >= 0:
        with open(rec.path, "rb") as f:
            f.seek(rec.offset)
            data = f.read(rec.size)
        return open_rgb(io.BytesIO(data), f"{rec.path}:{rec.id}")
    return open_rgb(path or rec.path)


def read_images(source: str, image_root: str | None = None) -> list[ImageRecord]:
    """A manifest file (jsonl/csv/tsv/parquet) or webdataset shards (``data/{000..009}.tar``)."""
    if ".tar" in source:
        return read_webdataset(source)
    return read_image_manifest(source, image_root)


def read_image_manifest(path: str | Path, image_root: str | Path | None = None, id_column: str = "id",
                        image_column: str = "image", views_column: str = "views",
                        group_column: str = "group") -> list[ImageRecord]:
    """(id, image path) per record; relative paths are taken from ``image_root`` or the manifest's folder.

    An optional ``views`` column lists more images of the same sample (a list, or paths joined by
    "|" in a CSV); training draws one of the image and its views per epoch. An optional ``group``
    column (a string) names records that ``batch_groups`` keeps in one batch.
    """
    path = Path(path)
    if not path.exists():
        raise DataError(f"{path}: image manifest not found")
    root = Path(image_root) if image_root else path.parent
    out, seen = [], set()
    try:
        for n, rec in iter_records(path):
            sid, img = rec.get(id_column), rec.get(image_column)
            if sid in (None, "") or img in (None, ""):
                raise DataError(f"{path}: record {n} needs both '{id_column}' and '{image_column}'")
            sid = str(sid)
            if sid in seen:
                raise DataError(f"{path}: id '{sid}' appears twice; ids must be unique")
            seen.add(sid)
            views = rec.get(views_column) or ()
            if isinstance(views, str):
                views = [v for v in views.split("|") if v]
            if not isinstance(views, (list, tuple)) or not all(isinstance(v, str) and v for v in views):
                raise DataError(f"{path}: record {n} ('{sid}'): '{views_column}' must be a list of image paths")
            group = rec.get(group_column)
            if group is not None and not isinstance(group, (str, int)):
                raise DataError(f"{path}: record {n} ('{sid}'): '{group_column}' must be a string, not {group!r}")
            full = [str(q if q.is_absolute() else root / q) for q in map(Path, [str(img), *views])]
            out.append(ImageRecord(sid, full[0], views=tuple(full[1:]), group="" if group is None else str(group)))
    except CaptionsFileError as e:
        raise DataError(str(e)) from None
    if not out:
        raise DataError(f"{path}: no records")
    return out


def sample_rng(seed: int, epoch: int, index: int) -> np.random.Generator:
    return np.random.default_rng([seed, epoch, index])


def column_probabilities(weights: list[float] | None, columns: list[str]) -> np.ndarray | None:
    """``column_weights`` as the probability of each text column (None: equal, drawn as before)."""
    if not weights:
        return None
    if len(weights) != len(columns):
        raise DataError(f"setting 'column_weights' has {len(weights)} weight(s) for {len(columns)} text "
                        f"column(s) {columns}: give one per column, in that order")
    w = np.asarray(weights, dtype=np.float64)
    return w / w.sum()


class StoreText:
    """P positives per image drawn from its stored rows (FLAME)."""

    def __init__(self, store, positives: int, columns: list[str] | None = None, draw: str = "rows",
                 weights: list[float] | None = None):
        self.store, self.positives, self.draw = store, positives, draw
        cols = columns or list(store.columns)
        unknown = [c for c in cols if c not in store.columns]
        if unknown:
            raise DataError(f"store has no column(s) {unknown}; it has {list(store.columns)}")
        if weights and draw != "columns":
            raise DataError("setting 'column_weights' needs positive_draw = \"columns\" "
                            "(over rows every row weighs alike)")
        self.weights = column_probabilities(weights, cols)
        self.column_rows = [np.arange(*store.columns[c]) for c in cols]
        self.rows = np.concatenate(self.column_rows)

    def has(self, sid: str) -> bool:
        return sid in self.store

    def check_ids(self, ids: list[str]) -> None:
        missing = [i for i in ids if i not in self.store]
        if missing:
            raise DataError(
                f"{len(missing)} image id(s) are not in the embedding store {self.store.root} "
                f"(first: {', '.join(missing[:5])}): embed their captions first, drop them from the manifest, "
                "or set skip_missing_text = true to leave them out"
            )

    def __call__(self, sid: str, rng: np.random.Generator) -> torch.Tensor:
        return torch.from_numpy(self.store.get(sid)[self.pick(rng)])

    def pick(self, rng: np.random.Generator) -> np.ndarray:
        """The P row indices of one sample. Without replacement when possible: distinct facets are distinct positives."""
        if self.draw == "rows":
            return rng.choice(self.rows, size=self.positives, replace=self.positives > len(self.rows))
        # "columns": how many positives each column gets, then that many of its rows.
        n = len(self.column_rows)
        if self.weights is None:
            column = rng.integers(n, size=self.positives)
        else:
            column = rng.choice(n, size=self.positives, p=self.weights)
        counts = np.bincount(column, minlength=n)
        return np.concatenate([rng.choice(rows, size=k, replace=k > len(rows))
                               for rows, k in zip(self.column_rows, counts) if k])


class CaptionTokens:
    """P captions per image, drawn from the caption columns and tokenised (the CLIP baseline)."""

    def __init__(self, captions_path: str, columns: list[str], tokenizer, positives: int = 1, id_column: str = "id",
                 weights: list[float] | None = None):
        table = read_captions(captions_path, columns, id_column)
        self.columns = list(columns)
        self.weights = column_probabilities(weights, self.columns)
        self.by_id = {sid: [table.columns[c][i] for c in columns] for i, sid in enumerate(table.ids)}
        self.tokenizer, self.positives = tokenizer, positives

    def has(self, sid: str) -> bool:
        return sid in self.by_id

    def check_ids(self, ids: list[str]) -> None:
        missing = [i for i in ids if i not in self.by_id]
        if missing:
            raise DataError(f"{len(missing)} image id(s) have no captions (first: {', '.join(missing[:5])})")

    def __call__(self, sid: str, rng: np.random.Generator) -> torch.Tensor:
        # Over this sample's non-empty columns (an empty caption is never a positive); without
        # column_weights p is None, the uniform draw.
        weights = self.weights if self.weights is not None else np.ones(len(self.columns))
        kept = [(c, w) for c, w in zip(self.by_id[sid], weights) if c.strip() and w > 0] or [("", 1.0)]
        p = None if self.weights is None else np.array([w for _, w in kept]) / sum(w for _, w in kept)
        pick = rng.choice(len(kept), size=self.positives, replace=self.positives > len(kept), p=p)
        return self.tokenizer([kept[i][0] for i in pick])


class ImageTextDataset(torch.utils.data.Dataset):
    """Map-style dataset of (image, text positives). Index it with ``(epoch, index)`` pairs.

    A corrupt or missing image is replaced by the next readable sample (so every batch keeps its
    size, which the distributed loss needs) and its id is reported with the batch.
    """

    max_replacements = 16

    def __init__(self, records: list[ImageRecord], text, transform, seed: int = 0, use_views: bool = False):
        self.records, self.text, self.transform, self.seed = records, text, transform, seed
        self.use_views = use_views  # training: one of image + views per epoch; evaluation: the image
        text.check_ids([r.id for r in records])

    def __len__(self) -> int:
        return len(self.records)

    def _load(self, rec: ImageRecord, epoch: int, index: int, bad: list) -> Image.Image:
        if self.use_views and rec.views:
            # A stream of its own, so that samples without views draw exactly what they drew before.
            pick = int(np.random.default_rng([self.seed, epoch, index, 1]).integers(len(rec.views) + 1))
            if pick:
                try:
                    return open_record(rec, rec.views[pick - 1])
                except UNREADABLE as e:  # reported, and the sample's own image stands in for the view
                    bad.append((rec.id, rec.views[pick - 1], why_unreadable(e)))
        return open_record(rec)

    def __getitem__(self, key: tuple[int, int]):
        epoch, index = key
        bad = []
        for attempt in range(self.max_replacements):
            rec = self.records[(index + attempt) % len(self.records)]
            try:
                image = self._load(rec, epoch, index, bad)
                break
            except UNREADABLE as e:
                bad.append((rec.id, rec.path, why_unreadable(e)))
        else:
            raise DataError(f"{self.max_replacements} unreadable images in a row from '{self.records[index].path}': "
                            "check the image folder")
        rng = sample_rng(self.seed, epoch, index)
        # The crop draws from torch's global CPU generator: fork it so the crop depends on the sample
        # only. Seed that generator alone: torch.manual_seed also queues a seed for every CUDA device,
        # which captures a stack trace each time and cost 1.1 of the 4.5 ms a 224 px sample took.
        with torch.random.fork_rng(devices=[]):
            torch.default_generator.manual_seed(int(rng.integers(2**62)))
            pixels = self.transform(image)
        return pixels, self.text(rec.id, rng), bad


def collate(batch):
    images = torch.stack([b[0] for b in batch])
    texts = torch.stack([b[1] for b in batch])
    bad = [x for b in batch for x in b[2]]
    return images, texts, bad


def group_units(records) -> list[list[int]]:
    """Indices of records by group, in order of first appearance; a record without a group alone."""
    units, where = [], {}
    for i, r in enumerate(records):
        if not r.group:
            units.append([i])
        elif r.group in where:
            units[where[r.group]].append(i)
        else:
            where[r.group] = len(units)
            units.append([i])
    return units


class EpochBatchSampler(torch.utils.data.Sampler):
    """Yields this rank's share of each global batch, as lists of ``(epoch, index)`` keys.

    The global batch b of an epoch is ``perm[b*G:(b+1)*G]`` with G = world_size x batch_size, so a
    run on N processes sees the same global batches as one process with batch G. ``start_batch``
    skips batches already done in the first epoch (resume). The last incomplete global batch is
    dropped, and so is any batch past ``batches_per_epoch``. ``epochs`` epochs follow one another,
    so one loader (and one set of workers) serves a whole run: a sample depends only on its key,
    never on which worker made it.

    ``units`` (lists of indices covering 0..n-1 once) are permuted instead of single indices and
    then laid end to end, so the indices of a unit follow one another and share a batch unless a
    batch boundary falls inside the unit. Without it every index is its own unit, and the
    permutation is the same as with ``n`` singletons.
    """

    def __init__(self, n: int, batch_size: int, epoch: int, seed: int = 0, rank: int = 0, world_size: int = 1,
                 start_batch: int = 0, epochs: int = 1, batches_per_epoch: int | None = None,
                 units: list[list[int]] | None = None):
        if units is not None and sorted(i for u in units for i in u) != list(range(n)):
            raise ValueError(f"units must hold every index 0..{n - 1} exactly once")
        self.units = units
        self.n, self.batch_size, self.epoch, self.seed = n, batch_size, epoch, seed
        self.rank, self.world_size, self.start_batch, self.epochs = rank, world_size, start_batch, epochs
        full = n // self.global_batch
        self.per_epoch = full if batches_per_epoch is None else min(full, batches_per_epoch)

    @property
    def global_batch(self) -> int:
        return self.batch_size * self.world_size

    def __len__(self) -> int:
        return max(0, self.per_epoch * self.epochs - self.start_batch) if self.epochs > 0 else 0

    def __iter__(self):
        for epoch in range(self.epoch, self.epoch + self.epochs):
            g = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
            if self.units is None:
                perm = torch.randperm(self.n, generator=g).tolist()
            else:
                perm = [i for u in torch.randperm(len(self.units), generator=g).tolist() for i in self.units[u]]
            for b in range(self.start_batch if epoch == self.epoch else 0, self.per_epoch):
                lo = b * self.global_batch + self.rank * self.batch_size
                yield [(epoch, i) for i in perm[lo : lo + self.batch_size]]


def default_workers(device_type: str = "cpu") -> int:
    """Loader processes: up to 4, leaving a core to the training process. When the step itself runs
    on a CPU of 2 cores or fewer, it uses every core and a loader process only competes with it:
    loading inside the training process is faster there (the demo's FLAME trained at 191 against 174
    images/s; BENCHMARKS.md, "Kernels of a CPU training step")."""
    cores = os.cpu_count() or 1
    if device_type == "cpu" and cores <= 2:
        return 0
    return min(4, max(0, cores - 1))
