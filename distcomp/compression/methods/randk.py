"""Random-k sparsification with a shared seed: every rank sends the same k coordinates, so the
values are summed by the bucket's all-reduce and no index crosses the wire.

Top-k must send an index with every value (8 bytes per kept entry) and all-gather, since each
rank keeps different entries. Here the coordinates come from random numbers seeded by (seed,
step, tensor) alone, identical on every rank: the payload is k fp32 values (4 bytes each),
summable like any dense tensor, riding the first all-reduce of the bucket beside the
uncompressed layers, and its cost does not grow with the number of ranks.

Selection, O(k) instead of a permutation's O(n): the n coordinates are cut into k strata of
n / k (their sizes differ by at most one) and one coordinate is drawn uniformly from each, so
exactly k distinct coordinates, each sent with probability 1 / (its stratum's size) ~ k / n.
With error feedback (the reducer's default) the values go as they are and the residual keeps
the rest: a contraction that converges like SGD (Stich et al., NeurIPS 2018). Without it each
value is scaled by its stratum's size, so the average is unbiased.

Random-k ignores magnitudes, so at equal density it drops more of the gradient than top-k and
needs a higher density for the same error: L-GreCo's error for density d is the expected
||x - C(x)|| = ||x|| sqrt(1 - k / n), its candidates a quarter to four times the user's
density. Its options are top-k's (:class:`~distcomp.compression.dgc.SparseOptions`): with
momentum SGD the same momentum correction keeps delayed entries from being replayed.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from distcomp.compression.compressor import FP32_BYTES, Compressor, Exchange, Item, Reduced
from distcomp.compression.dgc import SparseOptions, Sparsifier
from distcomp.knobs import Knobs, knob


@dataclass(frozen=True)
class RandKOptions(SparseOptions):
    """density: fraction of coordinates sent (4 bytes each), the same on every rank."""

    density: float = knob(0.1, low=0.0, high=1.0, low_open=True)


class RandK(Sparsifier, Compressor):
    """Random-k over strata, coordinates shared by all ranks. Setting: ``density``."""

    name = "randk"
    knob = "density"
    Options = RandKOptions

    @staticmethod
    def k_for(numel: int, density: float) -> int:
        return min(numel, max(1, round(density * numel)))

    def eligible(self, shape: torch.Size) -> bool:
        return len(shape) >= 2  # biases and norm weights are small: never worth the error

    def wire_bytes(self, shape: torch.Size, setting: float) -> int:
        return FP32_BYTES * self.k_for(math.prod(shape), setting)

    def coordinates(self, numel: int, density: float, generator: torch.Generator | None,
                    device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        """(k coordinates, one per stratum, sorted; each stratum's size)."""
        k = self.k_for(numel, density)
        edges = torch.div(torch.arange(k + 1, device=device) * numel, k, rounding_mode="floor")
        sizes = edges[1:] - edges[:-1]
        draw = torch.rand(k, generator=generator, device=device, dtype=torch.float64)
        offset = (draw * sizes).long().clamp_(max=sizes - 1)
        return edges[:-1] + offset, sizes

    def reduce(self, items: list[Item], exchange: Exchange,
               memory: dict[str, torch.Tensor]) -> list[Reduced] | None:
        """The kept values of every item join the first round's all-reduce; each rank puts the
        sum back at the same coordinates."""
        picks, values = [], []
        for it in items:
            flat = it.x.reshape(-1)
            idx, sizes = self.coordinates(flat.numel(), it.setting,
                                          exchange.generator(it.key, shared=True), flat.device)
            v = flat[idx]
            if not exchange.keep_own:  # no residual to keep the rest: unbiased instead
                v = v * sizes.to(v.dtype)
            picks.append(idx)
            values.append(v)
        done = exchange.first_round(values, None)
        if done is None:
            return None
        world, out = exchange.comm.world_size, []
        for it, idx, own, total in zip(items, picks, values, done[0]):
            avg = torch.zeros(it.x.numel(), dtype=torch.float32, device=it.x.device)
            avg[idx] = total / world
            mine = None
            if exchange.keep_own:
                mine = torch.zeros_like(avg)
                mine[idx] = own
                mine = mine.view_as(it.x)
            out.append(Reduced(avg.view_as(it.x), mine, FP32_BYTES * idx.numel(), "allreduce"))
        return out

    def candidates(self, uniform: float, shape: torch.Size, plan: Knobs | None) -> list[float]:
        """Densities from a quarter to four times the user's, by factors of 2 (at most 1)."""
        return [min(1.0, uniform * 2.0**e) for e in (-2, -1, 0, 1, 2)]

    def candidate_errors(self, g: torch.Tensor, settings: list[float]) -> list[float]:
        n = g.numel()
        norm = float(g.detach().double().norm())
        return [norm * math.sqrt(max(0.0, 1.0 - self.k_for(n, d) / n)) for d in settings]
