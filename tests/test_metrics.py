import math
import warnings

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from flameclip.evaluate.metrics import linear_probe, retrieval_metrics, zero_shot_metrics

# -----------------------------------------------------------------------------
# retrieval


def _captioned_embeddings(seed=0, n_images=30, dim=16, noise=1.0):
    """
    Ni=30 images with 2 or 3 captions each (75 texts, shuffled), captions = image + noise.
    A few captions are exact copies of another caption of the same image; such ties
    are between positives of the same query, so every tie-breaking gives the same recall.
    """
    g = torch.Generator().manual_seed(seed)
    images = F.normalize(torch.randn(n_images, dim, generator=g), dim=-1)
    n_captions = torch.tensor([3] * 15 + [2] * 15)[torch.randperm(n_images, generator=g)]
    text_to_image = torch.repeat_interleave(torch.arange(n_images), n_captions)
    text_to_image = text_to_image[torch.randperm(len(text_to_image), generator=g)]
    texts = F.normalize(images[text_to_image] + noise * torch.randn(len(text_to_image), dim, generator=g), dim=-1)
    for a in range(3):  # duplicate a few captions
        b = int(torch.nonzero(text_to_image == text_to_image[a])[-1])
        assert b != a
        texts[b] = texts[a]
    return images, texts, text_to_image


def _clip_benchmark_recalls(images, texts, text_to_image, ks):
    """What clip_benchmark.metrics.zeroshot_retrieval.evaluate computes from the embeddings."""
    from clip_benchmark.metrics import zeroshot_retrieval as zr  # a dependency: never skipped
    scores = texts @ images.t()
    positive_pairs = torch.zeros_like(scores, dtype=bool)
    positive_pairs[torch.arange(len(scores)), text_to_image] = True
    out = {}
    for k in ks:
        out[f"image_retrieval_recall@{k}"] = (zr.recall_at_k(scores, positive_pairs, k) > 0).float().mean().item()
        out[f"text_retrieval_recall@{k}"] = (zr.recall_at_k(scores.T, positive_pairs.T, k) > 0).float().mean().item()
    return out


def test_retrieval_matches_clip_benchmark():
    images, texts, text_to_image = _captioned_embeddings()
    assert len(texts) == 75
    ours = retrieval_metrics(images, texts, text_to_image, ks=(1, 5, 10))
    theirs = _clip_benchmark_recalls(images, texts, text_to_image, ks=(1, 5, 10))
    assert set(ours) == set(theirs)
    for key in theirs:
        assert ours[key] == pytest.approx(theirs[key], abs=1e-7), key
    # the data is neither trivial nor hopeless, otherwise the comparison says little
    assert 0.1 < ours["image_retrieval_recall@1"] < 0.9
    assert 0.1 < ours["text_retrieval_recall@1"] < 0.9
    # chunking the queries changes nothing
    assert retrieval_metrics(images, texts, text_to_image, ks=(1, 5, 10), chunk_size=7) == ours


def test_retrieval_matches_clip_benchmark_evaluate_end_to_end():
    """Run clip_benchmark's own evaluate() on a fake model that returns our embeddings."""
    from clip_benchmark.metrics import zeroshot_retrieval as zr  # a dependency: never skipped
    images, texts, text_to_image = _captioned_embeddings(seed=1)
    # evaluate() assigns texts to images in dataloader order, so group the texts by image
    order = torch.argsort(text_to_image, stable=True)
    texts, text_to_image = texts[order], text_to_image[order]
    captions = [[f"{t}" for t in torch.nonzero(text_to_image == i).flatten().tolist()] for i in range(len(images))]

    class FakeModel:
        def encode_image(self, ids):
            return images[ids]

        def encode_text(self, ids):
            return texts[ids]

    def tokenizer(strings):
        return torch.tensor([int(s) for s in strings])

    dataset = list(zip(range(len(images)), captions))
    loader = torch.utils.data.DataLoader(
        dataset, batch_size=8, collate_fn=lambda b: (torch.tensor([x for x, _ in b]), [y for _, y in b])
    )
    theirs = zr.evaluate(FakeModel(), loader, tokenizer, "cpu", amp=False, recall_k_list=[1, 5, 10])
    ours = retrieval_metrics(images, texts, text_to_image, ks=(1, 5, 10))
    for key in theirs:
        assert ours[key] == pytest.approx(theirs[key], abs=1e-7), key


def test_retrieval_identity_is_perfect():
    eye = torch.eye(5)
    out = retrieval_metrics(eye, eye, torch.arange(5), ks=(1, 5, 10))
    assert all(v == 1.0 for v in out.values())
    assert len(out) == 6


