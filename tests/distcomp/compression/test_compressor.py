"""Single-process tests of the compressors' tensor math; multi-rank sums are simulated by
summing the per-rank payloads exactly as the collectives would."""

import math

import pytest
import torch

from distcomp import get_compressor
from distcomp.compression.methods.powersgd import (
    as_matrix,
    best_rank_error,
    orthogonalize,
    power_iteration,
)
from distcomp.compression.methods.qsgd import ALLOWED_BITS


def randn(*shape, seed=0):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


# -- sizes -------------------------------------------------------------------------------------
@pytest.mark.parametrize("n", [1, 7, 128, 1000, 4099])
@pytest.mark.parametrize("density", [0.001, 0.01, 0.3, 1.0])
def test_topk_payload_is_exactly_wire_bytes(n, density):
    c = get_compressor("topk")
    payload = c.encode(randn(n), density)
    k = min(n, max(1, round(density * n)))
    assert payload.dtype == torch.uint8
    assert payload.numel() == c.wire_bytes(torch.Size([n]), density) == 8 * k


@pytest.mark.parametrize("n", [1, 7, 128, 1000, 4099])
@pytest.mark.parametrize("bits", ALLOWED_BITS)
@pytest.mark.parametrize("bucket", [1, 64, 128])
def test_qsgd_payload_is_exactly_wire_bytes(n, bits, bucket):
    c = get_compressor("qsgd", qsgd_bucket_size=bucket)
    payload = c.encode(randn(n), bits)
    expected = 4 * math.ceil(n / bucket) + math.ceil(n * bits / 8)
    assert payload.numel() == c.wire_bytes(torch.Size([n]), bits) == expected


def test_powersgd_wire_bytes_and_rank_cap():
    c = get_compressor("powersgd")
    assert c.wire_bytes(torch.Size([64, 32]), 4) == 4 * 4 * (64 + 32)
    assert c.wire_bytes(torch.Size([16, 3, 3, 3]), 4) == 4 * 4 * (16 + 27)  # conv -> (16, 27)
    assert c.effective_rank(torch.Size([5, 3]), 10) == 3
    assert not c.eligible(torch.Size([10]))


def test_small_tensors_are_not_worth_compressing():
    ps, tk, qs = (get_compressor(n) for n in ("powersgd", "topk", "qsgd"))
    assert not ps.compresses(torch.Size([8, 8]), 4, 1.0)  # 4*4*16 = 256 bytes, dense 256
    assert ps.compresses(torch.Size([64, 64]), 4, 1.0)
    assert not ps.compresses(torch.Size([64]), 4, 0.0)  # biases never
    assert not tk.compresses(torch.Size([10, 10]), 0.5, 1.0)  # 8 * 50 = 400 = dense
    assert tk.compresses(torch.Size([10, 10]), 0.4, 1.0)
    assert not tk.compresses(torch.Size([10000]), 0.01, 1.0)  # 1-D: biases, norms
    assert not qs.compresses(torch.Size([10, 10]), 32, 1.0)
    assert qs.compresses(torch.Size([10, 10]), 32, 0.0)


# -- top-k -------------------------------------------------------------------------------------
def test_topk_keeps_largest_magnitudes():
    c = get_compressor("topk")
    x = torch.tensor([0.1, -5.0, 0.2, 3.0, -0.3, 0.0])
    out = c.roundtrip(x, 2 / 6)
    assert out.tolist() == [0.0, -5.0, 0.0, 3.0, 0.0, 0.0]


def test_topk_decode_sum_adds_overlapping_supports():
    c = get_compressor("topk")
    a, b = randn(50, seed=1), randn(50, seed=2)
    rows = torch.stack([c.encode(a, 0.2), c.encode(b, 0.2)])
    expected = c.roundtrip(a, 0.2) + c.roundtrip(b, 0.2)
    assert torch.allclose(c.decode_sum(rows, 50, 0.2), expected)


def test_topk_density_one_is_lossless():
    x = randn(333)
    assert torch.equal(get_compressor("topk").roundtrip(x, 1.0), x)


