"""Centring stored LLM states: one mean for the whole store, or one per prompt facet.

A store row is one facet of one prompt set (the raw column's single prompt, facet 3 of long7, ...).
Every facet adds its own offset to the states, so "prompt" centring takes the mean of each facet
over the store and subtracts it from that facet's rows. Rows of two columns embedded with the same
prompt set share a facet, and so a mean: a query only says which prompt set it was encoded with.
"""

from __future__ import annotations

import numpy as np
import torch

from ..config import WHITENING_COVARIANCES


def row_facets(store) -> list[str]:
    """The facet of every store row, as "set:index" (e.g. ["single:0", "long7:0", ..., "long7:6"])."""
    sets = store.fingerprint.get("prompt_sets", {})
    names = [""] * store.num_rows
    for column, (lo, hi) in store.columns.items():
        name = sets.get(column, {}).get("name", column)
        for k in range(hi - lo):
            names[lo + k] = f"{name}:{k}"
    return names


def facet_sets(facets: list[str]) -> list[str]:
    """The prompt sets of "set:index" facet names, in order of first appearance (["single", "long3"])."""
    return list(dict.fromkeys(f.rsplit(":", 1)[0] for f in facets))


def sample_ids(store, seed: int = 0, max_samples: int = 4096) -> list[str]:
    """All ids, or a seeded sample of ``max_samples`` of them in store order."""
    ids = list(store.ids())
    if len(ids) > max_samples:
        g = torch.Generator().manual_seed(seed)
        ids = [ids[i] for i in sorted(torch.randperm(len(ids), generator=g)[:max_samples].tolist())]
    return ids


def store_means(store, seed: int = 0, max_samples: int = 4096) -> tuple[torch.Tensor, list[str], torch.Tensor]:
    """(mean of all rows [D], facet names [F], mean of each facet [F, D]) over (a sample of) the store."""
    rows = store.get_many(sample_ids(store, seed, max_samples))  # [N, R, D]
    facets = row_facets(store)
    names = list(dict.fromkeys(facets))
    per_row = rows.mean(axis=0)  # [R, D]
    means = np.stack([per_row[[i for i, f in enumerate(facets) if f == n]].mean(axis=0) for n in names])
    return torch.from_numpy(rows.reshape(-1, rows.shape[-1]).mean(axis=0)), names, torch.from_numpy(means)


def whitening_matrix(spread: np.ndarray, power: float, shrink: float = 1e-2) -> np.ndarray:
    """The symmetric matrix ``spread ** (-power / 2)`` ([D, D], float64), its eigenvalues floored at
    ``shrink`` times their mean first, so directions with almost no variance are not blown up into noise."""
    eigval, eigvec = np.linalg.eigh(spread)
    eigval = np.maximum(eigval, shrink * max(eigval.mean(), 1e-12))
    return (eigvec * eigval ** (-power / 2)) @ eigvec.T


def store_whitening(store, power: float, facet_names: list[str] | None = None,
                    facet_means: torch.Tensor | None = None, mean: torch.Tensor | None = None,
                    seed: int = 0, max_samples: int = 4096, shrink: float = 1e-2,
                    rms: float | None = None, covariance: str = "total") -> torch.Tensor:
    """A symmetric [D, D] matrix W with x @ W the centred state x whitened to ``power`` (0..1).

    Fitted on the rows of (a sample of) the store, each centred as the model centres it (its facet's
    mean with "prompt" centring, else ``mean``). ``covariance`` says whose spread is equalised:
    "total", that of all centred rows; "within-image", that of each row about the mean of its own
    image's rows (its captions and facets), so the directions where one image's texts disagree are
    damped and those they share weigh more (``whitening_matrix``, with its floor ``shrink``). W is scaled so that an average row keeps its norm (cosines do not care; the logit scale's
    initial value stays meaningful for the loss), or, with ``rms``, so that a row has that
    root-mean-square per dimension (what a text adapter's residual branch is measured against).
    """
    if covariance not in WHITENING_COVARIANCES:
        raise ValueError(f"covariance must be one of {WHITENING_COVARIANCES}, got {covariance!r}")
    rows = store.get_many(sample_ids(store, seed, max_samples)).astype(np.float64)  # [N, R, D]
    if facet_means is not None:
        index = {n: i for i, n in enumerate(facet_names)}
        rows = rows - facet_means.double().numpy()[[index[f] for f in row_facets(store)]]
    else:
        rows = rows - mean.double().numpy()
    x = rows.reshape(-1, rows.shape[-1])
    cov = x.T @ x / len(x)
    spread = cov
    if covariance == "within-image":
        if rows.shape[1] < 2:
            raise ValueError(f"whitening within an image needs several rows per image (captions or facets); "
                             f"{store.root} holds {rows.shape[1]}: use text_whiten_covariance=\"total\"")
        y = (rows - rows.mean(axis=1, keepdims=True)).reshape(-1, rows.shape[-1])
        spread = y.T @ y / len(y)
    w = whitening_matrix(spread, power, shrink)
    target = np.trace(cov) if rms is None else rms ** 2 * cov.shape[0]
    w *= np.sqrt(target / np.trace(w @ cov @ w))
    return torch.from_numpy(w.astype(np.float32))


class CenteredStore:
    """A read-only view of an EmbeddingStore whose rows come back minus their facet's mean."""

    def __init__(self, store, facet_names: list[str], facet_means: torch.Tensor):
        self.store = store
        index = {n: i for i, n in enumerate(facet_names)}
        self.row_means = facet_means.numpy()[[index[f] for f in row_facets(store)]].astype(np.float32)  # [R, D]

    def __getattr__(self, name):  # everything but the reads: columns, ids(), fingerprint, dim, root, ...
        return getattr(self.store, name)

    def __contains__(self, sample_id) -> bool:
        return sample_id in self.store

    def __len__(self) -> int:
        return len(self.store)

    def get(self, sample_id: str) -> np.ndarray:
        return self.store.get(sample_id) - self.row_means

    def get_many(self, sample_ids) -> np.ndarray:
        return self.store.get_many(sample_ids) - self.row_means

    def get_column(self, sample_id: str, column: str) -> np.ndarray:
        lo, hi = self.store.columns[column]
        return self.store.get_column(sample_id, column) - self.row_means[lo:hi]
