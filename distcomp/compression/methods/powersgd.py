"""PowerSGD low-rank compression (Vogels et al., NeurIPS 2019), one power iteration per step.

A gradient of shape (n, ...) is viewed as a matrix M of shape (n, m), m = prod(shape[1:]) (conv
weights (out, in, kh, kw) become (out, in*kh*kw)). With a warm-started Q of shape (m, r):

    P = M Q            (n, r)   summed over ranks with all-reduce
    P = orth(P)                 identical on every rank, since all hold the same summed P
    Q = M^T P          (m, r)   summed over ranks with all-reduce; kept as next step's warm start
    M_hat = P Q^T / W  (n, m)   the average over W ranks of the rank-r approximations

Because P is shared, compression is linear (M -> P P^T M), so the sum of the ranks' compressed
matrices is the compression of their sum. Bytes per step: 4 * r * (n + m).

Row blocks (FSDP2's shards): where the rows of M are split over the L ranks of a node, each
holding a block X_j (n_j, m), compressing each block on its own would send L factors Q (m, r)
per node. Instead the node runs the one power iteration on M itself (:meth:`PowerSGD.reduce`
with ``exchange.rows``): P_j = X_j Q crosses the slow link summed over nodes, the node
all-gathers the blocks of P and orthogonalizes all of P as one rank would, Y = sum_j X_j^T P_j
is summed inside the node, and each rank sends 1/L of Y's rows across. Slow-link bytes per
node: 4 r (n + m), the unsharded tensor's, against 4 r (n + L m).

L-GreCo's error for rank r is the SVD tail ||M - M_r||_F from the top singular values (exact
SVD for small matrices, randomized subspace iteration for large ones): a lower bound for what
one warm-started power iteration achieves.
"""

from __future__ import annotations

import math
import zlib
from dataclasses import dataclass

import torch

from distcomp.comm import Comm, split_like
from distcomp.compression.compressor import FP32_BYTES, Compressor, Exchange, Item, Reduced
from distcomp.knobs import Knobs, knob


def matrix_shape(shape: torch.Size) -> tuple[int, int]:
    """(n, m): rows = first dim, columns = product of the rest."""
    return int(shape[0]), int(math.prod(shape[1:]))


@dataclass(frozen=True)
class PowerSGDOptions(Knobs):
    """rank: PowerSGD rank. Higher = closer to exact, more bytes: 4 r (n + m) per matrix."""

    rank: int = knob(8, low=1)


@dataclass(frozen=True)
class PowerSGDPlan(Knobs):
    """L-GreCo's PowerSGD candidates: the integer ranks in [ceil(gamma r), floor(beta r)]."""

    gamma: float = knob(0.5, low=0.0, high=1e6, low_open=True)
    beta: float = knob(2.0, low=0.0, high=1e6, low_open=True)

    def check(self) -> None:
        if self.beta < self.gamma:
            raise ValueError(f"beta must be >= gamma ({self.gamma}), got {self.beta!r}")


class PowerSGD(Compressor):
    """Rank-r PowerSGD. Setting: ``rank``, capped per tensor at min(n, m)."""

    name = "powersgd"
    knob = "rank"
    Options = PowerSGDOptions
    Plan = PowerSGDPlan
    joins_row_blocks = True

    def eligible(self, shape: torch.Size) -> bool:
        return len(shape) >= 2

    def effective_rank(self, shape: torch.Size, rank: int) -> int:
        n, m = matrix_shape(shape)
        return max(1, min(int(rank), n, m))

    def wire_bytes(self, shape: torch.Size, setting: float) -> int:
        n, m = matrix_shape(shape)
        return FP32_BYTES * self.effective_rank(shape, setting) * (n + m)

    def gentle(self, setting: float) -> int:
        return 4 * int(setting)

    def initial_q(
        self, shape: torch.Size, rank: int, seed: int, key: str, device: torch.device | str = "cpu"
    ) -> torch.Tensor:
        """(m, r) standard normal, the same on every rank: seeded by ``seed`` and the tensor key."""
        _, m = matrix_shape(shape)
        r = self.effective_rank(shape, rank)
        gen = torch.Generator().manual_seed((seed * 1_000_003 + zlib.crc32(key.encode())) % 2**63)
        return torch.randn(m, r, generator=gen).to(device)

    def reduce(self, items: list[Item], exchange: Exchange,
               memory: dict[str, torch.Tensor]) -> list[Reduced] | None:
        """P = M Q rides the first round; orth(P); Q = M^T P in a second all-reduce; Q is the
        warm start kept in ``memory`` (fresh columns appended where the rank grew). With
        ``exchange.rows`` the items are row blocks, compressed jointly with the node's other
        blocks (the module docstring)."""
        ms = [as_matrix(it.x) for it in items]
        qs = []
        for it, m in zip(items, ms):
            shape = it.x.shape if exchange.rows is None else it.shape
            r = self.effective_rank(shape, it.setting)
            q = memory.get(it.key)
            if q is None or q.shape[1] < r:
                fresh = self.initial_q(shape, r, exchange.seed, it.key, m.device)
                q = fresh if q is None else torch.cat([q.to(m.device), fresh[:, q.shape[1]:]], 1)
            qs.append(q[:, :r].to(m.device))
        done = exchange.first_round([m @ q for m, q in zip(ms, qs)], None)
        if done is None:
            return None
        if exchange.rows is not None:
            return _reduce_row_blocks(items, ms, done[0], exchange, memory)
        ps = [orthogonalize(p) for p in done[0]]
        q_local = [m.t() @ p for m, p in zip(ms, ps)]
        q_flat = exchange.comm.all_reduce_sum(torch.cat([q.reshape(-1) for q in q_local])).wait()
        out, world = [], exchange.comm.world_size
        for it, p, ql, q_sum in zip(items, ps, q_local, split_like(q_flat, q_local)):
            own = (p @ ql.t()).view_as(it.x) if exchange.keep_own else None
            memory[it.key] = q_sum.clone()
            out.append(Reduced((p @ q_sum.t()).view_as(it.x) / world, own,
                               FP32_BYTES * (p.numel() + ql.numel()), "allreduce"))
        return out

    def candidates(self, uniform: float, shape: torch.Size, plan: PowerSGDPlan) -> list[float]:
        cap = min(matrix_shape(shape))
        lo = max(1, math.ceil(plan.gamma * uniform))
        return list(range(lo, min(cap, math.floor(plan.beta * uniform)) + 1))

    def candidate_errors(self, g: torch.Tensor, settings: list[float]) -> list[float]:
        m = as_matrix(g.detach().float())
        top = top_singular_values(m, int(max(settings))).double().pow(2)
        total = float(m.double().pow(2).sum())
        head = [0.0] + top.cumsum(0).tolist()  # head[r] = sum of the r largest s_i^2
        return [math.sqrt(max(0.0, total - head[min(int(r), len(head) - 1)]))
                if int(r) < min(m.shape) else 0.0 for r in settings]


