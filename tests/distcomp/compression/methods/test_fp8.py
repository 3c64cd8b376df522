"""fp8: one byte per element and a scale per block; its rounding error is the format's, a block
keeps an outlier from flattening its neighbours, and the ranks' decodings add up (2 real gloo
ranks)."""

from __future__ import annotations

import math

import pytest
import torch

from distcomp import CompressedReducer, CompressionConfig, get_compressor
from distcomp.comm import TorchComm
from tests.multiproc import run_ranks


def randn(*shape, seed=0):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("n", [1, 7, 128, 1000])
@pytest.mark.parametrize("block", [0, 1, 32, 128, 4096])
@pytest.mark.parametrize("fmt", ["e4m3", "e5m2"])
def test_payload_is_one_byte_per_element_and_a_scale_per_block(n, block, fmt):
    c = get_compressor("fp8", fp8_format=fmt)
    payload = c.encode(randn(n), block)
    blocks = 1 if block == 0 else math.ceil(n / min(block, n))
    assert payload.numel() == c.wire_bytes(torch.Size([n]), block) == 4 * blocks + n


@pytest.mark.parametrize("fmt, mantissa", [("e4m3", 3), ("e5m2", 2)])
def test_rounding_error_is_half_a_unit_in_the_last_place(fmt, mantissa):
    c = get_compressor("fp8", fp8_format=fmt)
    x = randn(4096, seed=1)
    out = c.roundtrip(x, 0)
    dtype = {"e4m3": torch.float8_e4m3fn, "e5m2": torch.float8_e5m2}[fmt]
    scale = x.abs().max() / torch.finfo(dtype).max
    smallest = scale * torch.finfo(dtype).tiny * 2.0 ** -mantissa  # the subnormal step
    bound = x.abs() * 2.0 ** -(mantissa + 1) + smallest / 2
    assert bool(((out - x).abs() <= bound * (1 + 1e-6)).all())
    assert torch.equal(out.sign()[out != 0], x.sign()[out != 0])
    assert out.abs().max() == x.abs().max()  # the largest magnitude travels exactly


def test_a_block_keeps_an_outlier_from_flattening_its_neighbours():
    c = get_compressor("fp8")
    x = randn(1024, seed=2) * 1e-3
    x[0] = 1e3  # one huge entry in the first block of 128
    per_tensor, per_block = (float((c.roundtrip(x, s) - x)[128:].norm()) for s in (0, 128))
    assert per_block < 0.1 * per_tensor
    assert c.milder(128, 0) and c.milder(32, 128) and not c.milder(0, 1024)
    assert c.gentle(0) == 128 and c.gentle(128) == 32


@pytest.mark.parametrize("block", [0, 32, 256])
def test_candidate_errors_are_the_exact_rounding_errors(block):
    c = get_compressor("fp8")
    g = randn(64, 50, seed=3)
    (err,) = c.candidate_errors(g, [block])
    assert math.isclose(err, float((g - c.roundtrip(g, block)).norm()), rel_tol=1e-5)


def _reduce(rank, world, fmt):
    config = CompressionConfig("fp8", fp8_format=fmt, warmup_steps=0, accordion=False,
                               min_compression_rate=0.0)
    reducer = CompressedReducer(config, rank=rank)
    x = randn(40, 30, seed=rank)
    grad = x.clone()
    reducer.reduce([grad], ["w"], TorchComm(None, timeout_s=30), step=0)
    return {"x": x, "avg": grad, "residual": reducer.residuals["w"]}


@pytest.mark.parametrize("fmt", ["e4m3", "e5m2"])
def test_two_ranks_average_what_each_decodes_and_keep_their_own_error(fmt):
    a, b = run_ranks(_reduce, fmt=fmt)
    assert torch.equal(a["avg"], b["avg"])
    c = get_compressor("fp8", fp8_format=fmt)
    s = c.setting  # the default: one scale per tensor
    expected = (c.roundtrip(a["x"], s) + c.roundtrip(b["x"], s)) / 2
    torch.testing.assert_close(a["avg"], expected, rtol=1e-6, atol=1e-7)
    torch.testing.assert_close(a["residual"], a["x"] - c.roundtrip(a["x"], s))
    assert float(a["avg"].sub((a["x"] + b["x"]) / 2).norm()) < 0.1 * float(a["avg"].norm())
