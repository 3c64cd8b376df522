"""Random-k with a shared seed: k distinct coordinates from k strata, the same on every rank,
so the values are summed by all-reduce with no index on the wire (2 real gloo ranks); unbiased
without error feedback, a contraction with it."""

from __future__ import annotations

import math

import pytest
import torch

from distcomp import CompressedReducer, CompressionConfig, get_compressor
from distcomp.comm import TorchComm
from tests.multiproc import run_ranks


def randn(*shape, seed=0):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("n", [1, 7, 100, 4099])
@pytest.mark.parametrize("density", [0.001, 0.05, 0.5, 1.0])
def test_k_distinct_coordinates_one_per_stratum(n, density):
    c = get_compressor("randk")
    k = c.k_for(n, density)
    idx, sizes = c.coordinates(n, density, torch.Generator().manual_seed(3), torch.device("cpu"))
    assert idx.numel() == k and len(set(idx.tolist())) == k and 0 <= idx.min() <= idx.max() < n
    edges = torch.cat([torch.zeros(1, dtype=torch.long), sizes.cumsum(0)])
    assert int(sizes.sum()) == n and int(sizes.max() - sizes.min()) <= 1
    assert bool(((idx >= edges[:-1]) & (idx < edges[1:])).all())  # one in each stratum
    assert c.wire_bytes(torch.Size([n]), density) == 4 * k


def test_the_same_seed_gives_the_same_coordinates_and_a_new_step_new_ones():
    c = get_compressor("randk")
    pick = lambda seed: c.coordinates(1000, 0.05, torch.Generator().manual_seed(seed),  # noqa: E731
                                      torch.device("cpu"))[0]
    assert torch.equal(pick(1), pick(1)) and not torch.equal(pick(1), pick(2))


def test_scaled_by_stratum_it_is_unbiased_and_its_expected_error_is_the_candidate_error():
    c = get_compressor("randk")
    x = randn(200, seed=4)
    gen = torch.Generator().manual_seed(0)
    trials, mean, err2 = 4000, torch.zeros(200, dtype=torch.float64), 0.0
    for _ in range(trials):
        idx, sizes = c.coordinates(200, 0.1, gen, torch.device("cpu"))
        scaled = torch.zeros(200, dtype=torch.float64)
        scaled[idx] = x[idx].double() * sizes
        mean += scaled / trials
        kept = torch.zeros(200)
        kept[idx] = x[idx]
        err2 += float((x - kept).pow(2).sum()) / trials
    # each estimate's entry is 0 or 10 x, so its std is 3 |x|; 4000 draws: within 6 std errors
    assert bool(((mean - x.double()).abs() <= 6 * 3 * x.abs().double() / trials**0.5).all())
    (expected,) = c.candidate_errors(x, [0.1])
    assert math.isclose(math.sqrt(err2), expected, rel_tol=0.02)
    assert c.candidate_errors(x, [1.0]) == [0.0]


def _reduce(rank, world, error_feedback):
    config = CompressionConfig("randk", density=0.1, warmup_steps=0, accordion=False,
                               min_compression_rate=0.0, error_feedback=error_feedback)
    reducer = CompressedReducer(config, rank=rank)
    x = randn(20, 30, seed=rank)
    grad = x.clone()
    reducer.reduce([grad], ["w"], TorchComm(None, timeout_s=30), step=5)
    return {"x": x, "avg": grad, "residual": reducer.residuals.get("w"),
            "ledger": dict(reducer.ledger.per_collective)}


@pytest.mark.parametrize("error_feedback", [True, False])
def test_two_ranks_sum_the_same_coordinates_with_no_index_on_the_wire(error_feedback):
    a, b = run_ranks(_reduce, error_feedback=error_feedback)
    assert torch.equal(a["avg"], b["avg"])  # both ranks hold the same average
    sent = a["avg"] != 0
    k = get_compressor("randk").k_for(600, 0.1)
    assert int(sent.sum()) == k  # the same k coordinates on both ranks
    # values only: 4 bytes each, plus the 4-byte non-finite flag, summed by all-reduce
    assert a["ledger"] == {"allreduce": 4 * k + 4}
    mean = (a["x"] + b["x"]) / 2
    if error_feedback:  # unscaled, and the residual keeps every coordinate not sent
        torch.testing.assert_close(a["avg"][sent], mean[sent])
        assert torch.equal(a["residual"][sent], torch.zeros(k))
        assert torch.equal(a["residual"][~sent], a["x"][~sent])
    else:  # each value scaled by its stratum's size (10 here): unbiased
        torch.testing.assert_close(a["avg"][sent], 10 * mean[sent])
        assert a["residual"] is None
