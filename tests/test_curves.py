"""Learning curves (curves.csv) and the hard-negative group score."""

import numpy as np
import pytest
import torch
from PIL import Image

from flameclip.config import load_config
from flameclip.data.images import DataError
from flameclip.evaluate.curves import plot_learning_curves, read_curves
from flameclip.evaluate.metrics import cluster_stderr, group_scores
from flameclip.train import train

from .test_train import TINY, data  # noqa: F401  (the module-scoped fixture: shapes + a real store)


def _split(data, tmp_path, n_train=32):
    lines = data["manifest"].read_text().splitlines()
    train_m, val_m = tmp_path / "train.jsonl", tmp_path / "val.jsonl"
    train_m.write_text("\n".join(lines[:n_train]) + "\n")
    val_m.write_text("\n".join(lines[n_train:]) + "\n")
    return train_m, val_m


def _root(data):
    return f"image_root={data['manifest'].parent}"


def test_curves_record_training_and_held_out_recall(data, tmp_path):  # noqa: F811
    train_m, val_m = _split(data, tmp_path)
    out = tmp_path / "run"
    cfg = load_config(None, [f"train_manifest={train_m}", f"val_manifest={val_m}", f"store={data['store']}",
                             _root(data), f"out={out}", "batch_size=8", "positives=2", "epochs=4", "eval_every=4",
                             "save_every=100", "lr=2e-3", *TINY])
    res = train(cfg, progress=False)
    rows = read_curves(out / "curves.csv")
    # Every 4 steps and at the end, both sets, every stored column.
    steps = sorted({int(r["step"]) for r in rows})
    assert steps == [4, 8, 12, 16] and res.steps == 16
    assert {(r["set"], r["column"]) for r in rows} == {(s, c) for s in ("train", "val") for c in ("raw", "short")}
    # The training set holds at most 32 readable images (one training image is corrupt); the
    # held-out set is the other 8 records.
    sizes = {r["set"]: int(r["images"]) for r in rows}
    assert sizes["val"] == 8 and 30 <= sizes["train"] <= 32
    for r in rows:
        assert 0.0 <= r["t2i_r1"] <= r["t2i_r5"] <= 1.0
    # The last held-out figures equal a recomputation from the final checkpoint through the
    # inference API (its own image preprocessing) and the store's rows, read independently.
    import json

    from flameclip.inference import load
    from flameclip.store import EmbeddingStore

    m = load(res.checkpoint)
    recs = [json.loads(line) for line in val_m.read_text().splitlines()]
    images = [Image.open(data["manifest"].parent / r["image"]) for r in recs]
    img = m.encode_image(images)
    store = EmbeddingStore(data["store"])
    for col in ("raw", "short"):
        states = torch.from_numpy(np.stack([store.get_column(r["id"], col).mean(0) for r in recs]))
        txt = m.encode_text(states)
        sim = txt @ img.T
        want = (sim.argmax(1) == torch.arange(len(recs))).float().mean().item()
        got = [r for r in rows if r["step"] == 16 and r["set"] == "val" and r["column"] == col][0]
        assert got["t2i_r1"] == pytest.approx(want, abs=1e-6), col
    png = plot_learning_curves({"FLAME": out / "curves.csv"}, tmp_path / "curves.png")
    assert png.stat().st_size > 1000


def test_held_out_set_sharing_ids_with_training_is_refused(data, tmp_path):  # noqa: F811
    train_m, _ = _split(data, tmp_path)
    cfg = load_config(None, [f"train_manifest={train_m}", f"val_manifest={train_m}", f"store={data['store']}", _root(data),
                             f"out={tmp_path / 'run'}", "batch_size=8", "positives=2", "max_steps=1", *TINY])
    with pytest.raises(DataError, match="held out"):
        train(cfg, progress=False)


def test_unknown_eval_column_is_refused(data, tmp_path):  # noqa: F811
    train_m, val_m = _split(data, tmp_path)
    cfg = load_config(None, [f"train_manifest={train_m}", f"val_manifest={val_m}", f"store={data['store']}",
                             _root(data), f"out={tmp_path / 'run'}", "batch_size=8", "positives=2", "max_steps=1",
                             'eval_columns=["long"]', *TINY])
    with pytest.raises(DataError, match="eval_columns"):
        train(cfg, progress=False)


