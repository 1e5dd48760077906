"""Evaluation data: classification sets (ImageFolder or manifest) and retrieval manifests.

Evaluation never skips quietly: an unreadable image or a caption without an image stops with a
message that names the files, so no number is computed on a partial set.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch

from ..data.captions import iter_records
from ..fileio import UNREADABLE, open_rgb, why_unreadable
from ..data.images import IMAGE_EXTENSIONS, DataError


@dataclass
class ClassificationSet:
    name: str
    images: list[str]
    labels: list[int]
    classnames: list[str]

    def counts(self) -> dict:
        return {"images": len(self.images), "classes": len(self.classnames)}


@dataclass
class RetrievalSet:
    name: str
    images: list[str]
    texts: list[str]
    text_to_image: list[int]
    languages: list[str] | None = None
    # Hard-negative groups: image i belongs to group image_groups[i] (None: no groups in the file)
    image_groups: list[str] | None = None

    def counts(self) -> dict:
        c = {"images": len(self.images), "texts": len(self.texts)}
        if self.languages is not None:
            c["languages"] = len(set(self.languages))
        if self.image_groups is not None:
            c["groups"] = len(set(self.image_groups))
        return c


def _resolve(path: str, root: Path) -> str:
    p = Path(path)
    return str(p if p.is_absolute() else root / p)


def load_classification(name: str, path: str, classnames: list[str] | None = None, image_column: str = "image",
                        label_column: str = "label") -> ClassificationSet:
    """An ImageFolder tree (``root/<class>/<image>``) or a manifest with image and label columns."""
    p = Path(path)
    if not p.exists():
        raise DataError(f"{p}: evaluation data not found")
    images, labels = [], []
    if p.is_dir():
        folders = sorted(d for d in p.iterdir() if d.is_dir())
        if not folders:
            raise DataError(f"{p}: an ImageFolder needs one sub-folder per class")
        names = [d.name.replace("_", " ") for d in folders]
        if classnames is not None and len(classnames) != len(names):
            raise DataError(f"{p}: {len(folders)} class folders but {len(classnames)} class names given")
        classnames = classnames or names
        for i, d in enumerate(folders):
            for f in sorted(d.iterdir()):
                if f.suffix.lower() in IMAGE_EXTENSIONS:
                    images.append(str(f))
                    labels.append(i)
    else:
        rows = [(n, r) for n, r in iter_records(p)]
        found = [str(r.get(label_column, "")) for _, r in rows]
        classnames = classnames or sorted(set(found))
        index = {c: i for i, c in enumerate(classnames)}
        for (n, r), lab in zip(rows, found):
            if lab not in index:
                raise DataError(f"{p}: record {n} has label '{lab}', which is not one of the {len(classnames)} class names")
            if not r.get(image_column):
                raise DataError(f"{p}: record {n} has no '{image_column}'")
            images.append(_resolve(str(r[image_column]), p.parent))
            labels.append(index[lab])
    if not images:
        raise DataError(f"{p}: no images")
    return ClassificationSet(name, images, labels, list(classnames))


def load_retrieval(name: str, path: str, image_column: str = "image", caption_column: str = "caption",
                   language_column: str | None = None, group_column: str = "group") -> RetrievalSet:
    """A manifest with an image and one caption (or a list of captions) per record.

    Records naming the same image add captions to it; with ``language_column`` every caption
    carries its language (multilingual retrieval). When every record has a ``group_column``, images
    of one group are hard negatives of each other and the group score is computed too.
    """
    p = Path(path)
    if not p.exists():
        raise DataError(f"{p}: evaluation data not found")
    images, index, texts, t2i, langs, groups = [], {}, [], [], [], []
    for n, r in iter_records(p):
        img, cap = r.get(image_column), r.get(caption_column)
        if not img:
            raise DataError(f"{p}: record {n} has no '{image_column}'")
        caps = cap if isinstance(cap, list) else ([] if cap is None else [cap])
        if isinstance(cap, str) and cap.startswith("["):
            caps = json.loads(cap)  # a list stored as text in csv
        caps = [str(c) for c in caps if str(c).strip()]
        if not caps:
            raise DataError(f"{p}: record {n} ('{img}') has no caption: every query needs a positive and vice versa")
        path_ = _resolve(str(img), p.parent)
        if path_ not in index:
            index[path_] = len(images)
            images.append(path_)
            groups.append(r.get(group_column))
        elif groups[index[path_]] != r.get(group_column):
            raise DataError(f"{p}: record {n} puts '{img}' in group {r.get(group_column)!r}, an earlier one in "
                            f"{groups[index[path_]]!r}: an image belongs to one group")
        for c in caps:
            texts.append(c)
            t2i.append(index[path_])
            if language_column:
                if not r.get(language_column):
                    raise DataError(f"{p}: record {n} has no '{language_column}'")
                langs.append(str(r[language_column]))
    if not texts:
        raise DataError(f"{p}: no captions")
    has_groups = [g is not None and g != "" for g in groups]
    if any(has_groups) and not all(has_groups):
        first = images[has_groups.index(False)]
        raise DataError(f"{p}: some records have a '{group_column}' and some do not (first without: '{first}')")
    image_groups = [str(g) for g in groups] if all(has_groups) else None
    return RetrievalSet(name, images, texts, t2i, langs if language_column else None, image_groups)


class _ImageFiles(torch.utils.data.Dataset):
    def __init__(self, paths, transform):
        self.paths, self.transform = paths, transform

    def __len__(self):
        return len(self.paths)

    def __getitem__(self, i):
        try:
            return self.transform(open_rgb(self.paths[i])), i, ""
        except UNREADABLE as e:
            return torch.zeros(0), i, f"{self.paths[i]} ({why_unreadable(e)})"


def _collate(batch):
    return batch


def iterate_images(paths: list[str], transform, batch_size: int = 64, workers: int = 0):
    """Yield (pixels [B, 3, H, W], indices) in order, one batch in memory at a time.

    After the first unreadable file nothing more is yielded, but the rest is still read so that the
    error, raised at the end, names every unreadable file at once (and the caller, whose loop the
    error ends, computes no metric on a partial set).
    """
    loader = torch.utils.data.DataLoader(_ImageFiles(paths, transform), batch_size=batch_size,
                                         num_workers=workers, collate_fn=_collate)
    bad = []
    for batch in loader:
        bad += [err for _, _, err in batch if err]
        if not bad:
            yield torch.stack([x for x, _, _ in batch]), [i for _, i, _ in batch]
    if bad:
        raise DataError(f"{len(bad)} unreadable image(s), e.g. {'; '.join(bad[:3])}: fix or remove them from the "
                        "evaluation set (no metric is computed on a partial set)")
