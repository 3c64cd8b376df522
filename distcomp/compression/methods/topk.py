"""Top-k sparsification: each rank sends the k largest-magnitude entries of a tensor.

Payload for n elements at density d: k = clamp(round(d * n), 1, n) fp32 values followed by k
int32 indices, 8 * k bytes, exchanged with all-gather (sparse supports differ between ranks, so
they cannot be summed in compressed form). Every rank scatter-adds all W payloads and divides by
W. Error feedback (in the reducer) keeps what was not sent, so small entries are delayed, not
lost; with momentum SGD, Deep Gradient Compression's momentum correction
(:mod:`distcomp.compression.dgc`) and density warm-up (:class:`SparseOptions`) keep the
delayed entries from being replayed by the optimizer's momentum.

L-GreCo's error for density d is the norm of all but the k largest entries (one partial sort
serves every candidate).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from distcomp.compression.compressor import FP32_BYTES, GatherCompressor, bytes_as
from distcomp.compression.dgc import SparseOptions, SparsePlan, Sparsifier

INDEX_BYTES = 4


@dataclass(frozen=True)
class TopKOptions(SparseOptions):
    """density: fraction of entries kept. Bytes: 8 per kept entry."""


class TopK(Sparsifier, GatherCompressor):
    """Per-tensor magnitude top-k. Setting: ``density`` in (0, 1]."""

    name = "topk"
    knob = "density"
    Options = TopKOptions
    Plan = SparsePlan

    def eligible(self, shape: torch.Size) -> bool:
        return len(shape) >= 2  # biases and norm weights are small: never worth the error

    @staticmethod
    def k_for(numel: int, density: float) -> int:
        return min(numel, max(1, round(density * numel)))

    def wire_bytes(self, shape: torch.Size, setting: float) -> int:
        return (FP32_BYTES + INDEX_BYTES) * self.k_for(math.prod(shape), setting)

    def encode(
        self, x: torch.Tensor, setting: float, generator: torch.Generator | None = None
    ) -> torch.Tensor:
        x = x.reshape(-1).float()
        k = self.k_for(x.numel(), setting)
        idx = torch.topk(x.abs(), k, sorted=False).indices
        values = x[idx].contiguous()
        return torch.cat([values.view(torch.uint8), idx.to(torch.int32).view(torch.uint8)])

    def _split(self, payload: torch.Tensor, numel: int, setting: float):
        k = self.k_for(numel, setting)
        values = bytes_as(payload[: FP32_BYTES * k], torch.float32)
        idx = bytes_as(payload[FP32_BYTES * k : (FP32_BYTES + INDEX_BYTES) * k], torch.int32)
        return values, idx.long()

    def decode(self, payload: torch.Tensor, numel: int, setting: float) -> torch.Tensor:
        values, idx = self._split(payload, numel, setting)
        out = torch.zeros(numel, dtype=torch.float32, device=payload.device)
        return out.index_add_(0, idx, values)

    def decode_rows(
        self, payloads: torch.Tensor, numel: int, setting: float, keep: int | None = None
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        # scatter every row into one buffer instead of materialising W dense decodings
        out = torch.zeros(numel, dtype=torch.float32, device=payloads.device)
        for row in payloads:
            values, idx = self._split(row, numel, setting)
            out.index_add_(0, idx, values)
        kept = None if keep is None else self.decode(payloads[keep], numel, setting)
        return out, kept

    def candidate_errors(self, g: torch.Tensor, settings: list[float]) -> list[float]:
        flat = g.detach().float().reshape(-1)
        total = float(flat.double().pow(2).sum())
        ks = [self.k_for(flat.numel(), d) for d in settings]
        # only the largest max(k) magnitudes matter: a partial top-k, not a full sort
        top = torch.topk(flat.abs(), max(ks), sorted=True).values.double().pow(2).cumsum(0)
        return [math.sqrt(max(0.0, total - float(top[k - 1]))) for k in ks]