def _reduce_row_blocks(items: list[Item], ms: list[torch.Tensor], ps: list[torch.Tensor],
                       exchange: Exchange, memory: dict[str, torch.Tensor]) -> list[Reduced]:
    """The rest of one power iteration on matrices whose rows are split over ``exchange.rows``
    (L ranks, block j on rank j, ceil(n / L) rows each, the last ones short or empty); ``ps``
    this rank's blocks of P summed over the peers. Three node collectives (the fast link) and
    one peer all-reduce of 1/L of Y's rows (the slow one)."""
    node, peers = exchange.rows, exchange.comm
    blocks, j = node.world_size, node.rank
    whole = [matrix_shape(it.shape) for it in items]
    row_per = [-(-n // blocks) for n, _ in whole]
    p_blocks = gather_blocks(node, ps, row_per)
    ps = [orthogonalize(full[:n])[j * c : j * c + m.shape[0]]
          for full, (n, _), c, m in zip(p_blocks, whole, row_per, ms)]
    ys = [m.t() @ p for m, p in zip(ms, ps)]  # (m, r): this node's M^T P once summed
    flat = node.all_reduce_sum(torch.cat([y.reshape(-1) for y in ys])).wait()
    ys = split_like(flat, ys)
    col_per = [-(-m // blocks) for _, m in whole]
    mine = [y[j * c : (j + 1) * c] for y, c in zip(ys, col_per)]
    flat = peers.all_reduce_sum(torch.cat([s.reshape(-1) for s in mine])).wait()
    q_sums = gather_blocks(node, split_like(flat, mine), col_per)
    out = []
    for it, (_, m), p, y, s, q in zip(items, whole, ps, ys, mine, q_sums):
        q = q[:m]
        memory[it.key] = q.clone()
        own = (p @ y.t()).view_as(it.x) if exchange.keep_own else None
        out.append(Reduced((p @ q.t()).view_as(it.x) / peers.world_size, own,
                           FP32_BYTES * (p.numel() + s.numel()), "allreduce"))
    return out


def gather_blocks(comm: Comm, blocks: list[torch.Tensor], rows: list[int]) -> list[torch.Tensor]:
    """Each tensor's row blocks from every rank of ``comm`` stacked in rank order, in one
    all-gather: block i of tensor t (at most rows[t] rows, zero-padded to it) -> rows
    [i rows[t], (i + 1) rows[t]) of the result (world * rows[t], cols)."""
    padded = [torch.cat([b, b.new_zeros(c - b.shape[0], b.shape[1])]) for b, c in zip(blocks, rows)]
    gathered = comm.all_gather(torch.cat([b.reshape(-1) for b in padded])).wait()
    out, offset = [], 0
    for b in padded:
        out.append(gathered[:, offset : offset + b.numel()].reshape(-1, b.shape[1]))
        offset += b.numel()
    return out


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


def top_singular_values(m: torch.Tensor, k: int, oversample: int = 8, iters: int = 4,
                        seed: int = 0) -> torch.Tensor:
    """The k largest singular values of m (n, m'). Exact (svdvals) for small matrices; for large
    ones randomized subspace iteration (Halko et al. 2011) with a private generator, so the
    caller's RNG stream is untouched: O(n m' (k + oversample) iters) instead of a full SVD."""
    p = k + oversample
    if min(m.shape) <= 2 * p:
        return torch.linalg.svdvals(m)[:k]
    gen = torch.Generator(device=m.device).manual_seed(seed)
    q = torch.randn(m.shape[1], p, generator=gen, device=m.device, dtype=m.dtype)
    for _ in range(iters):
        y = torch.linalg.qr(m @ q).Q
        q = torch.linalg.qr(m.t() @ y).Q
    return torch.linalg.svdvals(m @ q)[:k]
