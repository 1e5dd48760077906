"""Fashion-MNIST from the Debian package: IDX reading, the class-balanced PNG subset, the demo suite."""

from __future__ import annotations

import gzip
import json
import struct
import tomllib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from flameclip.data import fashion_mnist as FM
from flameclip.data.fashion_mnist import CLASSNAMES, FashionMNISTError, build_fashion_mnist

N_TRAIN, N_TEST = 60, 30  # 6 and 3 images per class in the synthetic files


def write_idx(path: Path, array: np.ndarray) -> None:
    """An IDX file of unsigned bytes, gzipped, as the Fashion-MNIST files are."""
    array = np.ascontiguousarray(array, dtype=np.uint8)
    header = bytes([0, 0, 0x08, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    with gzip.open(path, "wb") as f:
        f.write(header + array.tobytes())


def make_split(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Images whose every pixel identifies the image (no two alike) and shuffled, balanced labels."""
    rng = np.random.default_rng(seed)
    labels = rng.permutation(np.arange(n) % 10).astype(np.uint8)
    images = rng.integers(0, 256, size=(n, 28, 28), dtype=np.uint8)
    images[:, 0, 0] = np.arange(n)  # distinct even if the random parts collided
    return images, labels


@pytest.fixture
def synthetic(tmp_path, monkeypatch):
    folder = tmp_path / "fashion-src"
    folder.mkdir()
    data = {"train": make_split(N_TRAIN, 1), "test": make_split(N_TEST, 2)}
    for split, (images, labels) in data.items():
        img_name, lab_name = FM.FILES[split]
        write_idx(folder / img_name, images)
        write_idx(folder / lab_name, labels)
    monkeypatch.setenv(FM.ENV_VAR, str(folder))
    return folder, data


def _jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def _files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


# ------------------------------------------------------------------ finding and reading

def test_env_var_picks_the_folder_and_all_four_files_are_needed(synthetic, tmp_path, monkeypatch):
    folder, _ = synthetic
    assert FM.find_fashion_mnist() == folder
    (folder / "t10k-labels-idx1-ubyte.gz").unlink()
    assert FM.find_fashion_mnist() is None
    assert str(folder) in FM.not_found_message() and "apt-get install dataset-fashion-mnist" in FM.not_found_message()
    # Without the variable the Debian folder is used.
    monkeypatch.delenv(FM.ENV_VAR)
    monkeypatch.setattr(FM, "DEFAULT_DIR", tmp_path / "nowhere")
    assert FM.source_dir() == tmp_path / "nowhere" and FM.find_fashion_mnist() is None


def test_reading_returns_exactly_what_was_written(synthetic):
    _, data = synthetic
    for split, (images, labels) in data.items():
        got_images, got_labels = FM.load_split(split)
        assert got_images.shape == images.shape and got_images.dtype == np.uint8
        np.testing.assert_array_equal(got_images, images)
        np.testing.assert_array_equal(got_labels, labels)


def _truncate(path: Path) -> None:
    raw = path.read_bytes()
    path.write_bytes(raw[: len(raw) // 2])  # the gzip stream ends early


def _short_payload(path: Path) -> None:
    with gzip.open(path, "rb") as f:
        raw = f.read()
    with gzip.open(path, "wb") as f:
        f.write(raw[:-100])  # a valid gzip, but fewer pixels than the header promises


def _wrong_magic(path: Path) -> None:
    with gzip.open(path, "rb") as f:
        raw = f.read()
    with gzip.open(path, "wb") as f:
        f.write(b"\x00\x00\x0d\x03" + raw[4:])  # float data, not unsigned bytes


def _not_gzip(path: Path) -> None:
    path.write_bytes(b"<html>404 not found</html>")


@pytest.mark.parametrize("damage, words", [(_truncate, "truncated"), (_short_payload, "header"),
                                           (_wrong_magic, "magic"), (_not_gzip, "gzip")])
def test_a_damaged_file_gives_one_line_naming_it(synthetic, tmp_path, damage, words):
    folder, _ = synthetic
    bad = folder / "train-images-idx3-ubyte.gz"
    damage(bad)
    with pytest.raises(FashionMNISTError) as e:
        build_fashion_mnist(tmp_path / "out", n_train=20, n_test=10)
    msg = str(e.value)
    assert "\n" not in msg and str(bad) in msg and words in msg
    assert "apt-get install --reinstall dataset-fashion-mnist" in msg and FM.ENV_VAR in msg
    assert not (tmp_path / "out").exists()  # nothing half-built is left where it would be used


def test_labels_must_match_the_images(synthetic):
    folder, data = synthetic
    write_idx(folder / "t10k-labels-idx1-ubyte.gz", data["test"][1][:-1])
    with pytest.raises(FashionMNISTError, match=r"29 labels for 30 images"):
        FM.load_split("test")
    write_idx(folder / "t10k-labels-idx1-ubyte.gz", np.full(N_TEST, 10, dtype=np.uint8))
    with pytest.raises(FashionMNISTError, match=r"label 10 outside 0-9"):
        FM.load_split("test")


# ------------------------------------------------------------------ the subset

def test_pngs_and_labels_equal_the_source_and_classes_are_balanced(synthetic, tmp_path):
    _, data = synthetic
    paths = build_fashion_mnist(tmp_path / "fm", n_train=20, n_test=10, seed=0)
    for split, n in (("train", 20), ("test", 10)):
        images, labels = data[split]
        rows = _jsonl(paths[f"{split}_manifest"])
        assert len(rows) == n and len({r["index"] for r in rows}) == n
        for r in rows:
            with Image.open(paths["root"] / r["image"]) as im:
                assert im.mode == "RGB" and im.size == (28, 28)
                px = np.asarray(im)
            for ch in range(3):
                np.testing.assert_array_equal(px[:, :, ch], images[r["index"]])
            assert r["label"] == CLASSNAMES[labels[r["index"]]]
        per_class = {c: sum(r["label"] == c for r in rows) for c in CLASSNAMES}
        assert set(per_class.values()) == {n // 10}, per_class
    # The evaluator's own loader reads the manifests with the class order of the files.
    from flameclip.evaluate.datasets import load_classification

    test = load_classification("fm", str(paths["test_manifest"]), CLASSNAMES)
    rows = _jsonl(paths["test_manifest"])
    assert test.labels == [int(data["test"][1][r["index"]]) for r in rows]
    assert all(Path(p).is_file() for p in test.images)


def test_subset_is_deterministic_seeded_and_nested():
    labels = make_split(N_TRAIN, 1)[1]
    a = FM.balanced_subset(labels, 23, seed=0)
    np.testing.assert_array_equal(a, FM.balanced_subset(labels, 23, seed=0))
    counts = np.bincount(labels[a], minlength=10)
    assert counts.sum() == 23 and counts.max() - counts.min() <= 1
    assert not np.array_equal(FM.balanced_subset(labels, 30, seed=0), FM.balanced_subset(labels, 30, seed=1))
    # A smaller subset is part of a larger one: tiny runs see some of the images a full run sees.
    assert set(FM.balanced_subset(labels, 20)) <= set(FM.balanced_subset(labels, 40))
    with pytest.raises(ValueError, match="only 6 exist"):
        FM.balanced_subset(labels, 70)


def test_build_is_byte_identical_and_built_once(synthetic, tmp_path, monkeypatch):
    a = build_fashion_mnist(tmp_path / "a", n_train=20, n_test=10)
    b = build_fashion_mnist(tmp_path / "b", n_train=20, n_test=10)
    fa = _files(a["root"])
    assert len(fa) == 20 + 10 + 3 and fa == _files(b["root"])
    c = build_fashion_mnist(tmp_path / "c", n_train=20, n_test=10, seed=1)
    assert _jsonl(c["train_manifest"]) != _jsonl(a["train_manifest"])

    def fail(*args, **kwargs):
        raise AssertionError("rebuilt although DONE.json matches")

    monkeypatch.setattr(FM, "load_split", fail)
    assert build_fashion_mnist(tmp_path / "a", n_train=20, n_test=10) == a
    assert _files(a["root"]) == fa


def test_an_interrupted_build_is_redone_and_never_used(synthetic, tmp_path, monkeypatch):
    out = tmp_path / "fm"
    old = build_fashion_mnist(out, n_train=20, n_test=10)
    before = _files(out)
    real = FM.load_split

    def die_on_test(split, folder=None):
        if split == "test":
            raise KeyboardInterrupt  # killed after the train images were written
        return real(split, folder)

    monkeypatch.setattr(FM, "load_split", die_on_test)
    with pytest.raises(KeyboardInterrupt):
        build_fashion_mnist(out, n_train=40, n_test=20)
    # The complete old set is still in place, untouched; the half-built one is aside.
    assert _files(out) == before and out.with_name("fm.partial").exists()
    monkeypatch.setattr(FM, "load_split", real)
    new = build_fashion_mnist(out, n_train=40, n_test=20)
    assert new == old and len(_jsonl(new["train_manifest"])) == 40 and len(_jsonl(new["test_manifest"])) == 20
    assert not out.with_name("fm.partial").exists()
    # The same for a first build: nothing at the output path until it is complete.
    monkeypatch.setattr(FM, "load_split", die_on_test)
    with pytest.raises(KeyboardInterrupt):
        build_fashion_mnist(tmp_path / "first", n_train=20, n_test=10)
    assert not (tmp_path / "first").exists()


def test_the_debian_files_parse(monkeypatch):
    monkeypatch.delenv(FM.ENV_VAR, raising=False)
    if FM.find_fashion_mnist() is None:
        pytest.skip(FM.not_found_message())
    for split, n in (("train", 60000), ("test", 10000)):
        images, labels = FM.load_split(split)
        assert images.shape == (n, 28, 28) and labels.shape == (n,)
        assert np.bincount(labels, minlength=10).tolist() == [n // 10] * 10
        assert images.max() == 255 and images.min() == 0


# ------------------------------------------------------------------ the demo suite

TINY = dict(vocab_size=20, n_train=10, long_groups=2, group_size=3, n_short=4, n_classes=3, per_class=2,
            n_multilingual=4)


@pytest.fixture
def demo_build():
    from flameclip.data.demo.glyphs import EmojiFontNotFound, find_emoji_font

    try:
        find_emoji_font()
    except EmojiFontNotFound as e:
        pytest.skip(str(e))
    from flameclip.data.demo import build_demo_data

    return build_demo_data


def _tasks(suite: Path) -> dict[str, dict]:
    return {t["name"]: t for t in tomllib.loads(suite.read_text(encoding="utf-8"))["task"]}


def test_suite_gets_both_tasks_when_the_data_is_there(synthetic, demo_build, tmp_path, capsys):
    from flameclip.data.demo.suite import FASHION_TEMPLATES
    from flameclip.evaluate.datasets import load_classification
    from flameclip.evaluate.tasks import load_suite

    paths = demo_build(tmp_path / "demo", "cpu", progress=False, fashion_train=40, fashion_test=20, **TINY)
    assert "Fashion-MNIST" not in capsys.readouterr().err
    tasks = _tasks(paths["suite"])
    assert {"emoji-glyphs", "fashion-mnist", "fashion-mnist-probe"} <= set(tasks)
    zs, probe = tasks["fashion-mnist"], tasks["fashion-mnist-probe"]
    assert zs["task"] == "zeroshot" and probe["task"] == "linear_probe"
    # Explicit templates in the evaluator's placeholder syntax: the demo leaves these alone.
    assert zs["templates"] == FASHION_TEMPLATES and all("{c}" in t for t in zs["templates"])
    assert zs["classnames"] == CLASSNAMES == probe["classnames"]
    specs = {s.name: s for s in load_suite(paths["suite"])}
    assert specs["fashion-mnist"].path == specs["fashion-mnist-probe"].test  # the same 1000 (here 20) images
    train = load_classification("t", specs["fashion-mnist-probe"].train, specs["fashion-mnist-probe"].classnames)
    test = load_classification("t", specs["fashion-mnist"].path, specs["fashion-mnist"].classnames)
    assert (len(train.images), len(test.images)) == (40, 20)
    assert np.bincount(train.labels).tolist() == [4] * 10 and np.bincount(test.labels).tolist() == [2] * 10
    assert Path(train.images[0]).resolve().is_relative_to(paths["fashion_mnist"].resolve())


def test_suite_leaves_them_out_with_one_line_when_absent_and_follows_an_install(
        synthetic, demo_build, tmp_path, monkeypatch, capsys):
    folder, _ = synthetic
    monkeypatch.setenv(FM.ENV_VAR, str(tmp_path / "not-installed"))
    root = tmp_path / "demo"
    paths = demo_build(root, "cpu", progress=False, fashion_train=40, fashion_test=20, **TINY)
    err = capsys.readouterr().err.strip().splitlines()
    note = [line for line in err if "Fashion-MNIST" in line]
    assert len(note) == 1 and "skipped" in note[0] and "apt-get install dataset-fashion-mnist" in note[0]
    assert set(_tasks(paths["suite"])) == {"emoji-glyphs", "scenes-long", "scenes-novel-phrasing", "scenes-short", "emoji-names"}
    assert not paths["fashion_mnist"].exists()

    # Installed later: the next call adds the tasks without drawing the emoji sets again.
    from flameclip.data.demo import build as B

    def fail(*args, **kwargs):
        raise AssertionError("emoji data rebuilt")

    monkeypatch.setattr(B, "_build", fail)
    monkeypatch.setenv(FM.ENV_VAR, str(folder))
    demo_build(root, "cpu", progress=False, fashion_train=40, fashion_test=20, **TINY)
    assert {"fashion-mnist", "fashion-mnist-probe"} <= set(_tasks(paths["suite"]))
    # Removed again, or turned off with a size of 0: gone from the suite.
    monkeypatch.setenv(FM.ENV_VAR, str(tmp_path / "not-installed"))
    demo_build(root, "cpu", progress=False, fashion_train=40, fashion_test=20, **TINY)
    assert "fashion-mnist" not in _tasks(paths["suite"])
    monkeypatch.setenv(FM.ENV_VAR, str(folder))
    capsys.readouterr()
    demo_build(root, "cpu", progress=False, fashion_train=0, fashion_test=20, **TINY)
    assert "fashion-mnist" not in _tasks(paths["suite"]) and "Fashion-MNIST" not in capsys.readouterr().err


def test_the_evaluator_runs_both_tasks(synthetic, demo_build, tmp_path, monkeypatch):
    """The real evaluator on the suite entries: a CLIP-tower model (no LLM) trained for a few steps."""
    from flameclip.config import load_config
    from flameclip.evaluate.tasks import Evaluator, load_suite
    from flameclip.inference import FlameCLIP, load
    from flameclip.train import train

    from .shapes_data import make_shapes

    d = make_shapes(tmp_path / "shapes", n=16, size=32)
    run = train(load_config(None, [
        f"train_manifest={d['manifest']}", f"captions={d['captions']}", f"out={tmp_path / 'clip'}",
        'text_columns=["short"]', "model.text_tower=clip", "model.embed_dim=32", "model.clip_width=32",
        "model.clip_layers=1", "model.clip_heads=2", "model.image_size=32", "model.patch_size=8",
        "model.vision_width=32", "model.vision_depth=1", "model.vision_heads=2", "workers=0", "precision=fp32",
        "batch_size=8", "epochs=1", "warmup_steps=1", "save_every=100"]), progress=False)
    paths = demo_build(tmp_path / "demo", "cpu", progress=False, fashion_train=40, fashion_test=20, **TINY)
    specs = {s.name: s for s in load_suite(paths["suite"])}

    seen = []
    real = FlameCLIP.zero_shot_classifier

    def spy(self, classnames, templates=None):
        seen.append((list(classnames), templates))
        return real(self, classnames, templates)

    monkeypatch.setattr(FlameCLIP, "zero_shot_classifier", spy)
    ev = Evaluator(load(run.checkpoint, device="cpu"))
    zs = ev.run(specs["fashion-mnist"])
    probe = ev.run(specs["fashion-mnist-probe"])
    assert zs["counts"] == {"images": 20, "classes": 10}
    assert seen == [(CLASSNAMES, specs["fashion-mnist"].templates)]
    assert probe["counts"] == {"train": 40, "test": 20, "classes": 10}
    for r in (zs, probe):
        assert all(0.0 <= v <= 1.0 for v in r["metrics"].values())


def test_class_order_is_the_datasets_own():
    """Label i of the idx files means the i-th class of Fashion-MNIST's README (Xiao et al. 2017),
    written out here independently of the module: a shifted list would mislabel every image."""
    published = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag",
                 "Ankle boot"]
    assert len(CLASSNAMES) == len(published)
    for ours, theirs in zip(CLASSNAMES, published):
        assert ours.split()[0].lower() in theirs.lower(), (ours, theirs)

