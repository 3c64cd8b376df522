"""Pruning scores and selections on data whose answer is known."""

from __future__ import annotations

import numpy as np
import pytest

from distcomp.data import scores


def test_el2n_and_grand_on_hand_values():
    probs = np.array([[1.0, 0.0], [0.5, 0.5], [0.0, 1.0]])
    labels = np.array([0, 0, 0])
    np.testing.assert_allclose(scores.el2n(probs, labels), [0.0, np.sqrt(0.5), np.sqrt(2)])
    hidden = np.array([[0.0, 0.0], [3.0, 4.0], [0.0, 1.0]])
    np.testing.assert_allclose(scores.grand(probs, labels, hidden),
                               [0.0, np.sqrt(0.5) * np.sqrt(26), np.sqrt(2) * np.sqrt(2)])
    runs = np.stack([probs, probs[::-1]])  # averaged over runs
    np.testing.assert_allclose(scores.el2n(runs, labels), [np.sqrt(2) / 2, np.sqrt(0.5),
                                                           np.sqrt(2) / 2])


def test_forgetting_counts_right_to_wrong_transitions():
    correct = np.array([[1, 0, 0, 1], [0, 0, 1, 1], [1, 0, 1, 0], [0, 0, 1, 1]], dtype=bool)
    np.testing.assert_array_equal(scores.forgetting(correct), [2, 4, 0, 1])


def test_top_is_class_balanced_or_global():
    labels = np.array([0] * 6 + [1] * 4)
    s = np.array([9, 8, 7, 6, 5, 4, 3, 2, 1, 0], dtype=float)
    assert scores.top(s, labels, 0.5).tolist() == [0, 1, 2, 6, 7]
    assert scores.top(s, labels, 0.5, class_balanced=False).tolist() == [0, 1, 2, 3, 4]


def test_coverage_spans_easy_to_hard_and_drops_the_hardest():
    rng = np.random.default_rng(0)
    s = rng.random(2000)
    labels = np.zeros(2000, int)
    keep = scores.coverage(s, labels, 0.1, strata=10, hard_cut=0.1)
    assert len(keep) == 200
    assert s[keep].max() <= np.quantile(s, 0.9) + 1e-9  # the hardest 10% are gone
    assert s[keep].min() < 0.1  # easy samples kept too, unlike a top-k of hard ones
    hist = np.histogram(s[keep], bins=9, range=(0, 0.9))[0]
    assert hist.min() > 10  # every stratum represented


def test_k_center_covers_far_clusters_first():
    rng = np.random.default_rng(0)
    centres = np.array([[0, 0], [100, 0], [0, 100], [100, 100]], float)
    which = np.repeat(np.arange(4), [500, 100, 50, 10])
    x = centres[which] + rng.normal(size=(660, 2))
    keep = scores.k_center(x, np.zeros(660, int), 6 / 660)
    assert set(which[keep]) == {0, 1, 2, 3}


def test_moderate_prefers_typical_distances():
    x = np.concatenate([np.zeros((1, 2)), np.ones((8, 2)) * [[1, 0]], [[50.0, 0]]])
    x[1:9, 1] = np.linspace(-1, 1, 8)
    s = scores.moderate(x, np.zeros(10, int))
    assert s.argmin() == 9 and 1 <= s.argmax() <= 8


def test_semantic_dedup_drops_near_duplicates_only():
    rng = np.random.default_rng(0)
    base = rng.normal(size=(300, 32))
    dupes = base[:100] + 1e-2 * rng.normal(size=(100, 32))
    x = np.vstack([base, dupes])
    keep = scores.semantic_dedup(x, threshold=0.99, clusters=8)
    assert len(keep) == 300
    kept_pairs = np.isin(np.arange(100), keep) & np.isin(np.arange(300, 400), keep)
    assert not kept_pairs.any()  # one of each pair survives
    assert len(scores.semantic_dedup(x, threshold=1.0, clusters=8)) == 400


def test_random_is_deterministic_and_balanced():
    labels = np.repeat([0, 1, 2], [50, 30, 20])
    a = scores.random(labels, 0.2, seed=1)
    assert np.array_equal(a, scores.random(labels, 0.2, seed=1))
    assert np.bincount(labels[a]).tolist() == [10, 6, 4]


def test_bad_arguments():
    with pytest.raises(ValueError, match="ratio"):
        scores.top(np.ones(3), np.zeros(3, int), 0.0)
    with pytest.raises(ValueError, match="hard_cut"):
        scores.coverage(np.ones(3), np.zeros(3, int), 0.5, hard_cut=1.0)
    with pytest.raises(ValueError, match="threshold"):
        scores.semantic_dedup(np.ones((3, 2)), threshold=2.0)
