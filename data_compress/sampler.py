"""InfoBatch-style dynamic pruning (Qin et al., ICLR 2024) that stays correct under DDP.

Each epoch, samples whose last recorded loss is below the mean of all recorded losses are "well
learned"; each of them is skipped with probability ``prune_ratio``, and the ones kept get loss
weight 1 / (1 - prune_ratio), so the expected gradient is unchanged. The last ``anneal``
fraction of epochs trains on everything with weight 1. Samples never scored are always kept.

Under DDP every rank must draw the same kept set, or ranks iterate different numbers of batches
and DDP hangs. So the decision is a pure function of (seed, epoch, scores), and scores are
identical on every rank: ``set_epoch`` first sums every rank's recorded (loss, count) per sample
with one all-reduce of 2n floats, then draws. Ranks take interleaved shards of the kept list,
padded like ``DistributedSampler`` so all ranks see the same number of samples.

    sampler = InfoBatchSampler(len(ds), epochs=E)
    loader = DataLoader(IndexedDataset(ds), sampler=sampler, batch_size=B)
    for epoch in range(E):
        sampler.set_epoch(epoch)                     # collective: every rank calls it
        for idx, (x, y) in loader:
            per_sample = F.cross_entropy(model(x), y, reduction="none")
            (per_sample * sampler.weights(idx)).mean().backward()
            sampler.record(idx, per_sample)
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.distributed as dist
from torch.utils.data import Dataset, Sampler

from distcomp.comm import wait_work


class IndexedDataset(Dataset):
    """Yields (index, item) so the training loop knows which samples a batch holds."""

    def __init__(self, base: Dataset):
        self.base = base

    def __len__(self) -> int:
        return len(self.base)

    def __getitem__(self, i: int):
        return i, self.base[i]


class InfoBatchSampler(Sampler[int]):
    """Fields: scores (n,) float64, last recorded loss per sample (NaN: never scored);
    kept (m,) int64, this epoch's kept samples (all ranks); pruned_weight, the loss weight of
    kept well-learned samples this epoch (1 in annealing epochs)."""

    def __init__(self, n: int, *, epochs: int, prune_ratio: float = 0.5, anneal: float = 0.125,
                 seed: int = 0, shuffle: bool = True, num_replicas: int | None = None,
                 rank: int | None = None, timeout_s: float = 300.0):
        if not 0 <= prune_ratio < 1:
            raise ValueError(f"prune_ratio must be in [0, 1), got {prune_ratio!r}")
        if not 0 <= anneal <= 1:
            raise ValueError(f"anneal must be in [0, 1], got {anneal!r}")
        if n < 1 or epochs < 1:
            raise ValueError(f"need n >= 1 and epochs >= 1, got n={n}, epochs={epochs}")
        ddp = dist.is_available() and dist.is_initialized()
        self.world = num_replicas if num_replicas is not None else (
            dist.get_world_size() if ddp else 1)
        self.rank = rank if rank is not None else (dist.get_rank() if ddp else 0)
        self.n, self.epochs, self.prune_ratio, self.anneal = n, epochs, prune_ratio, anneal
        self.seed, self.shuffle, self.timeout_s = seed, shuffle, timeout_s
        self.scores = np.full(n, np.nan)
        self._sum = torch.zeros(n, dtype=torch.float64)
        self._count = torch.zeros(n, dtype=torch.float64)
        self.epoch = 0
        self.pruned_weight = 1.0
        self._weight = np.ones(n)
        self.kept = np.arange(n)

    def record(self, indices, losses) -> None:
        """Per-sample losses (any shape (b,)) of the samples ``indices`` this rank trained on."""
        idx = torch.as_tensor(indices, dtype=torch.int64).reshape(-1)
        loss = torch.as_tensor(losses).detach().reshape(-1).to(torch.float64).cpu()
        self._sum.index_add_(0, idx, loss)
        self._count.index_add_(0, idx, torch.ones_like(loss))

    def weights(self, indices) -> torch.Tensor:
        """Loss weights (b,) float32 for the samples ``indices``."""
        return torch.as_tensor(self._weight[np.asarray(indices).reshape(-1)], dtype=torch.float32)

    def set_epoch(self, epoch: int) -> None:
        """Fold every rank's recorded losses into the scores (collective), then draw the kept
        set of ``epoch``: identical on all ranks."""
        both = torch.stack([self._sum, self._count])
        if self.world > 1:
            work = dist.all_reduce(both, async_op=True)
            wait_work(work, "all_reduce of per-sample losses", self.timeout_s)
        seen = both[1] > 0
        self.scores[seen.numpy()] = (both[0][seen] / both[1][seen]).numpy()
        self._sum.zero_()
        self._count.zero_()
        self.epoch = epoch
        self._draw()

    def _draw(self) -> None:
        rng = np.random.default_rng([self.seed, self.epoch])
        scored = ~np.isnan(self.scores)
        self._weight = np.ones(self.n)
        annealing = self.epoch >= math.ceil(self.epochs * (1 - self.anneal))
        if annealing or self.prune_ratio == 0 or not scored.any():
            self.kept, self.pruned_weight = np.arange(self.n), 1.0
            return
        easy = scored & (self.scores < self.scores[scored].mean())
        drop = easy & (rng.random(self.n) < self.prune_ratio)
        self.pruned_weight = 1.0 / (1.0 - self.prune_ratio)
        self._weight[easy & ~drop] = self.pruned_weight
        self.kept = np.flatnonzero(~drop)

    def _order(self) -> np.ndarray:
        kept = self.kept
        if self.shuffle:
            kept = kept[np.random.default_rng([self.seed, self.epoch, 1]).permutation(len(kept))]
        total = math.ceil(len(kept) / self.world) * self.world
        kept = np.resize(kept, total)  # pad by repeating from the start, like DistributedSampler
        return kept[self.rank::self.world]

    def __iter__(self):
        return iter(self._order().tolist())

    def __len__(self) -> int:
        return math.ceil(len(self.kept) / self.world)

    def state_dict(self) -> dict:
        return {"scores": self.scores.copy(), "epoch": self.epoch}

    def load_state_dict(self, state: dict) -> None:
        if len(state["scores"]) != self.n:
            raise ValueError(f"state holds {len(state['scores'])} scores, sampler has {self.n}")
        self.scores = np.asarray(state["scores"], dtype=np.float64).copy()
        self.epoch = int(state["epoch"])
        self._draw()
