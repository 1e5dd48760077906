"""
Evaluation metrics on precomputed embeddings / logits.

The numbers follow clip_benchmark (v1.6) so that results are comparable with
published CLIP-style evaluations:

- retrieval_metrics: its zeroshot_retrieval.evaluate. recall@k is the CLIP-paper
  version: a query scores 1 if *any* of its positives is among the top-k
  candidates, else 0, averaged over queries.
- zero_shot_metrics: its zeroshot_classification.evaluate (top-k accuracy and
  mean per-class recall, a.k.a. balanced accuracy).
- linear_probe: same protocol (pick the regularisation on a validation split,
  refit, test), but with scikit-learn's L-BFGS logistic regression instead of
  clip_benchmark's AdamW-trained torch linear layer; see its docstring.

Everything takes torch tensors and returns plain python floats, so the results
can go straight into JSON.
"""

import warnings

import numpy as np
import torch

# -----------------------------------------------------------------------------
# retrieval


# Scores this close count as a tie: identical embeddings do not always give bit-identical dot
# products on a CPU (the kernel's summation order depends on the column and the batch size).
TIE_TOLERANCE = 1e-6


def _tie_counts(scores, positives):
    """
    For each row of scores [B, N] and boolean mask positives [B, N] (every row has at least one
    positive), three counts [B] about the best-scoring positive's score s: candidates scoring
    above s, negatives tied with s and positives tied with s (within ``TIE_TOLERANCE``).
    """
    best_pos = scores.masked_fill(~positives, float("-inf")).amax(dim=1, keepdim=True)
    tied = (scores - best_pos).abs() <= TIE_TOLERANCE
    above = scores > best_pos + TIE_TOLERANCE
    return above.sum(dim=1), (tied & ~positives).sum(dim=1), (tied & positives).sum(dim=1)


def _recall_at(above, tied_negatives, tied_positives, k: int):
    """
    Per query, the chance that a positive is among the top ``k`` when exact ties are put in a
    random order: 1 or 0 without ties, what clip_benchmark's torch.topk + one_hot gives (for any k:
    one larger than the candidates counts everything as retrieved instead of raising).

    With ``a`` candidates above, ``t`` negatives and ``p`` positives tied, the ``m = k - a`` places
    left go to the tied block, and no positive gets one with probability C(t, m) / C(t + p, m).
    Ties are not rare by accident here: the CLIP baseline's text tower cuts captions at 77 tokens,
    so captions that differ only after that are one embedding, and an image must not find "its"
    caption among four identical ones every time (a win for the positive), nor never (a loss).
    """
    m = k - above
    t, p = tied_negatives.double(), tied_positives.double()
    miss = torch.ones(above.shape, dtype=torch.float64, device=above.device)
    for i in range(max(int(m.max().item()), 0) if m.numel() else 0):
        step = (t - i).clamp(min=0) / (t + p - i).clamp(min=1)
        miss = torch.where(m > i, miss * step, miss)
    return torch.where(m <= 0, torch.zeros_like(miss), 1.0 - miss)


