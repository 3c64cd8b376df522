"""Top-k with momentum correction (DGC) behind an unchanged ``SGD(momentum=m)``: on real ranks
the parameters follow Deep Gradient Compression's update, computed here by hand; the density
warm-up follows its schedule."""

from __future__ import annotations

import pytest
import torch
import torch.distributed as dist

from distcomp import CompressedReducer, CompressionConfig
from tests.multiproc import run_ranks

M, LR, DENSITY = 0.9, 0.1, 0.1


def _grad(rank: int, step: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(100 * step + rank)
    return torch.randn(12, 10, generator=g) + (rank + 1) * 0.3


def _dgc_by_hand(rank, world, steps, warmup):
    """Momentum SGD for ``warmup`` dense steps, then DGC (Lin et al., Algorithm: momentum
    correction, momentum-factor masking) on the same gradients."""
    w = torch.zeros(12, 10)
    buf = torch.zeros_like(w)  # the dense steps' momentum buffer (identical on all ranks)
    u = v = None
    k = round(DENSITY * w.numel())
    for step in range(steps):
        g = _grad(rank, step)
        if step < warmup:
            avg = g.clone()
            dist.all_reduce(avg)
            buf = M * buf + avg / world
            w -= LR * buf
            continue
        if u is None:  # DGC starts from the momentum the run has
            u, v = buf.clone(), torch.zeros_like(w)
        u = M * u + g
        v = v + u
        idx = v.reshape(-1).abs().topk(k).indices
        sparse = torch.zeros(w.numel())
        sparse[idx] = v.reshape(-1)[idx]
        parts = [torch.zeros_like(sparse) for _ in range(world)]
        dist.all_gather(parts, sparse)
        w -= LR * torch.stack(parts).sum(0).view_as(w) / world
        v.reshape(-1)[idx] = 0
        u.reshape(-1)[idx] = 0
    return w


def _ours(rank, world, steps, warmup):
    from distcomp.comm import TorchComm

    w = torch.nn.Parameter(torch.zeros(12, 10))
    opt = torch.optim.SGD([w], lr=LR, momentum=M)
    red = CompressedReducer(CompressionConfig("topk", density=DENSITY, momentum=M,
                                              warmup_steps=warmup, accordion=False), rank)
    comm = TorchComm()
    for step in range(steps):
        w.grad = _grad(rank, step)
        red.reduce([w.grad], ["w"], comm, step)
        opt.step()
    return w.detach()


def _compare(rank, world):
    return {warmup: float((_ours(rank, world, 12, warmup) - _dgc_by_hand(rank, world, 12, warmup))
                          .abs().max()) for warmup in (0, 4)}


def test_sgd_momentum_behind_the_hook_takes_dgc_steps():
    for rec in run_ranks(_compare):
        for warmup, diff in rec.items():
            assert diff < 1e-5, (warmup, diff)


def _plain_ef_differs(rank, world):
    """Control: without momentum correction the same optimizer takes other steps, so the
    comparison above can fail."""
    from distcomp.comm import TorchComm

    w = torch.nn.Parameter(torch.zeros(12, 10))
    opt = torch.optim.SGD([w], lr=LR, momentum=M)
    red = CompressedReducer(CompressionConfig("topk", density=DENSITY, warmup_steps=0,
                                              accordion=False), rank)
    for step in range(12):
        w.grad = _grad(rank, step)
        red.reduce([w.grad], ["w"], TorchComm(), step)
        opt.step()
    return float((w.detach() - _dgc_by_hand(rank, world, 12, 0)).abs().max())


def test_plain_error_feedback_is_not_dgc():
    assert all(diff > 1e-2 for diff in run_ranks(_plain_ef_differs))


def test_density_warmup_falls_exponentially_from_a_quarter():
    red = CompressedReducer(CompressionConfig("topk", density=0.01, warmup_steps=10,
                                              density_warmup_steps=100, accordion=False,
                                              min_compression_rate=1.0))
    shape = torch.Size([100, 100])
    used = [red.setting_for("w", shape, step) for step in range(10, 120)]
    assert used[0] == pytest.approx(0.25)
    assert used[50] == pytest.approx((0.25 * 0.01) ** 0.5)  # halfway: the geometric mean
    assert used[100:] == [0.01] * 10
    assert all(a > b for a, b in zip(used[:100], used[1:101]))
