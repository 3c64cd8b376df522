"""PowerSGD low-rank compression (Vogels et al., NeurIPS 2019), one power iteration per step.

A gradient of shape (n, ...) is viewed as a matrix M of shape (n, m), m = prod(shape[1:]) (conv
weights (out, in, kh, kw) become (out, in*kh*kw)). With a warm-started Q of shape (m, r):

    P = M Q            (n, r)   summed over ranks with all-reduce
    P = orth(P)                 identical on every rank, since all hold the same summed P
    Q = M^T P          (m, r)   summed over ranks with all-reduce; kept as next step's warm start
    M_hat = P Q^T / W  (n, m)   the average over W ranks of the rank-r approximations

Because P is shared, compression is linear (M -> P P^T M), so the sum of the ranks' compressed
matrices is the compression of their sum. Bytes per step: 4 * r * (n + m).
"""

from __future__ import annotations

import math
import zlib

import torch

from distcomp.compression.compressor import FP32_BYTES, Compressor, register


def matrix_shape(shape: torch.Size) -> tuple[int, int]:
    """(n, m): rows = first dim, columns = product of the rest."""
    return int(shape[0]), int(math.prod(shape[1:]))


@register
class PowerSGD(Compressor):
    """Rank-r PowerSGD. Setting: ``rank`` (int >= 1), capped per tensor at min(n, m)."""

    name = "powersgd"
    setting_name = "rank"
    family = "linear"

    def validate_setting(self, setting: float) -> int:
        if isinstance(setting, bool) or int(setting) != setting or setting < 1:
            raise ValueError(f"PowerSGD rank must be an integer >= 1, got {setting!r}")
        return int(setting)

    def eligible(self, shape: torch.Size) -> bool:
        return len(shape) >= 2

    def effective_rank(self, shape: torch.Size, rank: int) -> int:
        n, m = matrix_shape(shape)
        return max(1, min(int(rank), n, m))

    def wire_bytes(self, shape: torch.Size, setting: float) -> int:
        n, m = matrix_shape(shape)
        return FP32_BYTES * self.effective_rank(shape, setting) * (n + m)

    def initial_q(
        self, shape: torch.Size, rank: int, seed: int, key: str, device: torch.device | str = "cpu"
    ) -> torch.Tensor:
        """(m, r) standard normal, the same on every rank: seeded by ``seed`` and the tensor key."""
        _, m = matrix_shape(shape)
        r = self.effective_rank(shape, rank)
        gen = torch.Generator().manual_seed((seed * 1_000_003 + zlib.crc32(key.encode())) % 2**63)
        return torch.randn(m, r, generator=gen).to(device)


def as_matrix(t: torch.Tensor) -> torch.Tensor:
    """View a tensor of ndim >= 2 as its (n, m) matrix (no copy for contiguous tensors)."""
    return t.reshape(matrix_shape(t.shape))


def orthogonalize(p: torch.Tensor) -> torch.Tensor:
    """Orthonormal basis (n, r) of the column space of p (n, r), via reduced QR.

    Deterministic for identical input, so every rank derives the same basis from the summed P.
    Zero or dependent columns still yield orthonormal columns (Householder QR).
    """
    return torch.linalg.qr(p, mode="reduced").Q


def power_iteration(m: torch.Tensor, q: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """One rank-r power iteration on a single matrix: returns (P, Q) with M ~ P Q^T."""
    p = orthogonalize(m @ q)
    return p, m.t() @ p


def best_rank_error(m: torch.Tensor, rank: int) -> float:
    """||M - M_r||_F for the best rank-r approximation M_r (the SVD tail), a lower bound for
    what PowerSGD's single warm-started power iteration achieves."""
    s = torch.linalg.svdvals(m.float())
    return float(s[rank:].pow(2).sum().sqrt())
