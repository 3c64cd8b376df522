"""GraphCut bins against a dense N x N reference, and the k-NN variant's invariants."""

from __future__ import annotations

import numpy as np
import pytest

from distcomp.data.graphcut import bin_sizes, graphcut_bins, unit_rows


def dense_bins(features: np.ndarray, n_bins: int) -> list[np.ndarray]:
    """The textbook version: full similarity matrix, every gain recomputed at every pick."""
    x = unit_rows(features).astype(np.float64)
    sim = 0.5 + 0.5 * x @ x.T
    pool = np.ones(len(x), dtype=bool)
    bins = []
    for size in bin_sizes(len(x), n_bins):
        if size == pool.sum():
            bins.append(np.flatnonzero(pool))
            break
        chosen: list[int] = []
        for _ in range(size):
            gain = sim[:, pool].sum(1) - 2 * sim[:, chosen].sum(1) - np.diag(sim)
            gain[~pool] = -np.inf
            gain[chosen] = -np.inf
            chosen.append(int(np.argmax(gain)))
        bins.append(np.asarray(chosen))
        pool[chosen] = False
    return bins


def clustered(n: int, d: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(5, d))
    return centres[rng.integers(0, 5, n)] + 0.6 * rng.normal(size=(n, d))


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("n_bins", [1, 3, 7])
def test_exact_variant_picks_the_dense_order(seed, n_bins):
    x = clustered(150, 12, seed)
    ours = graphcut_bins(x, n_bins, method="exact", block=8)
    ref = dense_bins(x, n_bins)
    assert [b.tolist() for b in ours] == [b.tolist() for b in ref]


def test_bins_partition_the_samples_with_balanced_sizes():
    x = clustered(1003, 16, 0)
    for method in ("exact", "knn"):
        bins = graphcut_bins(x, 10, method=method, k=10)
        assert sorted(np.concatenate(bins).tolist()) == list(range(1003))
        assert [len(b) for b in bins] == [101, 101, 101] + [100] * 7


def test_early_bins_are_the_representative_ones():
    """GraphCut's pool term dominates: the first bins hold the samples most similar to the
    class (its dense core), the last ones its periphery; that is why DQ draws from every bin."""
    rng = np.random.default_rng(0)
    centres = rng.normal(size=(5, 16)) * 3
    labels = np.repeat(np.arange(5), [400, 300, 200, 60, 40])
    x = unit_rows(centres[labels] + rng.normal(size=(1000, 16)))
    centrality = x @ x.sum(0)
    means = [centrality[b].mean() for b in graphcut_bins(x, 10, method="exact")]
    assert means[0] > centrality.mean() > means[-1], means
    # on the k-NN graph, similarity beyond the neighbours counts as 0: representative means
    # locally dense, so the first bin already spans every cluster, the small ones included
    first = graphcut_bins(x, 10, method="knn", k=16)[0]
    assert set(labels[first]) == set(range(5))


def test_duplicates_and_zero_rows_do_not_stall():
    x = np.vstack([np.ones((30, 4)), np.zeros((5, 4)), np.eye(4)])
    bins = graphcut_bins(x, 4, method="exact")
    assert sorted(np.concatenate(bins).tolist()) == list(range(len(x)))


def test_bad_arguments_are_refused():
    with pytest.raises(ValueError, match="n_bins"):
        graphcut_bins(np.ones((4, 2)), 0)
    with pytest.raises(ValueError, match="method"):
        graphcut_bins(np.ones((4, 2)), 2, method="dense")
