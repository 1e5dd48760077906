"""Text-to-image search over a folder of images with a trained checkpoint.

``flameclip index IMAGE_DIR`` encodes every image once and writes an index folder (by default
``IMAGE_DIR/.flameclip-index``):

* ``embeddings.npy``: float16 ``[N, E]``, one unit-length image embedding per row;
* ``paths.json``: the N image paths, relative to the image folder, in row order;
* ``index.json``: format, checkpoint path and fingerprint, embedding width, count, text tower, and
  where the image folder is relative to the index.

``flameclip search "query"`` encodes the query with the same checkpoint (the frozen LLM for a FLAME
checkpoint, the CLIP text tower for the baseline), ranks the images by cosine similarity and draws
a contact sheet of the best ones. An index remembers the checkpoint that made it by a hash of the
weights and config, because embeddings of two checkpoints live in unrelated spaces: comparing a
query from one with images from the other gives confident-looking nonsense.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch

from .data.centering import facet_sets
from .data.images import IMAGE_EXTENSIONS, DataError
from .model import CONFIG_NAME, WEIGHTS_NAME
from .fileio import UNREADABLE, atomic_write_bytes, file_sha256, fsync_dir, open_rgb, why_unreadable

INDEX_FORMAT = "flameclip-index/1"
INDEX_DIRNAME = ".flameclip-index"
EMBEDDINGS_NAME = "embeddings.npy"
PATHS_NAME = "paths.json"
META_NAME = "index.json"

# A query longer than this goes through the long prompt set: the single prompt describes short
# captions, the facet prompts were made for paragraph-length ones.
LONG_QUERY_WORDS = 30
SEARCH_MODES = ("auto", "single", "short3", "long3", "long7")
LONG_SETS = ("long7", "long3")  # for a long query, the first of these the checkpoint was trained with
# Examples of skipped files kept in the build summary (all of them would flood the terminal).
SKIPPED_EXAMPLES = 5


# ---------------------------------------------------------------------------- fingerprint

_fingerprints: dict[tuple, str] = {}


def checkpoint_fingerprint(checkpoint_dir) -> str:
    """sha256 over the checkpoint's model.safetensors and config.json.

    It identifies the model that made an index whatever folder the checkpoint is later copied
    to. Hashing a large checkpoint takes a while, so the result is remembered for this process
    as long as neither file's size or modification time changes.
    """
    folder = Path(checkpoint_dir)
    files = [folder / WEIGHTS_NAME, folder / CONFIG_NAME]
    absent = [f.name for f in files if not f.is_file()]
    if absent:
        raise FileNotFoundError(f"{folder} is not a flameclip model folder: no {' and no '.join(absent)}")
    stats = [f.stat() for f in files]
    key = (str(folder.resolve()),) + tuple((s.st_size, s.st_mtime_ns) for s in stats)
    if key not in _fingerprints:
        h = hashlib.sha256()
        for f in files:
            # Each file's own digest goes in, so the boundary between the two is unambiguous.
            h.update(bytes.fromhex(file_sha256(f)))
        _fingerprints[key] = h.hexdigest()
    return _fingerprints[key]


# ---------------------------------------------------------------------------- build

def _walk_images(image_dir: Path, skip_dir: Path) -> tuple[list[str], list[str]]:
    """Relative posix paths under ``image_dir``, sorted: (image-extension files, other files).

    Hidden files and folders (``.git``, ``.DS_Store``, macOS ``._name.jpg`` sidecars) and the
    index folder itself are left out without being counted: they are not the user's images, and
    counting them would bury the skips that matter.
    """
    images, others = [], []
    skip = skip_dir.resolve()
    for root, dirs, files in os.walk(image_dir):
        # Pruning in place keeps os.walk out of these folders altogether.
        dirs[:] = [d for d in dirs if not d.startswith(".") and (Path(root) / d).resolve() != skip]
        for name in files:
            if name.startswith("."):
                continue
            rel = (Path(root) / name).relative_to(image_dir).as_posix()
            (images if os.path.splitext(name)[1].lower() in IMAGE_EXTENSIONS else others).append(rel)
    return sorted(images), sorted(others)


def _load_pixels(path: Path, preprocess):
    """The preprocessed image tensor, or the reason PIL could not read the file."""
    try:
        return preprocess(open_rgb(path))
    except UNREADABLE as e:
        return f"unreadable ({why_unreadable(e)})"


def _write_npy(path: Path, array: np.ndarray) -> None:
    buf = io.BytesIO()
    np.save(buf, array, allow_pickle=False)
    atomic_write_bytes(str(path), buf.getvalue())


def _write_json(path: Path, obj) -> None:
    atomic_write_bytes(str(path), (json.dumps(obj, indent=1, ensure_ascii=False) + "\n").encode())


def _folder_bytes(folder: Path) -> int:
    return sum(f.stat().st_size for f in folder.iterdir() if f.is_file())


def build_index(image_dir, checkpoint, out=None, batch_size: int = 64, progress: bool = True,
                device: str | None = None) -> dict:
    """Encode every image under ``image_dir`` (recursively) and write an index folder.

    Files without an image extension and files PIL cannot open are skipped and counted. Returns
    a summary: ``index`` (the folder), ``indexed``, ``skipped_not_image``, ``skipped_unreadable``,
    a few of each kind (``not_image_examples``, ``unreadable_examples``), ``embed_dim``,
    ``seconds``, ``images_per_s`` and ``index_bytes``.
    """
    from tqdm.auto import tqdm

    from .inference import load

    image_dir = Path(image_dir)
    if not image_dir.is_dir():
        raise DataError(f"{image_dir}: not a folder of images")
    if batch_size < 1:
        raise DataError(f"batch size must be at least 1, got {batch_size}")
    out = Path(out) if out is not None else image_dir / INDEX_DIRNAME
    fingerprint = checkpoint_fingerprint(checkpoint)  # fails fast on a wrong checkpoint path
    model = load(checkpoint, device=device)
    start = time.perf_counter()  # after loading: the summary's images/s is the indexing rate

    candidates, not_image = _walk_images(image_dir, out)
    paths, unreadable, chunks = [], [], []
    # Decoding and resizing are the slow part on CPU; PIL and torchvision release the GIL for
    # most of it, so a few threads keep the model fed. map() keeps the walk's order.
    workers = max(1, min(8, os.cpu_count() or 1))
    with ThreadPoolExecutor(workers) as pool, tqdm(total=len(candidates), unit="img", desc="index",
                                                   disable=not progress) as bar:
        for lo in range(0, len(candidates), batch_size):
            batch = candidates[lo : lo + batch_size]
            pixels = []
            for rel, px in zip(batch, pool.map(lambda r: _load_pixels(image_dir / r, model.preprocess), batch)):
                if isinstance(px, str):
                    unreadable.append(f"{rel}: {px}")
                else:
                    paths.append(rel)
                    pixels.append(px)
            if pixels:
                chunks.append(model.encode_image(torch.stack(pixels)).numpy())
            bar.update(len(batch))

    if not paths:
        raise DataError(f"{image_dir}: no readable images ({len(not_image)} files that are not images, "
                        f"{len(unreadable)} unreadable); looked for {', '.join(IMAGE_EXTENSIONS)}")
    embeddings = np.concatenate(chunks).astype(np.float16)

    out.mkdir(parents=True, exist_ok=True)
    meta_path = out / META_NAME
    # index.json is removed first and written last: a build killed half-way leaves a folder that
    # ImageIndex refuses, never new embeddings under an old paths list or the other way round.
    if meta_path.exists():
        meta_path.unlink()
    _write_npy(out / EMBEDDINGS_NAME, embeddings)
    _write_json(out / PATHS_NAME, paths)
    try:
        # Relative, so an image folder moved together with its index keeps working.
        image_root = os.path.relpath(image_dir.resolve(), out.resolve())
    except ValueError:  # Windows: the index is on another drive than the images
        image_root = str(image_dir.resolve())
    meta = {
        "format": INDEX_FORMAT,
        "checkpoint": str(Path(checkpoint).resolve()),
        "checkpoint_fingerprint": fingerprint,
        "embed_dim": int(embeddings.shape[1]),
        "count": len(paths),
        "text_tower": model.cfg.text_tower,
        "llm": (model.cfg.llm or {}).get("llm"),
        "image_root": Path(image_root).as_posix(),
        "embeddings_sha256": file_sha256(out / EMBEDDINGS_NAME),
        "paths_sha256": file_sha256(out / PATHS_NAME),
    }
    _write_json(meta_path, meta)
    fsync_dir(str(out))
    seconds = time.perf_counter() - start
    return {
        "index": str(out),
        "indexed": len(paths),
        "skipped_not_image": len(not_image),
        "skipped_unreadable": len(unreadable),
        "not_image_examples": not_image[:SKIPPED_EXAMPLES],
        "unreadable_examples": unreadable[:SKIPPED_EXAMPLES],
        "embed_dim": meta["embed_dim"],
        "seconds": seconds,
        "images_per_s": len(paths) / seconds if seconds > 0 else float("inf"),
        "index_bytes": _folder_bytes(out),
    }


# ---------------------------------------------------------------------------- search

class ImageIndex:
    """An index folder opened for search.

    ``checkpoint``, when given, must be the checkpoint that built the index (by fingerprint).
    """

    # Rows scored per numpy matrix product: bounds the float32 working copy (and the score
    # matrix) to a fixed size however large the index is.
    chunk_rows = 65_536

    def __init__(self, index_dir, checkpoint=None):
        self.dir = Path(index_dir)
        meta_path = self.dir / META_NAME
        if not meta_path.is_file():
            raise DataError(f"{self.dir} is not a flameclip index (no {META_NAME}): "
                            f"build one with flameclip index IMAGE_DIR --checkpoint DIR")
        try:
            with open(meta_path, encoding="utf-8") as f:
                self.meta = json.load(f)
            if not isinstance(self.meta, dict):
                raise ValueError("not a JSON object")
        except (OSError, ValueError) as e:
            raise DataError(f"{meta_path} is damaged ({e}): rebuild the index with flameclip index") from None
        if self.meta.get("format") != INDEX_FORMAT:
            raise DataError(f"{meta_path}: format {self.meta.get('format')!r}, expected {INDEX_FORMAT!r}; "
                            f"rebuild it with flameclip index")
        if checkpoint is not None:
            self.check_checkpoint(checkpoint)
        try:
            self.embeddings = np.load(self.dir / EMBEDDINGS_NAME, allow_pickle=False)
            with open(self.dir / PATHS_NAME, encoding="utf-8") as f:
                self.paths: list[str] = json.load(f)
        except (OSError, ValueError) as e:
            raise DataError(f"index {self.dir} is damaged ({e}): rebuild it with flameclip index") from None
        missing = [k for k in ("count", "embed_dim", "embeddings_sha256", "paths_sha256") if k not in self.meta]
        if missing:
            raise DataError(f"{meta_path} lacks {', '.join(missing)}: rebuild the index with flameclip index")
        for name, key in ((EMBEDDINGS_NAME, "embeddings_sha256"), (PATHS_NAME, "paths_sha256")):
            # A flipped byte would give other neighbours without a word: the bytes must be the ones written.
            if file_sha256(self.dir / name) != self.meta[key]:
                raise DataError(f"{self.dir / name} is not the file the index wrote (sha256 differs): "
                                "rebuild the index with flameclip index")
        n = self.meta["count"]
        if self.embeddings.shape != (n, self.meta["embed_dim"]) or len(self.paths) != n:
            raise DataError(f"index {self.dir} is damaged (embeddings {tuple(self.embeddings.shape)}, "
                            f"{len(self.paths)} paths, {n} expected): rebuild it with flameclip index")
        self.image_root = Path(os.path.normpath(self.dir / self.meta.get("image_root", "..")))

    def __len__(self) -> int:
        return len(self.paths)

    def check_checkpoint(self, checkpoint) -> None:
        """Refuse a checkpoint other than the one that built the index."""
        fp = checkpoint_fingerprint(checkpoint)
        if fp != self.meta["checkpoint_fingerprint"]:
            raise DataError(f"index {self.dir} was built by another checkpoint "
                            f"({self.meta['checkpoint']}, fingerprint {self.meta['checkpoint_fingerprint'][:12]}; "
                            f"not {checkpoint}, {fp[:12]}): rebuild it with flameclip index")

    @property
    def embed_dim(self) -> int:
        return int(self.meta["embed_dim"])

    def search(self, query_embeddings, k: int = 10) -> list[list[tuple[str, float]]]:
        """Exact top-``k`` images per query: ``[[(path, cosine), ...] best first, ...]``.

        ``query_embeddings`` is ``[Q, E]`` (or one ``[E]`` vector); rows are normalised here, so
        the scores are cosines whatever scale the caller passes.
        """
        q = query_embeddings.detach().cpu().float().numpy() if isinstance(query_embeddings, torch.Tensor) \
            else np.asarray(query_embeddings, dtype=np.float32)
        q = np.atleast_2d(q).astype(np.float32, copy=False)
        if q.shape[1] != self.embed_dim:
            raise ValueError(f"query embeddings have width {q.shape[1]}, the index {self.embed_dim}")
        if k < 1:
            raise ValueError(f"k must be at least 1, got {k}")
        q = q / np.maximum(np.linalg.norm(q, axis=1, keepdims=True), 1e-12)
        k = min(k, len(self))
        scores, ids = self._topk(q, k)
        return [[(self.paths[i], float(s)) for i, s in zip(row_ids, row_scores)]
                for row_ids, row_scores in zip(ids, scores)]

    def _topk(self, q: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        cand_scores, cand_ids = [], []
        for lo in range(0, len(self), self.chunk_rows):
            s = q @ self.embeddings[lo : lo + self.chunk_rows].astype(np.float32).T  # [Q, rows]
            kk = min(k, s.shape[1])
            # argpartition finds each row's kk best in linear time; only those get sorted below.
            part = np.argpartition(-s, kk - 1, axis=1)[:, :kk]
            cand_scores.append(np.take_along_axis(s, part, axis=1))
            cand_ids.append(part + lo)
        scores, ids = np.concatenate(cand_scores, axis=1), np.concatenate(cand_ids, axis=1)
        # Best score first; equal scores in index order, so results never depend on the chunking.
        order = np.lexsort((ids, -scores), axis=1)[:, :k]
        return np.take_along_axis(scores, order, axis=1), np.take_along_axis(ids, order, axis=1)


def resolve_mode(query: str, mode: str = "auto", trained_facets: list[str] = ()) -> str:
    """The prompt set for ``query``: ``auto`` picks single for a short query and a long set for a long
    one: the long set whose rows the checkpoint was trained on (``ModelConfig.text_facets``, e.g.
    "long3:0"; long7 when it names none), so that the query is centred like the rows it matches."""
    if mode not in SEARCH_MODES and not (mode.endswith(".json") and Path(mode).is_file()):
        raise DataError(f"mode must be one of {', '.join(SEARCH_MODES)} or a prompt set JSON file, got {mode!r}")
    if mode != "auto":
        return mode
    if len(query.split()) <= LONG_QUERY_WORDS:
        return "single"
    trained = set(facet_sets(trained_facets))
    return next((name for name in LONG_SETS if name in trained), "long7")


def search(index_dir, checkpoint, query: str, k: int = 10, mode: str = "auto", device: str | None = None,
           text_cache=None) -> list[tuple[str, float]]:
    """The ``k`` images of the index most similar to ``query``: ``[(path, cosine), ...]`` best first.

    ``index_dir`` may also be an opened :class:`ImageIndex` (it is checked against ``checkpoint``
    all the same). Paths are relative to the indexed image folder (``ImageIndex.image_root``). A
    FLAME checkpoint encodes the query with its frozen LLM under the prompt set ``mode`` picks;
    the CLIP baseline uses its own tokenizer and text tower (and ignores the mode; its context of
    77 tokens truncates long queries).
    """
    from .inference import load

    if not query or not query.strip():
        raise DataError("the search query is empty")
    resolve_mode(query, mode)  # a bad mode fails before anything is loaded
    # The fingerprint check comes first: it refuses a foreign checkpoint before loading it.
    if isinstance(index_dir, ImageIndex):
        index = index_dir
        index.check_checkpoint(checkpoint)
    else:
        index = ImageIndex(index_dir, checkpoint)
    model = load(checkpoint, device=device, text_cache=text_cache)
    mode = resolve_mode(query, mode, model.cfg.text_facets)
    return index.search(model.encode_text([query], mode=mode), k)[0]