@torch.no_grad()
def retrieval_metrics(image_features, text_features, text_to_image, ks=(1, 5, 10), *, chunk_size=1024,
                      text_groups=None):
    """
    Image<->text retrieval recall@k, as clip_benchmark's zeroshot_retrieval.

    image_features: [Ni, E], text_features: [Nt, E], both L2-normalised (the score
        is their plain dot product; nothing is renormalised here).
    text_to_image: integer tensor [Nt], the index of each text's image. An image
        may have several texts but must have at least one.
    ks: the k's of recall@k. k > number of candidates is clipped to that number
        (so that recall is 1.0), where clip_benchmark's torch.topk would raise.
    chunk_size: queries scored at once, so memory is chunk_size x N, not Nt x Ni.
    text_groups: optional, one label per text: texts of one label are not independent draws (the
        captions of a hard-negative group), and each text->image recall@k gets its standard error
        by group as well, "image_retrieval_recall@k_stderr" (see ``cluster_stderr``).

    Returns {"image_retrieval_recall@k": ..., "text_retrieval_recall@k": ...} per k:
        image retrieval = text query -> images, averaged over texts;
        text retrieval  = image query -> texts, averaged over images.
    """
    if image_features.ndim != 2 or text_features.ndim != 2:
        raise ValueError("image_features and text_features must be 2-D [N, E]")
    if image_features.shape[1] != text_features.shape[1]:
        raise ValueError(
            f"embedding sizes differ: images {image_features.shape[1]}, texts {text_features.shape[1]}"
        )
    n_images, n_texts = image_features.shape[0], text_features.shape[0]
    if n_texts == 0:
        raise ValueError("retrieval needs at least one text (and one image)")
    text_to_image = torch.as_tensor(text_to_image).long().to(image_features.device)
    if text_to_image.shape != (n_texts,):
        raise ValueError(f"text_to_image must have shape [{n_texts}], got {list(text_to_image.shape)}")
    if n_texts and (text_to_image.min() < 0 or text_to_image.max() >= n_images):
        raise ValueError(f"text_to_image has indices outside [0, {n_images})")
    texts_per_image = torch.bincount(text_to_image, minlength=n_images)
    n_lonely = int((texts_per_image == 0).sum())
    if n_lonely:
        # clip_benchmark would divide by zero positives (nan recall, counted as a miss);
        # that is a bug in the caller's data, so say so instead.
        raise ValueError(f"{n_lonely} of {n_images} images have no text in text_to_image")
    text_features = text_features.to(image_features.device)

    # text -> image: one positive image per text
    text_ranks = []
    for start in range(0, n_texts, chunk_size):
        t2i = text_to_image[start:start + chunk_size]
        scores = text_features[start:start + chunk_size] @ image_features.T  # [B, Ni]
        positives = torch.zeros_like(scores, dtype=torch.bool)
        positives[torch.arange(len(t2i), device=scores.device), t2i] = True
        text_ranks.append(_tie_counts(scores, positives))
    text_ranks = [torch.cat(c) for c in zip(*text_ranks)]

    # image -> text: every caption of the image is a positive
    image_ranks = []
    for start in range(0, n_images, chunk_size):
        image_ids = torch.arange(start, min(start + chunk_size, n_images), device=image_features.device)
        scores = image_features[image_ids] @ text_features.T  # [B, Nt]
        positives = image_ids[:, None] == text_to_image[None, :]
        image_ranks.append(_tie_counts(scores, positives))
    image_ranks = [torch.cat(c) for c in zip(*image_ranks)]

    if text_groups is not None and len(text_groups) != n_texts:
        raise ValueError(f"text_groups must name the group of each of the {n_texts} texts, got {len(text_groups)}")
    metrics = {}
    for k in ks:
        hits = _recall_at(*text_ranks, k)
        metrics[f"image_retrieval_recall@{k}"] = hits.mean().item()
        metrics[f"text_retrieval_recall@{k}"] = _recall_at(*image_ranks, k).mean().item()
        if text_groups is not None and (se := cluster_stderr(hits.cpu().numpy(), text_groups)) is not None:
            metrics[f"image_retrieval_recall@{k}_stderr"] = se
    return metrics


# -----------------------------------------------------------------------------
# classification


def mean_per_class_recall(predictions, targets):
    """
    Recall of each class that occurs in targets, averaged over those classes: sklearn's
    balanced_accuracy_score, which clip_benchmark reports as "mean_per_class_recall". Classes
    only ever predicted, never true, are ignored.
    """
    import warnings

    from sklearn.metrics import balanced_accuracy_score

    with warnings.catch_warnings():
        # sklearn warns when a predicted class never occurs in targets; ignoring it is the definition
        warnings.simplefilter("ignore", UserWarning)
        return float(balanced_accuracy_score(torch.as_tensor(targets).cpu().numpy(),
                                             torch.as_tensor(predictions).cpu().numpy()))


@torch.no_grad()
def zero_shot_metrics(logits, targets, ks=(1, 5)):
    """
    Single-label classification metrics from logits, as clip_benchmark's
    zeroshot_classification.evaluate.

    logits: [N, C], targets: integer tensor [N] with values in [0, C).
    Returns {"acc1": ..., "acc5": ..., "mean_per_class_recall": ...} (one "acc{k}"
    per k): acc{k} is the fraction of samples whose target is among the k highest
    logits. With fewer than k classes, k is clipped to C (so acc5 is 1.0 with 3
    classes); clip_benchmark instead reports acc5 = nan when there are < 5 classes.
    """
    if logits.ndim != 2:
        raise ValueError(f"logits must be [N, C], got {list(logits.shape)}")
    targets = torch.as_tensor(targets).long().to(logits.device)
    n, n_classes = logits.shape
    if targets.shape != (n,):
        raise ValueError(f"targets must have shape [{n}], got {list(targets.shape)}")
    if n == 0:
        raise ValueError("no samples")
    if targets.min() < 0 or targets.max() >= n_classes:
        raise ValueError(f"targets outside [0, {n_classes})")

    # torch.topk, like clip_benchmark, so that even tie-breaking matches
    top = logits.topk(min(max(ks), n_classes), dim=1).indices  # [N, kmax], best first
    correct = top == targets[:, None]
    metrics = {}
    for k in ks:
        metrics[f"acc{k}"] = correct[:, :k].any(dim=1).sum().item() / n
    metrics["mean_per_class_recall"] = mean_per_class_recall(logits.argmax(dim=1), targets)
    return metrics


