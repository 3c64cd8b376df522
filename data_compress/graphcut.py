"""GraphCut bins for dataset quantization, without the N x N similarity matrix.

Dataset quantization splits a class into K non-overlapping bins, each chosen greedily to
maximise the GraphCut function over the samples not yet binned (the pool U):

    f(S) = sum_{i in S} sum_{j in U} s(i, j) - sum_{i in S} sum_{j in S} s(i, j),
    s(i, j) = 0.5 + 0.5 cos(x_i, x_j)  in [0, 1],

so adding k to the bin S gains sum_{j in U} s(k, j) - 2 sum_{j in S} s(k, j) - s(k, k): close
to the whole pool (representative) and far from what the bin holds already (diverse). Because
s >= 0 the gains only shrink as S grows (f is submodular), which makes lazy greedy exact.

Exact variant, O(n d) memory: with unit-norm rows, both sums are linear in running feature
sums, sum_{j in U} s(k, j) = |U|/2 + x_k . sigma_U / 2, so the gain of every candidate is
|U|/2 - |S| - 1 + x_k . (sigma_U / 2 - sigma_S). Stale gains are upper bounds; only the
leading candidates are re-evaluated (in blocks, O(block d) each) until the best one is fresh.
It picks exactly the order a dense implementation picks (ties to the lower index).

k-NN variant, for classes too large for the exact one: s is kept only between each sample and
its k nearest neighbours (faiss; exact search up to ``FLAT_LIMIT`` rows, IVF beyond) and is 0
elsewhere, and a lazy greedy on a heap updates only the neighbours of each pick: O(n k) memory
and time. It is a different objective, not an approximation of the exact one: without the
global terms, "representative" means locally dense, so early bins already span every cluster
where the exact variant's early bins hold the class's dense core.
"""

from __future__ import annotations

import heapq
from collections.abc import Callable

import numpy as np

from distcomp.data.progress import bar

FLAT_LIMIT = 50_000  # rows: above this the k-NN graph comes from an IVF index
SEARCH_CHUNK = 16_384  # query rows per faiss search call (a progress step; same results)


def unit_rows(x: np.ndarray) -> np.ndarray:
    """float32 rows scaled to unit L2 norm (zero rows stay zero)."""
    x = np.ascontiguousarray(x, dtype=np.float32)
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    return x / np.where(norms > 0, norms, 1.0)


def bin_sizes(n: int, n_bins: int) -> list[int]:
    """Sizes of ``n_bins`` bins covering n samples, differing by at most one (larger first)."""
    if n_bins < 1:
        raise ValueError(f"n_bins must be >= 1, got {n_bins}")
    base, extra = divmod(n, n_bins)
    return [base + (b < extra) for b in range(n_bins)]


def graphcut_bins(features: np.ndarray, n_bins: int, *, method: str = "exact",
                  k: int = 32, block: int = 512, tick: Callable[[int], None] | None = None,
                  progress: bool = False) -> list[np.ndarray]:
    """Split the rows of ``features`` (n, d) into ``n_bins`` GraphCut bins.

    Returns one int64 index array per bin, each in greedy pick order; together they cover
    0..n-1 once. ``method``: "exact" or "knn" (k neighbours per sample). ``tick(rows)`` is
    called after each bin with the rows it binned (a progress bar's update); ``progress``
    draws a bar for the k-NN search of the knn variant.
    """
    x = unit_rows(features)
    tick = tick or (lambda rows: None)
    if method == "exact":
        return _exact_bins(x, n_bins, block, tick)
    if method == "knn":
        return _knn_bins(x, n_bins, k, tick, progress)
    raise ValueError(f"method must be 'exact' or 'knn', got {method!r}")


def _exact_bins(x: np.ndarray, n_bins: int, block: int, tick: Callable[[int], None]
                ) -> list[np.ndarray]:
    n = len(x)
    pool = np.ones(n, dtype=bool)
    sigma_u = x.astype(np.float64).sum(0)
    bins = []
    for size in bin_sizes(n, n_bins):
        if size == int(pool.sum()):  # the last bin takes what is left, in index order
            bins.append(np.flatnonzero(pool))
            tick(size)
            break
        bins.append(_greedy_bin(x, pool, sigma_u, size, block))
        tick(size)
        pool[bins[-1]] = False
        sigma_u -= x[bins[-1]].astype(np.float64).sum(0)
    return bins


