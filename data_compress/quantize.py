"""Dataset quantization (Zhou et al., ICCV 2023): GraphCut bins per class, uniform draws per bin.

Uniform sampling keeps the bulk of a class and misses its rare modes; a coreset alone keeps the
modes but one greedy pass is biased to its objective. DQ splits every class into ``n_bins``
GraphCut bins (each diverse and representative of what the earlier bins left, see
:mod:`distcomp.data.graphcut`) and draws the same fraction uniformly from each, so every
region of the class keeps its share.

Because every bin gives the same fraction, each sample is kept with probability ``ratio``, as
under random sampling; GraphCut bins are diverse by construction, so near neighbours fall into
different bins and the draw does not thin them out. ``binning="kmeans"`` is a variant (not the
paper's): compact bins from k-means, one per ``KMEANS_PER_BIN`` kept samples, so neighbours
share a bin and compete for its few draws - stratified sampling over the class's regions.
Neither beat random sampling on mnist1d's test set (README, "Dataset compression").
"""

from __future__ import annotations

from numbers import Integral

import numpy as np

from distcomp.data.graphcut import graphcut_bins
from distcomp.data.progress import bar

EXACT_LIMIT = 20_000  # class size above which method="auto" builds k-NN bins
GRAPHCUT_BINS = 10  # default bins per class for binning="graphcut"
KMEANS_PER_BIN = 3  # kept samples per k-means bin by default (chosen on the validation split)
BINNINGS = ("graphcut", "kmeans")


def check_ratio(ratio: float) -> None:
    """Raise ValueError unless 0 < ratio <= 1 (NaN and non-numbers included)."""
    if not (isinstance(ratio, (int, float)) and 0 < ratio <= 1):
        raise ValueError(f"ratio must be in (0, 1], got {ratio!r}")


def check_bins(n_bins: int | None, name: str = "n_bins") -> None:
    """Raise ValueError unless ``n_bins`` is None (the default count) or a positive integer."""
    if n_bins is not None and (isinstance(n_bins, bool) or not isinstance(n_bins, Integral)
                               or n_bins < 1):
        raise ValueError(f"{name} must be a positive integer, got {n_bins!r}")


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


def graphcut_method(method: str, class_size: int) -> str:
    """The GraphCut variant a class of ``class_size`` samples gets: ``method``, or for "auto"
    exact gains up to ``EXACT_LIMIT`` samples and the k-NN graph above."""
    if method != "auto":
        return method
    return "exact" if class_size <= EXACT_LIMIT else "knn"


def quantize(features: np.ndarray, labels: np.ndarray, ratio: float, *,
             n_bins: int | None = None, seed: int = 0, method: str = "auto", k: int = 32,
             binning: str = "graphcut", progress: bool = False) -> np.ndarray:
    """Indices (sorted, int64) of the kept samples: per class, ``class_targets`` of them.

    features: (n, d) float; labels: (n,) any sortable class ids. ``binning``: "graphcut" (the
    paper's DQ; ``method`` "exact", "knn" or "auto" = exact up to ``EXACT_LIMIT`` samples per
    class, ``k`` neighbours for knn) or "kmeans" (Euclidean k-means, faiss; cost grows as
    n_c * bins * d per iteration, so meant for classes up to ~1e5). ``n_bins`` per class,
    default ``GRAPHCUT_BINS``, or for k-means one bin per ``KMEANS_PER_BIN`` kept samples.
    Deterministic given ``seed``. ``progress``: a bar on stderr counting rows binned.
    """
    features, labels = np.asarray(features), np.asarray(labels)
    if features.ndim != 2 or len(features) != len(labels):
        raise ValueError(f"features must be (n, d) with n = len(labels) = {len(labels)}, "
                         f"got {features.shape}")
    if method not in ("auto", "exact", "knn"):
        raise ValueError(f"method must be 'auto', 'exact' or 'knn', got {method!r}")
    if binning not in BINNINGS:
        raise ValueError(f"binning must be one of {BINNINGS}, got {binning!r}")
    check_bins(n_bins)
    targets = class_targets(labels, ratio)
    kept = []
    desc = "k-means bins" if binning == "kmeans" else "GraphCut bins"
    with bar(len(labels), desc, progress, unit="row", scale=True) as rows:
        for c_index, (c, target) in enumerate(sorted(targets.items())):
            members = np.flatnonzero(labels == c)
            if binning == "kmeans":
                count = n_bins or max(1, round(target / KMEANS_PER_BIN))
                bins = kmeans_bins(features[members], min(count, len(members)), seed=seed)
                rows.update(len(members))
            else:
                bins = graphcut_bins(features[members],
                                     min(n_bins or GRAPHCUT_BINS, len(members)),
                                     method=graphcut_method(method, len(members)), k=k,
                                     tick=rows.update, progress=progress)
            rng = np.random.default_rng([seed, c_index])
            for b, q in zip(bins, split_quota(target, [len(b) for b in bins])):
                kept.append(members[np.sort(b)[rng.permutation(len(b))[:q]]])
    return np.sort(np.concatenate(kept)).astype(np.int64)