def test_retrieval_hand_made_ranks():
    # 6 one-hot images; text i is image i, except text 0 = 3*e1 + 2*e2 + e0 (normalised),
    # so for text 0 its image 0 comes 3rd, after images 1 and 2.
    images = torch.eye(6)
    texts = torch.eye(6)
    texts[0] = F.normalize(torch.tensor([1.0, 3.0, 2.0, 0, 0, 0]), dim=0)
    out = retrieval_metrics(images, texts, torch.arange(6), ks=(1, 2, 3, 5, 10))
    assert out["image_retrieval_recall@1"] == pytest.approx(5 / 6)
    assert out["image_retrieval_recall@2"] == pytest.approx(5 / 6)
    assert out["image_retrieval_recall@3"] == 1.0
    assert out["image_retrieval_recall@5"] == 1.0
    assert out["image_retrieval_recall@10"] == 1.0  # k > 6 candidates: clipped
    # each image's own text scores 1 (text 0 is image 0's only text and beats the zeros)
    assert all(out[f"text_retrieval_recall@{k}"] == 1.0 for k in (1, 2, 3, 5, 10))


def test_retrieval_several_captions_any_positive_counts():
    # image 0 has two texts: one far away, one exact; image 1 has one exact text.
    images = torch.eye(2)
    texts = torch.tensor([[0.0, 1.0], [1.0, 0.0], [0.0, 1.0]])
    out = retrieval_metrics(images, texts, torch.tensor([0, 0, 1]), ks=(1,))
    # texts: text 0 ranks image 1 first -> miss; others hit
    assert out["image_retrieval_recall@1"] == pytest.approx(2 / 3)
    # images: image 0's best text is text 1 (exact) -> hit; image 1 -> text 2, tied with text 0,
    # which is not its positive: in a random order of the tie it comes first half the time
    assert out["text_retrieval_recall@1"] == pytest.approx((1 + 1 / 2) / 2)


def test_retrieval_ties_are_broken_at_random_not_for_the_positive():
    # The CLIP baseline's view of a hard-negative group: four captions that differ only after the
    # 77th token are one embedding. Every image sees its own caption tied with three others.
    images = F.normalize(torch.tensor([[1.0, 0.1], [1.0, 0.2], [1.0, 0.3], [1.0, 0.4]]), dim=-1)
    texts = F.normalize(torch.tensor([[1.0, 1.0]] * 4), dim=-1)
    out = retrieval_metrics(images, texts, torch.arange(4), ks=(1, 2, 3, 4))
    for k in (1, 2, 3, 4):
        assert out[f"text_retrieval_recall@{k}"] == pytest.approx(k / 4)  # not 1.0 (the positive always first)
    # text -> image: the four texts rank the images alike (image 3 first, no ties): one hit at R@1
    assert out["image_retrieval_recall@1"] == pytest.approx(1 / 4)
    assert out["image_retrieval_recall@2"] == pytest.approx(2 / 4)
    # the same embedding can come out of a CPU kernel a few ulps apart: still a tie
    from flameclip.evaluate.metrics import _tie_counts

    above, tied_neg, tied_pos = _tie_counts(torch.tensor([[0.5, 0.5 + 2e-7, 0.4, 0.6]]),
                                            torch.tensor([[True, False, False, False]]))
    assert (above.item(), tied_neg.item(), tied_pos.item()) == (1, 1, 1)
    with pytest.raises(ValueError, match="at least one text"):
        retrieval_metrics(images, texts[:0], torch.arange(0), ks=(1,))


def test_retrieval_tie_probabilities_by_hand():
    from flameclip.evaluate.metrics import _recall_at

    above, neg, pos = (torch.tensor(v) for v in ([0, 0, 0, 1, 2, 0], [3, 3, 2, 2, 0, 0], [1, 1, 2, 2, 1, 1]))
    # 3 negatives and 1 positive tied first: k=1 -> 1/4; k=2 -> 1 - (3/4)(2/3) = 1/2
    # 2 and 2 tied first: k=1 -> 1 - 2/4 = 1/2; one candidate above, then 2 and 2: k=2 -> 1/2
    # two above and no tie: k=1 -> 0, k=2 -> 0, k=3 -> 1; nothing above, no tie: always 1
    assert _recall_at(above, neg, pos, 1).tolist() == pytest.approx([1 / 4, 1 / 4, 1 / 2, 0, 0, 1])
    assert _recall_at(above, neg, pos, 2).tolist() == pytest.approx([1 / 2, 1 / 2, 5 / 6, 1 / 2, 0, 1])
    assert _recall_at(above, neg, pos, 3).tolist() == pytest.approx([3 / 4, 3 / 4, 1, 5 / 6, 1, 1])


def test_retrieval_image_without_text_raises():
    images = F.normalize(torch.randn(4, 8), dim=-1)
    texts = F.normalize(torch.randn(5, 8), dim=-1)
    with pytest.raises(ValueError, match="2 of 4 images have no text"):
        retrieval_metrics(images, texts, torch.tensor([0, 0, 1, 1, 1]))
    with pytest.raises(ValueError, match="outside"):
        retrieval_metrics(images, texts, torch.tensor([0, 1, 2, 3, 4]))


# -----------------------------------------------------------------------------
# zero-shot classification


