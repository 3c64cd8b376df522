"""Small models and deterministic data shared by the distributed tests."""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F


class ConvNet(nn.Module):
    """Conv weight (4-D), linear weights, biases, a LayerNorm, a frozen parameter and a branch
    that is never used in forward: every kind of parameter a hook must handle."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv1d(2, 8, 3)
        self.fc1 = nn.Linear(8 * 14, 64)
        self.norm = nn.LayerNorm(64)
        self.fc2 = nn.Linear(64, 10)
        self.unused = nn.Linear(5, 5)
        self.frozen = nn.Parameter(torch.ones(10), requires_grad=False)

    def forward(self, x):
        h = F.relu(self.conv(x)).flatten(1)
        h = F.relu(self.norm(self.fc1(h)))
        return self.fc2(h) * self.frozen


def convnet_batch(rank: int, step: int, batch: int = 16):
    g = torch.Generator().manual_seed(1000 * step + rank)
    return torch.randn(batch, 2, 16, generator=g), torch.randint(0, 10, (batch,), generator=g)


def convnet_steps(model: nn.Module, opt: torch.optim.Optimizer, rank: int, start: int,
                  n: int) -> None:
    """Train steps ``start`` .. ``start + n - 1`` on ``convnet_batch``'s data."""
    for step in range(start, start + n):
        x, y = convnet_batch(rank, step)
        opt.zero_grad()
        F.cross_entropy(model(x), y).backward()
        opt.step()


class Teacher:
    """A fixed random 2-layer network labels Gaussian inputs: a learnable, offline task."""

    def __init__(self, dim: int = 32, classes: int = 10, seed: int = 1234):
        g = torch.Generator().manual_seed(seed)
        self.w1 = torch.randn(dim, 64, generator=g) / dim**0.5
        self.w2 = torch.randn(64, classes, generator=g) / 8
        self.dim = dim

    def batch(self, seed: int, n: int):
        g = torch.Generator().manual_seed(seed)
        x = torch.randn(n, self.dim, generator=g)
        return x, (torch.tanh(x @ self.w1) @ self.w2).argmax(1)


def mlp(dim: int = 32, hidden: int = 128, classes: int = 10) -> nn.Module:
    return nn.Sequential(
        nn.Linear(dim, hidden), nn.ReLU(), nn.Linear(hidden, hidden), nn.ReLU(),
        nn.Linear(hidden, classes),
    )