# -- QSGD --------------------------------------------------------------------------------------
@pytest.mark.parametrize("norm", ["max", "l2"])
@pytest.mark.parametrize("bits", [2, 4, 8])
def test_qsgd_is_unbiased(bits, norm):
    c = get_compressor("qsgd", qsgd_bucket_size=16, qsgd_norm=norm)
    x = randn(64, seed=3)
    gen = torch.Generator().manual_seed(0)
    trials = 1000
    mean = sum(c.roundtrip(x, bits, gen) for _ in range(trials)) / trials
    # one draw errs by at most one level step (scale / L), so its std is <= scale / (2 L);
    # the mean of `trials` draws stays within 6 standard errors
    scale = x.abs().max() if norm == "max" else x.view(4, 16).norm(dim=1).max()
    step = scale / (2 ** (bits - 1) - 1)
    assert (mean - x).abs().max() < 6 * step / (2 * math.sqrt(trials))


@pytest.mark.parametrize("bits", ALLOWED_BITS)
def test_qsgd_error_bounded_by_one_level(bits):
    c = get_compressor("qsgd", qsgd_bucket_size=32, qsgd_norm="max")
    x = randn(1000, seed=4)
    out = c.roundtrip(x, bits, torch.Generator().manual_seed(1))
    levels = 2 ** (bits - 1) - 1
    padded = torch.cat([x, torch.zeros(24)]).view(-1, 32)
    per_elem = padded.abs().amax(1).repeat_interleave(32)[:1000]
    assert ((out - x).abs() <= per_elem / levels + 1e-6).all()
    assert torch.equal(torch.sign(out[out != 0]), torch.sign(x[out != 0]))


def test_qsgd_32_bits_is_lossless():
    x = randn(5000, seed=5)
    out = get_compressor("qsgd").roundtrip(x, 32, torch.Generator().manual_seed(0))
    assert torch.allclose(out, x, atol=1e-6, rtol=0)


def test_qsgd_zero_bucket_decodes_to_zero():
    c = get_compressor("qsgd", qsgd_bucket_size=4)
    x = torch.tensor([0.0, 0, 0, 0, 1, -2, 0, 3])
    out = c.roundtrip(x, 4, torch.Generator().manual_seed(0))
    assert torch.equal(out[:4], torch.zeros(4))


# -- PowerSGD ----------------------------------------------------------------------------------
def simulate_powersgd(ms, q):
    """What W ranks compute with two all-reduces: returns the average approximation and the
    summed Q (next warm start)."""
    p = orthogonalize(sum(m @ q for m in ms))
    q_sum = sum(m.t() @ p for m in ms)
    return p @ q_sum.t() / len(ms), q_sum


def test_powersgd_full_rank_is_exact_for_the_average():
    for n, m in [(20, 30), (30, 20)]:
        ms = [randn(n, m, seed=s) for s in range(3)]
        q = randn(m, min(n, m), seed=9)
        approx, _ = simulate_powersgd(ms, q)
        assert torch.allclose(approx, sum(ms) / 3, atol=1e-5)


def test_powersgd_is_linear_projection_shared_by_ranks():
    ms = [randn(40, 25, seed=s) for s in range(2)]
    q = randn(25, 4, seed=7)
    approx, _ = simulate_powersgd(ms, q)
    p = orthogonalize(sum(m @ q for m in ms))
    per_rank = [p @ (p.t() @ m) for m in ms]  # each rank's own compressed contribution
    assert torch.allclose(approx, sum(per_rank) / 2, atol=1e-5)


def test_powersgd_warm_start_converges_to_best_rank_r():
    u, v = randn(60, 3, seed=1), randn(3, 50, seed=2)
    m = u @ v + 0.01 * randn(60, 50, seed=3)
    q = randn(50, 3, seed=4)
    for _ in range(10):  # one power iteration per step, warm-started
        p, q = power_iteration(m, q)
    err = (m - p @ q.t()).norm()
    assert err <= 1.01 * best_rank_error(m, 3)


def test_conv_weights_are_viewed_as_matrices():
    w = randn(16, 3, 3, 3)
    assert as_matrix(w).shape == (16, 27)


def test_initial_q_is_the_same_everywhere_and_differs_by_key():
    c = get_compressor("powersgd")
    a = c.initial_q(torch.Size([64, 32]), 4, seed=0, key="layer.weight")
    b = c.initial_q(torch.Size([64, 32]), 4, seed=0, key="layer.weight")
    other = c.initial_q(torch.Size([64, 32]), 4, seed=0, key="other.weight")
    assert torch.equal(a, b) and not torch.equal(a, other) and a.shape == (32, 4)