# -----------------------------------------------------------------------------
# linear probe


def _split_train_val(labels, val_fraction, seed):
    """Seeded train/val split of indices, stratified by class when every class can afford it."""
    from sklearn.model_selection import train_test_split

    idx = np.arange(len(labels))
    _, counts = np.unique(labels, return_counts=True)
    n_val = int(np.ceil(val_fraction * len(labels)))
    # stratifying needs >= 2 samples per class and room for every class on both sides
    stratify = labels if counts.min() >= 2 and len(counts) <= min(n_val, len(labels) - n_val) else None
    train_idx, val_idx = train_test_split(idx, test_size=val_fraction, random_state=seed, stratify=stratify)
    return np.sort(train_idx), np.sort(val_idx)


def _val_acc1(fit_x, fit_y, val_x, val_y, C, max_iter, seed) -> float:
    return float((_fit(fit_x, fit_y, C, max_iter, seed).predict(val_x) == val_y).mean())


def _fit(features, labels, C, max_iter, seed):
    """Standardise, then L2-regularised multinomial logistic regression (L-BFGS)."""
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    # standardising puts every feature on the same scale, so that one C grid suits any encoder
    model = make_pipeline(StandardScaler(), LogisticRegression(C=C, max_iter=max_iter, random_state=seed))
    with warnings.catch_warnings():
        # large C on (nearly) separable data has its optimum at infinity: L-BFGS running
        # out of iterations there is expected and harmless for accuracy
        warnings.simplefilter("ignore", ConvergenceWarning)
        model.fit(features, labels)
    return model


def _to_numpy(x, dtype):
    return torch.as_tensor(x).detach().cpu().numpy().astype(dtype)


def linear_probe(
    train_features, train_labels, test_features, test_labels,
    *, val_fraction=0.2, lambdas=None, seed=0, max_iter=1000, jobs=None,
):
    """
    Linear probe on frozen features.

    1. Split the train set (seeded, stratified when possible) into fit / val parts.
    2. For each C in lambdas, fit on the fit part and measure val top-1 accuracy.
    3. Refit on the whole train set with the best C; report test accuracy.

    lambdas: grid of scikit-learn inverse regularisation strengths C (= 1/lambda,
        larger C = weaker L2 penalty); default 10**linspace(-6, 2, 9). Ties in val
        accuracy go to the larger C, as clip_benchmark's sweep keeps the smallest
        weight decay among ties.

    Relation to clip_benchmark's linear_probe: it trains a torch nn.Linear with
    AdamW (fixed lr / epochs, cosine schedule, GPU only) and searches the weight
    decay over logspace(-6, 2) with a coarse-to-fine sweep on a given val set. We
    use the OpenAI CLIP paper's original recipe instead: scikit-learn's L-BFGS
    logistic regression (multinomial, L2) on standardised features, with a plain
    grid over C on a held-out part of the train set. It is deterministic, has no
    lr / epoch knobs and runs on CPU; numbers are close but not identical.

    The fits of the grid are independent: ``jobs`` processes (default: one per CPU core, at most
    one per C) run them side by side through joblib. Each fit is deterministic, so the result is
    the same for any ``jobs``.

    Returns {"acc1", "mean_per_class_recall", "best_C", "val_acc1_per_C": {C: acc},
             "n_train", "n_test"}.
    """
    if not 0.0 < val_fraction < 1.0:
        raise ValueError(f"val_fraction must be in (0, 1), got {val_fraction}")
    X_train, y_train = _to_numpy(train_features, np.float64), _to_numpy(train_labels, np.int64)
    X_test, y_test = _to_numpy(test_features, np.float64), _to_numpy(test_labels, np.int64)
    if len(X_train) != len(y_train) or len(X_test) != len(y_test):
        raise ValueError("features and labels have different lengths")
    if len(np.unique(y_train)) < 2:
        raise ValueError("the train set needs at least 2 classes")
    grid = [float(c) for c in (10.0 ** np.linspace(-6, 2, 9) if lambdas is None else lambdas)]
    if not grid:
        raise ValueError("lambdas is empty")

    fit_idx, val_idx = _split_train_val(y_train, val_fraction, seed)
    from joblib import Parallel, cpu_count, delayed

    jobs = min(len(grid), jobs or cpu_count())  # joblib's count follows CPU affinity and container quotas
    accs = Parallel(n_jobs=jobs)(delayed(_val_acc1)(X_train[fit_idx], y_train[fit_idx], X_train[val_idx],
                                                    y_train[val_idx], C, max_iter, seed) for C in grid)
    val_acc1_per_C = dict(zip(grid, accs))
    best_acc = max(val_acc1_per_C.values())
    best_C = max(C for C, acc in val_acc1_per_C.items() if acc == best_acc)

    model = _fit(X_train, y_train, best_C, max_iter, seed)
    pred = model.predict(X_test)
    return {
        "acc1": float((pred == y_test).mean()),
        "mean_per_class_recall": mean_per_class_recall(torch.from_numpy(pred), torch.from_numpy(y_test)),
        "best_C": best_C,
        "val_acc1_per_C": val_acc1_per_C,
        "n_train": int(len(y_train)),
        "n_test": int(len(y_test)),
    }


