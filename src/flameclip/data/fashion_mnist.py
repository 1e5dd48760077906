"""Fashion-MNIST from the Debian package ``dataset-fashion-mnist``, as a small evaluation set.

    folder = find_fashion_mnist()          # None when the four files are not there
    paths = build_fashion_mnist("runs/demo/data/fashion-mnist", n_train=2000, n_test=1000)

writes, under the output folder::

    train/<index>.png   test/<index>.png   28 x 28 RGB (the grey value in all three channels)
    train.jsonl         test.jsonl         one {"image", "label", "index"} per image, the label a
                                           class name from CLASSNAMES, index the row in the source split
    DONE.json                              the parameters: a second call with the same ones returns at once

The manifests are what ``flameclip.evaluate.datasets.load_classification`` reads, so the same
files serve a ``zeroshot`` task (test.jsonl) and a ``linear_probe`` task (train.jsonl, test.jsonl).
The files are read from ``$FLAMECLIP_FASHION_MNIST`` when it is set, else from the Debian path;
nothing is downloaded.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import os
import shutil
import struct
import zlib
from pathlib import Path

import numpy as np

from ..fileio import file_sha256, marker_matches, write_marker
from .images import DataError

ENV_VAR = "FLAMECLIP_FASHION_MNIST"
DEFAULT_DIR = Path("/usr/share/datasets/fashion-mnist")
INSTALL_HINT = "sudo apt-get install dataset-fashion-mnist"

# The ten labels in the order of the files' label values 0-9, as plain lower-case words so that
# they read naturally inside a zero-shot template ("a photo of a {c}.").
CLASSNAMES = ["t-shirt", "trouser", "pullover", "dress", "coat", "sandal", "shirt", "sneaker", "bag", "ankle boot"]

FILES = {
    "train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
    "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"),
}

# Bump when the output changes for the same parameters, so old builds are rebuilt.
BUILD_VERSION = 1

# Part of every subset's seed, so that train and test draws never share a random stream.
_SPLIT_IDS = {"train": 0, "test": 1}


class FashionMNISTError(DataError):
    """A Fashion-MNIST file that cannot be used; one line naming the file and what to do."""


def source_dir() -> Path:
    """Where the files are looked for: ``$FLAMECLIP_FASHION_MNIST`` or the Debian folder."""
    env = os.environ.get(ENV_VAR)
    return Path(env).expanduser() if env else DEFAULT_DIR


def find_fashion_mnist() -> Path | None:
    """The folder holding all four files, or None (the caller decides whether that matters)."""
    folder = source_dir()
    names = [n for pair in FILES.values() for n in pair]
    return folder if all((folder / n).is_file() for n in names) else None


def not_found_message() -> str:
    """One line for a caller that goes on without the data."""
    return (f"Fashion-MNIST not found in {source_dir()}: its evaluation tasks are skipped; install it with "
            f"'{INSTALL_HINT}' (or set {ENV_VAR} to a folder holding its four .gz files)")


def _fix_hint() -> str:
    return (f"reinstall it with 'sudo apt-get install --reinstall dataset-fashion-mnist' "
            f"or set {ENV_VAR} to a folder with intact copies")


def read_idx(path: str | Path, ndim: int) -> np.ndarray:
    """A gzipped IDX file of unsigned bytes with ``ndim`` dimensions, as a uint8 array.

    The header (magic 0x0000 08 ndim, then ndim big-endian uint32 sizes) must match the data
    length exactly: a file cut short would otherwise give fewer images or shifted pixels.
    """
    path = Path(path)
    try:
        with gzip.open(path, "rb") as f:
            data = f.read()
    except FileNotFoundError:
        raise FashionMNISTError(f"{path}: file not found; {_fix_hint()}") from None
    except EOFError:
        raise FashionMNISTError(f"{path}: truncated (the gzip stream ends early); {_fix_hint()}") from None
    except (OSError, zlib.error) as e:  # BadGzipFile, CRC or length mismatch, bad deflate data
        raise FashionMNISTError(f"{path}: not a valid gzip file ({e}); {_fix_hint()}") from None
    header = 4 + 4 * ndim
    if len(data) < header:
        raise FashionMNISTError(f"{path}: {len(data)} bytes, shorter than an IDX header; {_fix_hint()}")
    magic = data[:4]
    if magic != bytes([0, 0, 0x08, ndim]):
        raise FashionMNISTError(f"{path}: IDX magic number {magic.hex()} where {bytes([0, 0, 8, ndim]).hex()} "
                                f"(unsigned bytes, {ndim}-D) was expected; {_fix_hint()}")
    dims = struct.unpack(f">{ndim}I", data[4:header])
    expected = header + int(np.prod(dims, dtype=np.int64))
    if len(data) != expected:
        raise FashionMNISTError(f"{path}: {len(data)} bytes but its header {'x'.join(map(str, dims))} needs "
                                f"{expected}; {_fix_hint()}")
    return np.frombuffer(data, dtype=np.uint8, offset=header).reshape(dims)


def load_split(split: str, folder: str | Path | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(images uint8 [N, H, W], labels uint8 [N]) of ``train`` or ``test`` (the t10k files)."""
    if split not in FILES:
        raise ValueError(f"split must be one of {', '.join(FILES)}, not {split!r}")
    folder = Path(folder) if folder is not None else source_dir()
    img_name, lab_name = FILES[split]
    images = read_idx(folder / img_name, 3)
    labels = read_idx(folder / lab_name, 1)
    if len(images) != len(labels):
        raise FashionMNISTError(f"{folder / lab_name}: {len(labels)} labels for {len(images)} images in "
                                f"{img_name}; {_fix_hint()}")
    if len(labels) and labels.max() >= len(CLASSNAMES):
        raise FashionMNISTError(f"{folder / lab_name}: label {int(labels.max())} outside 0-{len(CLASSNAMES) - 1}; "
                                f"{_fix_hint()}")
    return images, labels


