"""EF-SignSGD: one bit per element and a scale per block, exactly; and error feedback is what
makes it train (on 2 real gloo ranks, beside plain DDP and the same signs without it)."""

from __future__ import annotations

import math

import pytest
import torch
from torch.nn import functional as F
from torch.nn.parallel import DistributedDataParallel as DDP

from distcomp import get_compressor
from distcomp.hooks import attach
from tests.multiproc import run_ranks


def randn(*shape, seed=0):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("n", [1, 7, 100, 1025])
@pytest.mark.parametrize("block", [0, 1, 8, 64, 4096])
def test_payload_is_one_bit_per_element_and_a_scale_per_block(n, block):
    c = get_compressor("signsgd")
    payload = c.encode(randn(n), block)
    blocks = 1 if block == 0 else math.ceil(n / min(block, n))
    assert payload.dtype == torch.uint8
    assert payload.numel() == c.wire_bytes(torch.Size([n]), block) == 4 * blocks + -(-n // 8)


def test_each_block_decodes_to_its_mean_magnitude_times_the_sign():
    c = get_compressor("signsgd")
    x = torch.tensor([1.0, -3.0, 2.0, -2.0, 0.0, 4.0])
    assert c.roundtrip(x, 0).tolist() == [2.0, -2.0, 2.0, -2.0, 2.0, 2.0]  # zero counts as +
    assert c.roundtrip(x, 4).tolist() == [2.0, -2.0, 2.0, -2.0, 2.0, 2.0]
    assert c.roundtrip(x, 2).tolist() == [2.0, -2.0, 2.0, -2.0, 2.0, 2.0]
    assert c.roundtrip(x, 1).tolist() == [1.0, -3.0, 2.0, -2.0, 0.0, 4.0]  # lossless


@pytest.mark.parametrize("block", [0, 32, 256, 1000])
def test_candidate_errors_are_the_exact_compression_errors(block):
    c = get_compressor("signsgd")
    g = randn(64, 70, seed=1) * torch.linspace(0.1, 10, 70)  # magnitudes that differ by column
    (err,) = c.candidate_errors(g, [block])
    assert math.isclose(err, float((g - c.roundtrip(g, block)).norm()), rel_tol=1e-4)


def test_smaller_blocks_are_milder_and_follow_the_gradient_better():
    c = get_compressor("signsgd")
    assert c.milder(64, 0) and c.milder(32, 64) and not c.milder(0, 1024)
    assert c.gentle(0) == 64 and c.gentle(256) == 64 and c.milder(c.gentle(0), 0)
    g = randn(128, 128, seed=2) * torch.logspace(-2, 1, 128)
    errors = c.candidate_errors(g, [0, 1024, 256, 64])
    assert errors == sorted(errors, reverse=True)


def _train(rank, world):
    """Least squares, the same data split over the ranks: final loss of plain DDP, of EF-SignSGD
    and of the same signs without error feedback."""
    out = {}
    for name, options in (("dense", None), ("ef", {}), ("no_ef", {"error_feedback": False})):
        torch.manual_seed(0)
        model = DDP(torch.nn.Linear(64, 32, bias=False))
        opt = torch.optim.SGD(model.parameters(), lr=0.2)
        state = None if options is None else attach(
            model, "signsgd", optimizer=opt, warmup_steps=0, accordion=False,
            min_compression_rate=1.0, **options)
        g = torch.Generator().manual_seed(0)
        target = torch.randn(32, 64, generator=g)
        losses = []
        for step in range(200):
            x = torch.randn(32, 64, generator=torch.Generator().manual_seed(step * 2 + rank))
            loss = F.mse_loss(model(x), x @ target.t())
            opt.zero_grad()
            loss.backward()
            opt.step()
            losses.append(loss.item())
        out[name] = sum(losses[-20:]) / 20
        if state is not None:
            out[f"{name}_collectives"] = dict(state.ledger.per_collective)
            state.close()
    return out


def test_error_feedback_makes_signs_train_like_sgd():
    for r in run_ranks(_train):
        assert r["ef"] < 0.5 * r["no_ef"], r  # the signs alone stall far above
        assert r["ef"] < 1.25 * r["dense"], r  # within a quarter of plain DDP's loss
        assert set(r["ef_collectives"]) == {"allgather", "allreduce"}  # bits gathered