def cluster_stderr(values, clusters) -> float | None:
    """One standard error of the mean of ``values`` when they come in correlated clusters.

    The captions of one hard-negative group describe scenes that share all but one object, so their
    hits are not independent draws and sqrt(p (1 - p) / n) understates the noise. This is the
    cluster-robust estimate sqrt(G / (G - 1) * sum_g (sum_{i in g} (v_i - mean))^2) / n over the G
    clusters; with one value per cluster it is the sample standard deviation over sqrt(n). None
    with fewer than two clusters.
    """
    v = np.asarray(values, dtype=np.float64)
    _, cluster = np.unique(np.asarray(clusters, dtype=object).astype(str), return_inverse=True)
    g = int(cluster.max()) + 1 if len(v) else 0
    if g < 2:
        return None
    sums = np.bincount(cluster, weights=v - v.mean(), minlength=g)
    return float(np.sqrt(g / (g - 1) * np.sum(sums ** 2)) / len(v))


def group_scores(image_features, text_features, text_to_image, image_groups) -> dict:
    """Hard-negative group scores: each query is scored only against the images of its own group.

    ``image_groups[i]`` names the group of image i. Text->image: does the caption pick its own image
    among its group's images? Image->text: does the image pick one of its own captions among its
    group's captions? Chance is the mean over queries of 1 / (group size). A model whose text side
    cannot tell the group's captions apart (CLIP past its 77-token context) sits at chance.
    """
    text_to_image = torch.as_tensor(text_to_image).long()
    members: dict[str, list[int]] = {}
    for i, g in enumerate(image_groups):
        members.setdefault(g, []).append(i)
    img, txt = image_features.float().cpu(), text_features.float().cpu()
    t2i_hits, t2i_chance = [], []
    for t in range(len(txt)):
        own = int(text_to_image[t])
        cand = members[image_groups[own]]
        scores = img[cand] @ txt[t]
        t2i_hits.append(float(cand[int(scores.argmax())] == own))
        t2i_chance.append(1.0 / len(cand))
    texts_of: dict[int, list[int]] = {}
    for t, i in enumerate(text_to_image.tolist()):
        texts_of.setdefault(i, []).append(t)
    i2t_hits, i2t_chance = [], []
    for i in range(len(img)):
        cand = [t for j in members[image_groups[i]] for t in texts_of.get(j, [])]
        scores = txt[cand] @ img[i]
        i2t_hits.append(float(text_to_image[cand[int(scores.argmax())]] == i))
        i2t_chance.append(len(texts_of.get(i, [])) / len(cand))
    mean = lambda xs: sum(xs) / len(xs)  # noqa: E731
    out = {"group_image_retrieval_acc": mean(t2i_hits), "group_text_retrieval_acc": mean(i2t_hits),
           "group_image_retrieval_chance": mean(t2i_chance), "group_text_retrieval_chance": mean(i2t_chance)}
    se = cluster_stderr(t2i_hits, [image_groups[int(i)] for i in text_to_image])
    if se is not None:  # the text->image score's noise, by group (see cluster_stderr)
        out["group_image_retrieval_stderr"] = se
    return out
