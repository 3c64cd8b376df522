"""L-GreCo's planner: pick one compression setting per layer to minimise total bytes subject to
total compression error <= a budget, by dynamic programming over a discretised error axis.

Problem: layers l = 1..L, each with candidates c carrying bytes[l][c] (exact wire bytes) and
error[l][c] (||g_l - C_c(g_l)||). Choose one candidate per layer to minimise sum bytes with
sum error <= budget. This is a multiple-choice knapsack: NP-hard in general, but with errors
rounded *up* to multiples of unit = budget / bins it is solved exactly in O(L x C x bins) by

    best[l][b] = min over c of best[l-1][b - bins(l, c)] + bytes[l][c]

(numpy over the bin axis, so a 100-layer, 9-candidate, 1000-bin plan takes milliseconds).
Rounding up keeps every returned plan feasible in true error; the price is that a plan whose
true error is within L x unit of the budget may be missed ("optimal up to the discretisation").
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Plan:
    """choice[l]: index of the chosen candidate of layer l; totals in bytes and error units."""

    choice: tuple[int, ...]
    total_bytes: int
    total_error: float


def validate_problem(bytes_: list[list[int]], errors: list[list[float]], budget: float,
                     bins: int) -> None:
    if isinstance(bins, bool) or not isinstance(bins, int) or bins < 1:
        raise ValueError(f"bins must be an integer >= 1, got {bins!r}")
    if not (isinstance(budget, (int, float)) and math.isfinite(budget) and budget >= 0):
        raise ValueError(f"error budget must be a finite number >= 0, got {budget!r}")
    if len(bytes_) != len(errors):
        raise ValueError("bytes and errors must list the same layers")
    for layer, (b, e) in enumerate(zip(bytes_, errors)):
        if not b or len(b) != len(e):
            raise ValueError(f"layer {layer}: needs >= 1 candidate, each with bytes and error")
        if any(x < 0 for x in b) or any(not math.isfinite(x) or x < 0 for x in e):
            raise ValueError(f"layer {layer}: bytes and errors must be finite and >= 0")


def solve(bytes_: list[list[int]], errors: list[list[float]], budget: float,
          bins: int = 1000) -> Plan | None:
    """Minimum-bytes choice with sum of errors <= budget, errors rounded up to budget/bins.

    Returns None when no combination fits (every layer's least-error candidate still exceeds
    the budget after rounding).
    """
    validate_problem(bytes_, errors, budget, bins)
    n_layers = len(bytes_)
    if n_layers == 0:
        return Plan((), 0, 0.0)
    unit = budget / bins if budget > 0 else 0.0
    inf = np.iinfo(np.int64).max // 4
    best = np.full(bins + 1, inf, dtype=np.int64)  # best[b]: min bytes using exactly <= b bins
    best[0] = 0
    back = np.zeros((n_layers, bins + 1), dtype=np.int32)
    for layer in range(n_layers):
        nxt = np.full(bins + 1, inf, dtype=np.int64)
        arg = np.zeros(bins + 1, dtype=np.int32)
        for c, (nbytes, err) in enumerate(zip(bytes_[layer], errors[layer])):
            cost = _bins(err, unit, bins)
            if cost > bins:
                continue
            cand = np.full(bins + 1, inf, dtype=np.int64)
            cand[cost:] = best[: bins + 1 - cost] + nbytes
            better = cand < nxt
            nxt[better] = cand[better]
            arg[better] = c
        best, back[layer] = nxt, arg
    # any total bin count <= bins is feasible: take the cheapest, fewest bins on ties
    end = int(np.argmin(best))
    if best[end] >= inf:
        return None
    choice = [0] * n_layers
    b = end
    for layer in range(n_layers - 1, -1, -1):
        c = int(back[layer, b])
        choice[layer] = c
        b -= _bins(errors[layer][c], unit, bins)
    total_bytes = sum(bytes_[i][c] for i, c in enumerate(choice))
    total_error = sum(errors[i][c] for i, c in enumerate(choice))
    return Plan(tuple(choice), int(total_bytes), float(total_error))


def _bins(err: float, unit: float, bins: int) -> int:
    if err <= 0:
        return 0
    if unit <= 0:
        return bins + 1  # zero budget: only error-free candidates fit
    return math.ceil(err / unit - 1e-9)
