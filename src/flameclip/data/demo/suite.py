"""The demo's evaluation suite (eval/suite.toml): the emoji tasks, and Fashion-MNIST when its files are there."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

from ...demo import DEMO_PROMPTS
from ...fileio import atomic_write_bytes
from .. import fashion_mnist as FM

# Zero-shot templates for Fashion-MNIST, given explicitly: the demo replaces only template lists
# that are unset, with emoji templates. The images are grey photos of single garments.
FASHION_TEMPLATES = ["{c}", "a photo of a {c}.", "a black and white photo of a {c}."]

# The suites query each caption column with the prompt set the demo stores it with.
SUITE_TOML = f"""\
# The demo evaluation suite; paths are relative to this file.
[[task]]
task = "zeroshot"
name = "emoji-glyphs"
path = "zeroshot"

[[task]]
task = "retrieval"
name = "scenes-long"
path = "long_retrieval.jsonl"
mode = "{DEMO_PROMPTS['long']}"

[[task]]
task = "retrieval"
name = "scenes-novel-phrasing"
path = "novel_retrieval.jsonl"
mode = "{DEMO_PROMPTS['long']}"

[[task]]
task = "retrieval"
name = "scenes-short"
path = "short_retrieval.jsonl"
# short3, the prompt set the short captions were stored with: on held-out training scenes it gives
# FLAME text->image R@1 20.0 against 14.7 with "single" (BENCHMARKS.md, demo LLM)
mode = "{DEMO_PROMPTS['short']}"

[[task]]
task = "multilingual"
name = "emoji-names"
path = "multilingual.jsonl"
"""

# The validation split's hard negatives (train/val_suite.toml, with val_groups): scenes held out of
# training, in groups that differ only in their last-named object, for choosing settings; and the
# same groups captioned by the other writer, the twin of the unseen-phrasing evaluation set.
VAL_SUITE_TOML = f"""\
[[task]]
task = "retrieval"
name = "val-hard-negatives"
path = "val_groups.jsonl"
mode = "{DEMO_PROMPTS['long']}"

[[task]]
task = "retrieval"
name = "val-novel-phrasing"
path = "val_groups_novel.jsonl"
mode = "{DEMO_PROMPTS['long']}"
"""


def fashion_mnist_tasks(paths: dict[str, Path], params: dict, progress: bool) -> str:
    """Build the Fashion-MNIST subset when the files are there; its suite tables, or "" without it."""
    if not (params["fashion_train"] and params["fashion_test"]):
        return ""  # asked to leave it out
    source = FM.find_fashion_mnist()
    if source is None:
        print(f"note: {FM.not_found_message()}", file=sys.stderr, flush=True)
        return ""
    fm = FM.build_fashion_mnist(paths["fashion_mnist"], params["fashion_train"], params["fashion_test"],
                                params["seed"], source=source, progress=progress)
    rel = Path(os.path.relpath(fm["root"], paths["suite"].parent)).as_posix()
    names = json.dumps(FM.CLASSNAMES)  # a JSON array of plain strings is a TOML array
    return f"""
# Fashion-MNIST (Debian package dataset-fashion-mnist): zero-shot on {params['fashion_test']} t10k images,
# a linear probe trained on {params['fashion_train']} train images and tested on the same t10k images.
[[task]]
task = "zeroshot"
name = "fashion-mnist"
path = "{rel}/test.jsonl"
classnames = {names}
templates = {json.dumps(FASHION_TEMPLATES)}

[[task]]
task = "linear_probe"
name = "fashion-mnist-probe"
train = "{rel}/train.jsonl"
test = "{rel}/test.jsonl"
classnames = {names}
"""


def write_suites(suite: Path, val_suite: Path, paths: dict[str, Path], params: dict, progress: bool) -> None:
    """Bring the evaluation suite (with or without Fashion-MNIST) and, where the data has one, the
    validation suite up to this version's, so a data folder of an older one queries as the demo now does."""
    _write_if_changed(suite, SUITE_TOML + fashion_mnist_tasks(paths, params, progress))
    if val_suite.exists():
        _write_if_changed(val_suite, VAL_SUITE_TOML)


def _write_if_changed(path: Path, text: str) -> None:
    """Replace ``path`` by ``text`` through a rename, so a reader never sees half a file."""
    try:
        if path.read_text(encoding="utf-8") == text:
            return
    except OSError:
        pass
    atomic_write_bytes(str(path), text.encode("utf-8"))
