"""Dataset quantization: exact per-class counts, determinism, bin quotas."""

from __future__ import annotations

import numpy as np
import pytest

from distcomp.data.quantize import class_targets, kmeans_bins, kmeans_pp, quantize, split_quota


def data(n: int = 900, seed: int = 0):
    rng = np.random.default_rng(seed)
    labels = rng.choice(3, n, p=[0.6, 0.3, 0.1])
    x = rng.normal(size=(n, 8)) + labels[:, None] * 2.0
    return x, labels


@pytest.mark.parametrize("ratio", [0.01, 0.1, 0.3, 0.5, 1.0])
def test_per_class_counts_are_exact(ratio):
    x, labels = data()
    keep = quantize(x, labels, ratio, n_bins=5)
    assert np.all(np.diff(keep) > 0)  # sorted, no repeats
    got = {c: int((labels[keep] == c).sum()) for c in range(3)}
    want = class_targets(labels, ratio)
    assert got == want
    for c in range(3):
        assert want[c] == max(1, int(np.floor(ratio * (labels == c).sum() + 0.5)))


def test_deterministic_given_the_seed():
    x, labels = data()
    a, b = quantize(x, labels, 0.2, seed=3), quantize(x, labels, 0.2, seed=3)
    assert np.array_equal(a, b)
    assert not np.array_equal(a, quantize(x, labels, 0.2, seed=4))


def test_every_bin_gives_its_share():
    assert split_quota(10, [5, 5, 5]) == [4, 3, 3]
    assert split_quota(3, [100, 1, 1]) == [3, 0, 0]
    for total in range(0, 31):
        q = split_quota(total, [12, 9, 7, 2])
        assert sum(q) == total and all(0 <= a <= s for a, s in zip(q, [12, 9, 7, 2]))


def test_knn_and_exact_both_cover_the_class():
    x, labels = data(600)
    for method in ("exact", "knn"):
        keep = quantize(x, labels, 0.25, n_bins=4, method=method, k=12)
        assert {c: int((labels[keep] == c).sum()) for c in range(3)} == \
            class_targets(labels, 0.25)


@pytest.mark.parametrize("ratio", [0, -0.1, 1.5, float("nan"), "0.3"])
def test_bad_ratio_raises(ratio):
    x, labels = data(30)
    with pytest.raises(ValueError, match="ratio"):
        quantize(x, labels, ratio)


def test_mismatched_shapes_raise():
    with pytest.raises(ValueError, match="features"):
        quantize(np.ones((5, 2)), np.zeros(4, int), 0.5)


def blobs(groups: int = 12, size: int = 20, seed: int = 0):
    """``groups`` tight, well-separated blobs of ``size`` points each (one class)."""
    rng = np.random.default_rng(seed)
    centers = rng.normal(size=(groups, 8)) * 20
    x = np.repeat(centers, size, 0) + rng.normal(size=(groups * size, 8)) * 0.1
    return x, np.repeat(np.arange(groups), size)


@pytest.mark.parametrize("ratio", [0.01, 0.1, 0.3, 1.0])
def test_kmeans_binning_keeps_exact_class_counts(ratio):
    x, labels = data()
    keep = quantize(x, labels, ratio, binning="kmeans")
    assert np.all(np.diff(keep) > 0)
    assert {c: int((labels[keep] == c).sum()) for c in range(3)} == class_targets(labels, ratio)


def test_kmeans_binning_is_deterministic_given_the_seed():
    x, labels = data()
    a = quantize(x, labels, 0.2, binning="kmeans", seed=3)
    assert np.array_equal(a, quantize(x, labels, 0.2, binning="kmeans", seed=3))
    assert not np.array_equal(a, quantize(x, labels, 0.2, binning="kmeans", seed=4))


@pytest.mark.parametrize("seed", range(4))
def test_kmeans_bins_find_separated_groups(seed):
    x, blob = blobs(seed=seed)
    bins = kmeans_bins(x, 12, seed=seed)
    assert sorted(len(b) for b in bins) == [20] * 12
    assert all(len(set(blob[b].tolist())) == 1 for b in bins)  # no bin mixes two blobs
    # default bins: one per 3 kept samples, so 36 kept = 3 from every blob (random: uneven)
    keep = quantize(x, np.zeros(len(x), int), 0.15, binning="kmeans", seed=seed)
    assert np.bincount(blob[keep], minlength=12).tolist() == [3] * 12


def test_kmeans_pp_spreads_its_seeds():
    x, blob = blobs(groups=5, size=50)
    for seed in range(5):
        assert len(set(blob[kmeans_pp(x, 5, np.random.default_rng(seed))].tolist())) == 5


def test_bad_binning_and_bins_raise():
    x, labels = data(30)
    with pytest.raises(ValueError, match="binning"):
        quantize(x, labels, 0.5, binning="louvain")
    assert len(quantize(x, labels, 0.5, n_bins=np.int64(2))) == \
        sum(class_targets(labels, 0.5).values())  # numpy integers are fine
    for bad in (0, -2, 1.5, True):
        with pytest.raises(ValueError, match="n_bins"):
            quantize(x, labels, 0.5, n_bins=bad)