def test_group_scores_count_only_the_group():
    # Two groups of two images. Text 0 (image 0) scores image 2 (another group) highest overall,
    # but within its own group it prefers image 0: a group hit. Text 1 (image 1) prefers image 0
    # within its group: a miss. Texts 2 and 3 pick their own images.
    img = torch.eye(4)
    txt = torch.tensor([[0.5, 0.1, 0.9, 0.0],
                        [0.6, 0.4, 0.0, 0.0],
                        [0.0, 0.0, 0.7, 0.2],
                        [0.0, 0.0, 0.1, 0.3]])
    s = group_scores(img, txt, [0, 1, 2, 3], ["a", "a", "b", "b"])
    assert s["group_image_retrieval_acc"] == pytest.approx(3 / 4)
    assert s["group_image_retrieval_chance"] == pytest.approx(1 / 2)
    # Image -> text within the group: image 0 picks text 1 (0.6 > 0.5): a miss; image 1 picks text 1
    # (0.4 > 0.1); image 2 picks text 2 (0.7 > 0.1); image 3 picks text 3 (0.3 > 0.2).
    assert s["group_text_retrieval_acc"] == pytest.approx(3 / 4)


def test_group_scores_chance_with_unequal_groups():
    img = torch.eye(3)
    s = group_scores(img, img, [0, 1, 2], ["a", "a", "b"])
    assert s["group_image_retrieval_acc"] == 1.0
    assert s["group_image_retrieval_chance"] == pytest.approx((1 / 2 + 1 / 2 + 1) / 3)


def test_cluster_stderr_matches_the_plain_formulas_at_both_extremes():
    rng = np.random.default_rng(0)
    v = rng.integers(0, 2, size=40).astype(float)
    # One value per cluster: the sample standard deviation over sqrt(n).
    assert cluster_stderr(v, range(40)) == pytest.approx(np.std(v, ddof=1) / np.sqrt(40))
    # Four equal values per cluster: the standard error of the 10 cluster means, twice the naive one.
    means = rng.integers(0, 2, size=10).astype(float)
    v4, g4 = np.repeat(means, 4), np.repeat(np.arange(10), 4)
    assert cluster_stderr(v4, g4) == pytest.approx(np.std(means, ddof=1) / np.sqrt(10))
    assert cluster_stderr(v4, g4) > 1.5 * np.std(v4, ddof=1) / np.sqrt(40)
    assert cluster_stderr([1.0, 0.0], ["a", "a"]) is None  # one cluster: no estimate


def test_group_scores_give_their_standard_error_by_group():
    # Group a: both texts hit; group b: both miss (each text prefers the other image).
    img = torch.eye(4)
    txt = torch.tensor([[1.0, 0, 0, 0], [0, 1.0, 0, 0], [0, 0, 0, 1.0], [0, 0, 1.0, 0]])
    s = group_scores(img, txt, [0, 1, 2, 3], ["a", "a", "b", "b"])
    assert s["group_image_retrieval_acc"] == 0.5
    # Group sums of (hit - 0.5): +1 and -1; sqrt(2 / 1 * 2) / 4 = 0.5.
    assert s["group_image_retrieval_stderr"] == pytest.approx(0.5)


def test_retrieval_recall_gets_its_standard_error_by_group_when_texts_come_in_groups():
    from flameclip.evaluate.metrics import retrieval_metrics

    # Four images; texts 0-1 (group a) find their images, texts 2-3 (group b) each prefer the other's.
    img = torch.eye(4)
    txt = torch.stack([img[0], img[1], img[3], img[2]])
    plain = retrieval_metrics(img, txt, [0, 1, 2, 3], ks=(1,))
    assert plain["image_retrieval_recall@1"] == 0.5 and not any(k.endswith("_stderr") for k in plain)
    m = retrieval_metrics(img, txt, [0, 1, 2, 3], ks=(1,), text_groups=["a", "a", "b", "b"])
    # two clusters whose means are 1 and 0: the s.e. of their mean, 0.5, against 0.29 for four independent texts
    assert m["image_retrieval_recall@1_stderr"] == pytest.approx(0.5)
    with pytest.raises(ValueError, match="text_groups"):
        retrieval_metrics(img, txt, [0, 1, 2, 3], text_groups=["a"])