def _greedy_bin(x: np.ndarray, pool: np.ndarray, sigma_u: np.ndarray, size: int,
                block: int) -> np.ndarray:
    """One bin from the pool by lazy greedy on the linear-form gains (the constant |U|/2 - 1/2
    is dropped; the -|S| term is kept so stale values stay upper bounds; zero rows, whose
    s(k, k) is 1/2, keep their exact self term)."""
    n_pool = int(pool.sum())
    w = 0.5 * sigma_u  # sigma_U / 2 - sigma_S, as S grows
    half_self = 0.5 * np.einsum("ij,ij->i", x, x, dtype=np.float64)  # s(k, k) - 1/2: 1/2 or 0
    bound = np.full(len(x), -np.inf)
    bound[pool] = _dot(x[pool], w) - half_self[pool]
    fresh = pool.copy()  # bound[k] is k's exact gain for the current S
    picked = np.empty(size, dtype=np.int64)
    for t in range(size):
        while True:
            best = int(np.argmax(bound))
            if fresh[best]:
                break
            stale = np.where(fresh, -np.inf, bound)
            lead = np.argpartition(-stale, min(block, n_pool - t) - 1)[:block]
            lead = lead[np.isfinite(stale[lead])]
            bound[lead] = _dot(x[lead], w) - t - half_self[lead]
            fresh[lead] = True
        picked[t] = best
        bound[best] = -np.inf
        fresh[:] = False
        w -= x[best]
    return picked


def _dot(rows: np.ndarray, w: np.ndarray, chunk: int = 65536) -> np.ndarray:
    """rows @ w in float64, a chunk of rows at a time (no full float64 copy)."""
    out = np.empty(len(rows))
    for i in range(0, len(rows), chunk):
        out[i:i + chunk] = rows[i:i + chunk].astype(np.float64) @ w
    return out


# -- k-nearest-neighbour variant -----------------------------------------------------------------
def knn_graph(x: np.ndarray, k: int, seed: int = 0, progress: bool = False):
    """Sparse symmetric similarity graph, scipy CSR (n, n): s = 0.5 + 0.5 cos between each
    unit row and its min(k, n - 1) most similar other rows (an edge kept if either end chose
    it). Needs faiss. The search runs ``SEARCH_CHUNK`` query rows at a time, so ``progress``
    can show it (rows searched)."""
    import faiss
    from scipy import sparse

    n, d = x.shape
    k = min(k, n - 1)
    if n <= FLAT_LIMIT:
        index = faiss.IndexFlatIP(d)
    else:
        nlist = int(4 * np.sqrt(n))
        index = faiss.IndexIVFFlat(faiss.IndexFlatIP(d), d, nlist, faiss.METRIC_INNER_PRODUCT)
        index.cp.seed = seed
        rng = np.random.default_rng(seed)
        index.train(x[np.sort(rng.choice(n, min(n, 64 * nlist), replace=False))])
        index.nprobe = 8
    index.add(x)
    sims = np.empty((n, k + 1), dtype=np.float32)
    nbrs = np.empty((n, k + 1), dtype=np.int64)
    with bar(n, "k-NN graph", progress, unit="row", scale=True) as b:
        for i in range(0, n, SEARCH_CHUNK):
            sims[i:i + SEARCH_CHUNK], nbrs[i:i + SEARCH_CHUNK] = index.search(
                x[i:i + SEARCH_CHUNK], k + 1)
            b.update(len(x[i:i + SEARCH_CHUNK]))
    rows = np.repeat(np.arange(n), k + 1)
    cols, vals = nbrs.ravel(), 0.5 + 0.5 * sims.ravel()
    keep = (cols >= 0) & (cols != rows)  # IVF pads missing neighbours with -1
    a = sparse.csr_matrix((vals[keep], (rows[keep], cols[keep])), shape=(n, n))
    return a.maximum(a.T).tocsr()


def _knn_bins(x: np.ndarray, n_bins: int, k: int, tick: Callable[[int], None],
              progress: bool) -> list[np.ndarray]:
    n = len(x)
    graph = knn_graph(x, k, progress=progress)
    ptr, nbr, sim = graph.indptr, graph.indices, graph.data
    pool = np.ones(n, dtype=bool)
    bins = []
    for size in bin_sizes(n, n_bins):
        if size == int(pool.sum()):
            bins.append(np.flatnonzero(pool))
            tick(size)
            break
        # gain(k) = (similarity to pool neighbours) - 2 (similarity to bin neighbours)
        gain = graph @ pool.astype(np.float64)
        members = np.flatnonzero(pool)
        heap = list(zip((-gain[members]).tolist(), members.tolist()))
        heapq.heapify(heap)
        picked = []
        while len(picked) < size:
            _, i = heapq.heappop(heap)
            key = (-float(gain[i]), i)
            if heap and key > heap[0]:  # stale: its gain fell since it was pushed
                heapq.heappush(heap, key)
                continue
            picked.append(i)
            lo, hi = ptr[i], ptr[i + 1]
            gain[nbr[lo:hi]] -= 2 * sim[lo:hi]
        bins.append(np.asarray(picked, dtype=np.int64))
        tick(size)
        pool[bins[-1]] = False
    return bins
