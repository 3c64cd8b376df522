import itertools
import math
import random

import pytest

from distcomp.compression.planner import solve


def brute_force(bytes_, errors, fits):
    best = None
    for choice in itertools.product(*[range(len(b)) for b in bytes_]):
        if fits(choice):
            total = sum(bytes_[i][c] for i, c in enumerate(choice))
            if best is None or total < best:
                best = total
    return best


def random_instance(rng: random.Random):
    layers = rng.randint(1, 4)
    bytes_, errors = [], []
    for _ in range(layers):
        n = rng.randint(1, 4)
        pairs = sorted((rng.randint(1, 1000), rng.uniform(0, 10)) for _ in range(n))
        bytes_.append([b for b, _ in pairs])
        errors.append([e for _, e in pairs])
    lo = sum(min(e) for e in errors)
    hi = sum(max(e) for e in errors)
    return bytes_, errors, rng.uniform(lo * 0.9, hi * 1.1)


@pytest.mark.parametrize("seed", range(200))
def test_dp_matches_brute_force_up_to_discretisation(seed):
    rng = random.Random(seed)
    bytes_, errors, budget = random_instance(rng)
    bins = rng.choice([10, 50, 1000])
    plan = solve(bytes_, errors, budget, bins)
    unit = budget / bins

    def binned(choice):
        return sum(math.ceil(errors[i][c] / unit - 1e-9) for i, c in enumerate(choice)) <= bins

    exact_opt = brute_force(bytes_, errors, binned)
    if exact_opt is None:
        assert plan is None
        return
    # the DP is exactly optimal on the discretised problem ...
    assert plan.total_bytes == exact_opt
    # ... feasible in true error ...
    assert plan.total_error <= budget * (1 + 1e-9)
    # ... and no worse than the true optimum under a budget shrunk by the rounding slack
    slack = len(bytes_) * unit

    def tight(choice):
        return sum(errors[i][c] for i, c in enumerate(choice)) <= budget - slack

    tight_opt = brute_force(bytes_, errors, tight)
    if tight_opt is not None:
        assert plan.total_bytes <= tight_opt


def test_prefers_cheap_layers_to_absorb_error():
    # a big layer that barely minds harder compression and a small one that minds a lot:
    # spend the bytes on the small one (uniform = middle/middle: 2020 bytes, error 2.0)
    bytes_ = [[1000, 2000, 4000], [10, 20, 40]]
    errors = [[1.05, 1.0, 0.95], [3.0, 1.0, 0.1]]
    plan = solve(bytes_, errors, budget=2.0, bins=1000)
    assert plan.choice == (0, 2) and plan.total_bytes == 1040 and plan.total_error <= 2.0


def test_zero_budget_takes_only_error_free_candidates():
    assert solve([[10, 5]], [[0.0, 1.0]], budget=0.0).choice == (0,)
    assert solve([[10, 5]], [[0.5, 1.0]], budget=0.0) is None


@pytest.mark.parametrize(
    "bytes_,errors,budget,bins,match",
    [
        ([[1]], [[1.0]], 1.0, 0, "bins"),
        ([[1]], [[1.0]], -1.0, 10, "budget"),
        ([[1]], [[1.0]], float("nan"), 10, "budget"),
        ([[1], [2]], [[1.0]], 1.0, 10, "same layers"),
        ([[]], [[]], 1.0, 10, "candidate"),
        ([[1, 2]], [[1.0]], 1.0, 10, "candidate"),
        ([[1]], [[float("inf")]], 1.0, 10, "finite"),
        ([[-1]], [[1.0]], 1.0, 10, "finite"),
    ],
)
def test_invalid_problems_raise(bytes_, errors, budget, bins, match):
    with pytest.raises(ValueError, match=match):
        solve(bytes_, errors, budget, bins)
