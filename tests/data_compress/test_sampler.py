"""InfoBatch sampler: identical decisions on 2 real gloo ranks, unbiased weights, annealing."""

from __future__ import annotations

import hashlib

import numpy as np
import pytest
import torch

from distcomp.data.sampler import IndexedDataset, InfoBatchSampler
from tests.multiproc import run_ranks


def _loss(idx: np.ndarray) -> np.ndarray:
    return (idx % 100) / 100.0  # samples with small idx % 100 are "well learned"


def _ddp(rank, world):
    sampler = InfoBatchSampler(1000, epochs=8, prune_ratio=0.5, seed=7)
    out = []
    for epoch in range(8):
        sampler.set_epoch(epoch)
        mine = np.array(list(sampler))
        # each rank trains on its shard only, recording in two batches
        for part in np.array_split(mine, 2):
            sampler.record(part, torch.as_tensor(_loss(part)))
        out.append({
            "kept": hashlib.sha256(sampler.kept.tobytes()).hexdigest(),
            "n_kept": len(sampler.kept),
            "mine": mine.tolist(),
            "weights": sampler.weights(mine).tolist(),
            "len": len(sampler),
        })
    return out


def test_two_ranks_draw_the_same_kept_set_and_split_it():
    r0, r1 = run_ranks(_ddp)
    for epoch, (a, b) in enumerate(zip(r0, r1)):
        assert a["kept"] == b["kept"] and a["n_kept"] == b["n_kept"], epoch
        assert a["len"] == b["len"] == len(a["mine"]) == len(b["mine"])
        covered = set(a["mine"]) | set(b["mine"])
        assert len(covered) == a["n_kept"]  # the shards cover the kept set
    assert r0[0]["n_kept"] == 1000  # nothing scored yet
    # epoch 1: below-mean losses (idx % 100 < 50: 500 samples) are dropped with p = 0.5
    assert 150 < 1000 - r0[1]["n_kept"] < 350
    w = dict(zip(r0[1]["mine"] + r1[1]["mine"], r0[1]["weights"] + r1[1]["weights"]))
    assert {v for k, v in w.items() if k % 100 < 50} == {2.0}
    assert {v for k, v in w.items() if k % 100 >= 50} == {1.0}
    assert r0[7]["n_kept"] == 1000  # annealing: the last epoch sees everything
    assert set(r0[7]["weights"]) == {1.0}


def test_unbiased_in_expectation():
    """E[weight * loss] over the draw equals the full-data loss sum."""
    losses = np.random.default_rng(0).random(400)
    totals = []
    for seed in range(300):
        s = InfoBatchSampler(400, epochs=10, prune_ratio=0.6, seed=seed, num_replicas=1, rank=0)
        s.record(np.arange(400), torch.as_tensor(losses))
        s.set_epoch(1)
        totals.append(float((s.weights(s.kept).numpy() * losses[s.kept]).sum()))
    assert np.mean(totals) == pytest.approx(losses.sum(), rel=0.01)


def test_state_round_trip_and_bad_settings():
    s = InfoBatchSampler(50, epochs=4, num_replicas=1, rank=0)
    s.record(np.arange(50), torch.linspace(0, 1, 50))
    s.set_epoch(1)
    t = InfoBatchSampler(50, epochs=4, num_replicas=1, rank=0)
    t.load_state_dict(s.state_dict())
    assert np.array_equal(t.kept, s.kept) and list(t) == list(s)
    ds = IndexedDataset([10, 20, 30])
    assert ds[2] == (2, 30) and len(ds) == 3
    for bad in ({"prune_ratio": 1.0}, {"anneal": 2.0}, {"epochs": 0}):
        with pytest.raises(ValueError):
            InfoBatchSampler(10, **{"epochs": 3, **bad})