def balanced_subset(labels: np.ndarray, n: int, seed: int = 0, split: str = "train") -> np.ndarray:
    """Sorted row indices of ``n`` images, as close to equal per class as ``n`` allows.

    Class c gets ``n // 10`` images, plus one for the first ``n % 10`` classes. Each class draws
    from its own seeded permutation, so a smaller ``n`` picks a subset of what a larger one picks
    and one class's size never moves another class's choice.
    """
    k = len(CLASSNAMES)
    base, extra = divmod(int(n), k)
    chosen = []
    for c in range(k):
        rows = np.flatnonzero(labels == c)
        want = base + (c < extra)
        if want > len(rows):
            raise ValueError(f"{split}: {want} images of class '{CLASSNAMES[c]}' wanted but only {len(rows)} exist")
        perm = np.random.default_rng([int(seed), _SPLIT_IDS.get(split, 2), c]).permutation(rows)
        chosen.append(perm[:want])
    return np.sort(np.concatenate(chosen))


def _fingerprint(folder: Path) -> str:
    """A hash of the four source files: another copy of the data means another build."""
    h = hashlib.sha256()
    for split in FILES:
        for name in FILES[split]:
            h.update(name.encode())
            h.update(bytes.fromhex(file_sha256(folder / name)))
    return h.hexdigest()


def _paths(out: Path) -> dict[str, Path]:
    return {"root": out, "train_manifest": out / "train.jsonl", "test_manifest": out / "test.jsonl",
            "done": out / "DONE.json"}


def build_fashion_mnist(out: str | Path, n_train: int = 2000, n_test: int = 1000, seed: int = 0, *,
                        source: str | Path | None = None, progress: bool = False) -> dict[str, Path]:
    """Write a class-balanced subset as PNGs and manifests under ``out`` (once); return its paths.

    ``source`` defaults to :func:`source_dir`. If ``out/DONE.json`` records the same parameters
    and source files, nothing is written. Otherwise the set is built in ``<out>.partial`` and
    moved into place only when complete, so an interrupted build is redone, never half-used.
    """
    from PIL import Image
    from tqdm.auto import tqdm

    out = Path(out)
    folder = Path(source) if source is not None else source_dir()
    if n_train < 1 or n_test < 1:
        raise ValueError("n_train and n_test must be at least 1")
    params = {"n_train": int(n_train), "n_test": int(n_test), "seed": int(seed),
              "source_sha256": _fingerprint_or_raise(folder), "build_version": BUILD_VERSION}
    paths = _paths(out)
    if marker_matches(paths["done"], params):
        return paths

    scratch = out.with_name(out.name + ".partial")
    shutil.rmtree(scratch, ignore_errors=True)
    counts = {}
    for split, n in (("train", n_train), ("test", n_test)):
        images, labels = load_split(split, folder)
        rows = balanced_subset(labels, n, seed, split)
        (scratch / split).mkdir(parents=True)
        records = []
        for i in tqdm(rows, desc=f"fashion-mnist {split}", unit="img", disable=not progress):
            name = f"{split}/{int(i):05d}.png"
            # Grey repeated into RGB: the evaluators read RGB, and a PNG of the pixels alone
            # (fixed compression, no metadata) makes the bytes depend on the pixels only.
            Image.fromarray(np.repeat(images[i][:, :, None], 3, axis=2)).save(scratch / name, format="PNG",
                                                                               compress_level=6)
            records.append({"image": name, "label": CLASSNAMES[int(labels[i])], "index": int(i)})
        with open(scratch / f"{split}.jsonl", "w", encoding="utf-8", newline="\n") as f:
            for r in records:
                f.write(json.dumps(r) + "\n")
        counts[split] = {"images": len(records),
                         "per_class": {c: int((labels[rows] == j).sum()) for j, c in enumerate(CLASSNAMES)}}
    write_marker(scratch / "DONE.json", params, counts)
    # DONE.json travels inside the folder, so the old set (or none) stays until the new one,
    # complete with its marker, replaces it with one rename.
    shutil.rmtree(out, ignore_errors=True)
    scratch.rename(out)
    return paths


def _fingerprint_or_raise(folder: Path) -> str:
    try:
        return _fingerprint(folder)
    except FileNotFoundError as e:
        raise FashionMNISTError(f"{e.filename}: file not found; install it with '{INSTALL_HINT}' "
                                f"or set {ENV_VAR} to a folder holding its four .gz files") from None
