"""The smallest workload: a 3-layer MLP learning a fixed random teacher network.

Endless and offline (every batch is drawn from a seeded generator), so the launch scripts' demo,
their tests and the integration benchmarks need no dataset at all.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F


class TeacherTask:
    """Inputs x ~ N(0, I_32); label = argmax of a fixed random tanh network: offline, endless.

    batch_size: rows per rank and step; width: hidden units of the student MLP; seed: picks
    the batches (the teacher itself is fixed). ``batch(step, rank)`` is a pure function, so
    every arm and every rerun sees the same data.
    """

    def __init__(self, batch_size: int = 64, width: int = 256, seed: int = 0):
        g = torch.Generator().manual_seed(1234)
        self.w1 = torch.randn(32, 64, generator=g) / 32**0.5
        self.w2 = torch.randn(64, 10, generator=g) / 8
        self.batch_size, self.width, self.seed = batch_size, width, seed

    def model(self) -> nn.Module:
        return nn.Sequential(nn.Linear(32, self.width), nn.ReLU(),
                             nn.Linear(self.width, self.width), nn.ReLU(),
                             nn.Linear(self.width, 10))

    def batch(self, step: int, rank: int) -> tuple[torch.Tensor, torch.Tensor]:
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + step * 1009 + rank)
        x = torch.randn(self.batch_size, 32, generator=g)
        return x, (torch.tanh(x @ self.w1) @ self.w2).argmax(1)

    def loss(self, out: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(out, target)