def kmeans_bins(features: np.ndarray, n_bins: int, *, seed: int = 0, niter: int = 20
                ) -> list[np.ndarray]:
    """Row indices of ``features`` (n, d) grouped by nearest k-means centroid: k-means++ seeds,
    then ``niter`` Lloyd iterations (faiss, Euclidean, ``n_bins`` <= n centroids). faiss's own
    random seeding leaves well-separated groups merged or split (a local minimum Lloyd cannot
    leave), which is what compact bins are meant to avoid. Empty clusters are dropped, so fewer
    than ``n_bins`` bins may come back. Deterministic given ``seed``."""
    n = len(features)
    if n_bins <= 1:
        return [np.arange(n)]
    import faiss

    x = np.ascontiguousarray(features, dtype=np.float32)
    km = faiss.Kmeans(x.shape[1], n_bins, niter=niter, seed=seed, verbose=False,
                      min_points_per_centroid=1, max_points_per_centroid=max(256, n))
    km.train(x, init_centroids=x[kmeans_pp(x, n_bins, np.random.default_rng(seed))])
    nearest = km.index.search(x, 1)[1].ravel()
    order = np.argsort(nearest, kind="stable")
    return np.split(order, np.flatnonzero(np.diff(nearest[order])) + 1)


def kmeans_pp(x: np.ndarray, k: int, rng: np.random.Generator) -> np.ndarray:
    """k row indices of ``x`` (n, d) by k-means++ seeding (each next row drawn with probability
    proportional to its squared distance to the nearest row already drawn): O(n * k * d) time,
    O(n) extra memory."""
    n = len(x)
    sq = np.einsum("ij,ij->i", x, x, dtype=np.float64)
    chosen = np.empty(k, dtype=np.int64)
    chosen[0] = rng.integers(n)
    d2 = np.full(n, np.inf)
    for j in range(k):
        if j:
            cum = np.cumsum(d2)
            pick = np.searchsorted(cum, rng.random() * cum[-1], side="right")
            chosen[j] = min(int(pick), n - 1)
        fold_sq_dist(x, sq, x[chosen[j]], d2)
        np.maximum(d2, 0.0, out=d2)  # rounding can leave a chosen row slightly below zero
    return chosen


def fold_sq_dist(x: np.ndarray, sq: np.ndarray, c: np.ndarray, near: np.ndarray,
                 chunk: int = 65536) -> None:
    """``near`` (n,) <- min(near, ||x_i - c||^2) in place, for rows ``x`` (n, d) whose squared
    norms are ``sq`` (n,): the running distance to the nearest centre that k-means++ seeding
    and k-center greedy both keep. Chunks of ``chunk`` rows, so no (n, d) temporary."""
    for i in range(0, len(x), chunk):
        d = sq[i:i + chunk] - 2 * (x[i:i + chunk] @ c) + c @ c
        np.minimum(near[i:i + chunk], d, out=near[i:i + chunk])
