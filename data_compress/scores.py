"""Per-sample pruning scores and the selections built on them.

Scores are "higher = more worth keeping" where a method has a direction (EL2N, GraNd and
forgetting rank hard samples high; the papers keep the hardest). Selections return sorted int64
indices of the kept samples. Every selection takes ``class_balanced``: keep round(ratio * n_c)
of every class (the same per-class counts as :func:`distcomp.data.quantize.class_targets`)
instead of a global top fraction, which on skewed scores can empty a class.
"""

from __future__ import annotations

import numpy as np

from distcomp.data.graphcut import unit_rows
from distcomp.data.progress import bar, track
from distcomp.data.quantize import check_ratio, class_targets, fold_sq_dist


# -- scores from training dynamics (see distcomp.data.dynamics) ---------------------------------
def el2n(probs: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """||softmax - onehot||_2 per sample; probs (n, C) or (runs, n, C), averaged over runs."""
    return np.linalg.norm(_error(probs, labels), axis=2).mean(0)


def grand(probs: np.ndarray, labels: np.ndarray, hidden: np.ndarray) -> np.ndarray:
    """Norm of the cross-entropy gradient w.r.t. the last linear layer (weights and bias):
    ||p - y|| * sqrt(||h||^2 + 1) for penultimate features h (n, H); runs averaged like el2n."""
    hidden = np.asarray(hidden, dtype=np.float64)
    hidden = hidden[None] if hidden.ndim == 2 else hidden
    err = np.linalg.norm(_error(probs, labels), axis=2)
    return (err * np.sqrt((hidden ** 2).sum(2) + 1.0)).mean(0)


def _error(probs: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """softmax - onehot as (runs, n, C) float64, from (n, C) or (runs, n, C) probabilities."""
    err = np.array(probs, dtype=np.float64, ndmin=3)
    err[:, np.arange(err.shape[1]), labels] -= 1.0
    return err


def forgetting(correct: np.ndarray) -> np.ndarray:
    """Forgetting events from (epochs, n) correctness: transitions correct -> wrong; a sample
    never classified correctly counts as forgotten every epoch (it is the hardest)."""
    correct = np.asarray(correct, dtype=bool)
    events = (correct[:-1] & ~correct[1:]).sum(0).astype(np.float64)
    events[~correct.any(0)] = len(correct)
    return events


def moderate(features: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Moderate coreset: minus |distance to the class median feature - median distance|, so
    samples of typical difficulty score highest (neither prototypes nor outliers)."""
    x = np.asarray(features, dtype=np.float64)
    out = np.empty(len(x))
    for c in np.unique(labels):
        m = labels == c
        dist = np.linalg.norm(x[m] - np.median(x[m], axis=0), axis=1)
        out[m] = -np.abs(dist - np.median(dist))
    return out


# -- selections ----------------------------------------------------------------------------------
def _groups(labels: np.ndarray, ratio: float, class_balanced: bool
            ) -> list[tuple[np.ndarray, int]]:
    """(members, budget) per class, or one group of everything with the global budget."""
    if not class_balanced:
        check_ratio(ratio)
        return [(np.arange(len(labels)), max(1, int(np.floor(ratio * len(labels) + 0.5))))]
    return [(np.flatnonzero(labels == c), t) for c, t in class_targets(labels, ratio).items()]


def top(scores: np.ndarray, labels: np.ndarray, ratio: float, *,
        class_balanced: bool = True) -> np.ndarray:
    """Keep the highest scores (ties to the lower index)."""
    scores, labels = np.asarray(scores, dtype=np.float64), np.asarray(labels)
    kept = [m[np.lexsort((m, -scores[m]))[:t]] for m, t in _groups(labels, ratio, class_balanced)]
    return np.sort(np.concatenate(kept)).astype(np.int64)


def random(labels: np.ndarray, ratio: float, *, seed: int = 0,
           class_balanced: bool = True) -> np.ndarray:
    """Uniform sample: the baseline every method must beat."""
    labels = np.asarray(labels)
    rng = np.random.default_rng(seed)
    return top(rng.random(len(labels)), labels, ratio, class_balanced=class_balanced)


def coverage(scores: np.ndarray, labels: np.ndarray, ratio: float, *, strata: int = 50,
             hard_cut: float = 0.1, seed: int = 0, class_balanced: bool = True) -> np.ndarray:
    """Coverage-centric selection (Zheng et al., ICLR 2023) over any score: drop the hardest
    ``hard_cut`` fraction (often mislabelled), split the score range into ``strata`` equal-width
    strata and spend the budget evenly over them, smallest strata first, sampling uniformly
    inside each. Keeps easy, medium and hard samples where a top-k keeps only the hard."""
    scores, labels = np.asarray(scores, dtype=np.float64), np.asarray(labels)
    if not 0 <= hard_cut < 1:
        raise ValueError(f"hard_cut must be in [0, 1), got {hard_cut!r}")
    rng = np.random.default_rng(seed)
    kept = []
    for members, budget in _groups(labels, ratio, class_balanced):
        order = members[np.lexsort((members, scores[members]))]  # easy -> hard
        pool = order[:max(budget, len(order) - int(hard_cut * len(order)))]
        s = scores[pool]
        edges = np.linspace(s.min(), s.max(), strata + 1)
        which = np.clip(np.searchsorted(edges, s, side="right") - 1, 0, strata - 1)
        bins = sorted((b for b in (pool[which == i] for i in range(strata)) if len(b)), key=len)
        for i, b in enumerate(bins):
            take = min(len(b), budget // (len(bins) - i))
            kept.append(rng.choice(b, take, replace=False))
            budget -= take
    return np.sort(np.concatenate(kept)).astype(np.int64)


def k_center(features: np.ndarray, labels: np.ndarray, ratio: float, *, seed: int = 0,
             class_balanced: bool = True, chunk: int = 65536, progress: bool = False
             ) -> np.ndarray:
    """k-center greedy (Sener & Savarese, 2018): repeatedly keep the sample farthest from
    everything kept so far (a 2-approximation of the minimax cover). O(n d) memory: one
    running min-distance per sample, updated in chunks after each pick. Each pick costs
    O(n_c d), so the whole run O(ratio n_c^2 d) per class; ``progress`` counts picks."""
    x = np.ascontiguousarray(features, dtype=np.float32)
    labels = np.asarray(labels)
    rng = np.random.default_rng(seed)
    groups = _groups(labels, ratio, class_balanced)
    kept = []
    with bar(sum(t for _, t in groups), "k-center", progress, unit="pick", scale=True) as b:
        for members, budget in groups:
            sub = x[members]
            sq = np.einsum("ij,ij->i", sub, sub)
            near = np.full(len(sub), np.inf)
            pick = int(rng.integers(len(sub)))
            chosen = []
            for _ in range(budget):
                chosen.append(pick)
                fold_sq_dist(sub, sq, sub[pick], near, chunk)
                near[pick] = -np.inf
                pick = int(np.argmax(near))
                if len(chosen) % 256 == 0:  # per pick, tqdm's own cost would show
                    b.update(256)
            b.update(len(chosen) % 256)
            kept.append(members[chosen])
    return np.sort(np.concatenate(kept)).astype(np.int64)


def semantic_dedup(features: np.ndarray, *, threshold: float = 0.95, clusters: int | None = None,
                   seed: int = 0, progress: bool = False) -> np.ndarray:
    """SemDeDup (Abbas et al., 2023): spherical k-means (faiss), then inside each cluster drop
    every sample whose cosine to a sample nearer the centroid exceeds ``threshold`` (as the
    paper does). Pairwise work only inside clusters, in blocks: never N x N. Kept indices.
    ``progress`` counts clusters done."""
    import faiss

    if not -1 <= threshold <= 1:
        raise ValueError(f"threshold must be a cosine in [-1, 1], got {threshold!r}")
    x = unit_rows(features)
    n, d = x.shape
    k = clusters or max(1, min(n // 50, int(np.sqrt(n))))
    km = faiss.Kmeans(d, k, niter=20, spherical=True, seed=seed, verbose=False)
    km.train(x)
    _, assign = km.index.search(x, 1)
    assign = assign.ravel()
    kept = []
    for c in track(range(k), "dedup clusters", progress):
        members = np.flatnonzero(assign == c)
        if not len(members):
            continue
        ranked = members[np.lexsort((members, -(x[members] @ km.centroids[c])))]
        sub = x[ranked]
        drop = np.zeros(len(sub), dtype=bool)
        for j in range(0, len(sub), 1024):  # column block: max cosine to any earlier sample
            sims = sub[:j + 1024] @ sub[j:j + 1024].T
            sims[np.arange(len(sims))[:, None] >= np.arange(j, j + sims.shape[1])] = -np.inf
            drop[j:j + 1024] = sims.max(0) > threshold
        kept.append(ranked[~drop])
    return np.sort(np.concatenate(kept)).astype(np.int64)
