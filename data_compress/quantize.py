"""Dataset quantization (Zhou et al., ICCV 2023): GraphCut bins per class, uniform draws per bin.

Uniform sampling keeps the bulk of a class and misses its rare modes; a coreset alone keeps the
modes but one greedy pass is biased to its objective. DQ splits every class into ``n_bins``
GraphCut bins (each diverse and representative of what the earlier bins left, see
:mod:`data_compress.graphcut`) and draws the same fraction uniformly from each, so every
region of the class keeps its share.
"""

from __future__ import annotations

import numpy as np

from data_compress.graphcut import graphcut_bins

EXACT_LIMIT = 20_000  # class size above which method="auto" builds k-NN bins


def check_ratio(ratio: float) -> None:
    """Raise ValueError unless 0 < ratio <= 1 (NaN and non-numbers included)."""
    if not (isinstance(ratio, (int, float)) and 0 < ratio <= 1):
        raise ValueError(f"ratio must be in (0, 1], got {ratio!r}")


def class_targets(labels: np.ndarray, ratio: float) -> dict:
    """Samples kept per class: round(ratio * n_c), at least one. Raises on a bad ratio."""
    check_ratio(ratio)
    classes, counts = np.unique(labels, return_counts=True)
    return {c: max(1, int(np.floor(ratio * n + 0.5))) for c, n in zip(classes.tolist(),
                                                                     counts.tolist())}


def split_quota(total: int, sizes: list[int]) -> list[int]:
    """Share ``total`` among parts proportionally to ``sizes`` (largest remainder, ties to the
    earlier part); a part never gets more than it holds, since total <= sum(sizes)."""
    n = sum(sizes)
    exact = [total * s / n for s in sizes]
    quota = [int(e) for e in exact]
    order = sorted(range(len(sizes)), key=lambda i: (-(exact[i] - quota[i]), i))
    for i in order[:total - sum(quota)]:
        quota[i] += 1
    return quota


def quantize(features: np.ndarray, labels: np.ndarray, ratio: float, *, n_bins: int = 10,
             seed: int = 0, method: str = "auto", k: int = 32) -> np.ndarray:
    """Indices (sorted, int64) of the kept samples: per class, ``class_targets`` of them.

    features: (n, d) float; labels: (n,) any sortable class ids; method: "exact", "knn" or
    "auto" (exact up to ``EXACT_LIMIT`` samples per class). Deterministic given ``seed``.
    """
    features, labels = np.asarray(features), np.asarray(labels)
    if features.ndim != 2 or len(features) != len(labels):
        raise ValueError(f"features must be (n, d) with n = len(labels) = {len(labels)}, "
                         f"got {features.shape}")
    if method not in ("auto", "exact", "knn"):
        raise ValueError(f"method must be 'auto', 'exact' or 'knn', got {method!r}")
    targets = class_targets(labels, ratio)
    kept = []
    for c_index, (c, target) in enumerate(sorted(targets.items())):
        members = np.flatnonzero(labels == c)
        how = method if method != "auto" else (
            "exact" if len(members) <= EXACT_LIMIT else "knn")
        bins = graphcut_bins(features[members], min(n_bins, len(members)), method=how, k=k)
        rng = np.random.default_rng([seed, c_index])
        for b, q in zip(bins, split_quota(target, [len(b) for b in bins])):
            kept.append(members[np.sort(b)[rng.permutation(len(b))[:q]]])
    return np.sort(np.concatenate(kept)).astype(np.int64)