@pytest.mark.parametrize("drop_class", [False, True])
def test_zero_shot_matches_clip_benchmark(drop_class, monkeypatch):
    from clip_benchmark.metrics import zeroshot_classification as zc  # a dependency: never skipped
    from sklearn.metrics import balanced_accuracy_score

    # clip_benchmark 1.6's accuracy() does float() on a 1-element 1-D array, which numpy 2
    # refuses; shadow the builtin in its module only, so its own code runs unchanged
    monkeypatch.setattr(zc, "float", lambda a: float(np.asarray(a).item()), raising=False)

    g = torch.Generator().manual_seed(0)
    n, n_classes = 300, 12
    targets = torch.randint(0, n_classes, (n,), generator=g)
    if drop_class:  # a class that is predicted but never true: sklearn ignores it
        targets[targets == 3] = 4
    logits = 100.0 * torch.randn(n, n_classes, generator=g) + 150.0 * F.one_hot(targets, n_classes) * (
        torch.rand(n, 1, generator=g) < 0.3
    )
    ours = zero_shot_metrics(logits, targets)
    # as clip_benchmark's evaluate() calls them
    acc1, acc5 = zc.accuracy(logits, targets, topk=(1, 5))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "y_pred contains classes not in y_true"
        balanced = balanced_accuracy_score(targets, logits.argmax(axis=1))
    assert set(ours) == {"acc1", "acc5", "mean_per_class_recall"}
    assert ours["acc1"] == pytest.approx(acc1, abs=1e-12)
    assert ours["acc5"] == pytest.approx(acc5, abs=1e-12)
    assert ours["mean_per_class_recall"] == pytest.approx(balanced, abs=1e-12)
    assert 0.2 < ours["acc1"] < ours["acc5"] < 1.0
    assert ours["mean_per_class_recall"] != pytest.approx(ours["acc1"], abs=1e-6)


def test_zero_shot_hand_made():
    targets = torch.tensor([0, 1, 2, 0])
    logits = torch.tensor([
        [3.0, 2.0, 1.0],
        [1.0, 3.0, 2.0],
        [1.0, 2.0, 3.0],
        [2.0, 3.0, 1.0],  # target 0 comes 2nd
    ])
    out = zero_shot_metrics(logits, targets, ks=(1, 2, 5))
    assert out["acc1"] == 0.75
    assert out["acc2"] == 1.0
    assert out["acc5"] == 1.0  # only 3 classes: k clipped to 3
    assert out["mean_per_class_recall"] == pytest.approx((1 / 2 + 1 + 1) / 3)


# -----------------------------------------------------------------------------
# linear probe


def _blobs(n_per_blob, noise_seed, dim=20):
    """3 classes, each a mixture of two tight, well-separated Gaussian blobs (fixed centres)."""
    centres = np.random.default_rng(0).normal(size=(6, dim)) * 5.0
    blob = np.repeat(np.arange(6), n_per_blob)
    x = centres[blob] + np.random.default_rng(noise_seed).normal(size=(len(blob), dim))
    return torch.from_numpy(x).float(), torch.from_numpy(blob % 3)


def test_linear_probe_separable():
    x_train, y_train = _blobs(50, noise_seed=1)
    x_test, y_test = _blobs(40, noise_seed=2)
    out = linear_probe(x_train, y_train, x_test, y_test)
    assert out["acc1"] > 0.95
    assert out["mean_per_class_recall"] > 0.95
    assert out["n_train"] == 300 and out["n_test"] == 240
    grid = [float(c) for c in 10.0 ** np.linspace(-6, 2, 9)]
    assert out["best_C"] in grid
    assert sorted(out["val_acc1_per_C"]) == sorted(grid)
    assert out["val_acc1_per_C"][out["best_C"]] == max(out["val_acc1_per_C"].values())


def test_linear_probe_random_labels_is_near_chance():
    g = torch.Generator().manual_seed(0)
    x_train, x_test = torch.randn(300, 16, generator=g), torch.randn(300, 16, generator=g)
    y_train, y_test = torch.randint(0, 3, (300,), generator=g), torch.randint(0, 3, (300,), generator=g)
    out = linear_probe(x_train, y_train, x_test, y_test, lambdas=[1e-3, 1e-1, 10.0])
    assert out["acc1"] < 0.6
    assert out["best_C"] in (1e-3, 1e-1, 10.0)
    assert set(out["val_acc1_per_C"]) == {1e-3, 1e-1, 10.0}


def test_linear_probe_is_deterministic():
    g = torch.Generator().manual_seed(1)
    x = torch.randn(200, 8, generator=g)
    y = (x[:, 0] + 0.8 * torch.randn(200, generator=g) > 0).long() + (x[:, 1] > 1).long()
    a = linear_probe(x[:150], y[:150], x[150:], y[150:], seed=3)
    b = linear_probe(x[:150], y[:150], x[150:], y[150:], seed=3)
    assert a == b
    # The grid's fits run in parallel processes; one process gives every figure the same.
    assert linear_probe(x[:150], y[:150], x[150:], y[150:], seed=3, jobs=1) == \
        linear_probe(x[:150], y[:150], x[150:], y[150:], seed=3, jobs=2)
    assert 0.5 < a["acc1"] < 1.0  # a real, imperfect problem
    assert not math.isnan(a["mean_per_class_recall"])
