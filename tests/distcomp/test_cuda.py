"""The compressors on a CUDA device against the same code on the CPU (``make gpu-check``).

Tolerances: PowerSGD's matrix products differ from the CPU's by float32 rounding (summation
order), so its round trip matches to 1e-4 relative; top-k copies values, so it matches exactly
(Gaussian data: no ties in the selection); bit-packing is integer work and matches exactly;
QSGD's stochastic rounding draws from the device's generator, so the CUDA round trip is checked
against what QSGD promises instead: the CPU decodes the CUDA payload to the same values, the
scales are the CPU's exactly, and every value lies within one level of its input.
"""

from __future__ import annotations

import os

import pytest
import torch

from benchmarks.micro.compressors import SETTINGS, one_round
from distcomp.compression.bitpack import pack_bits, unpack_bits
from distcomp.compression.compressor import get_compressor

# DISTCOMP_TEST_DEVICE=cpu runs these on the CPU against itself: a dry run of the test code
DEV = os.environ.get("DISTCOMP_TEST_DEVICE", "cuda")
pytestmark = pytest.mark.skipif(
    DEV == "cuda" and not torch.cuda.is_available(),
    reason="needs a CUDA device (none here); `make gpu-check` runs these on a GPU machine")


def gradient(shape=(512, 384)) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(0))


@pytest.mark.parametrize("method,setting", [s for s in SETTINGS if s[0] == "powersgd"])
def test_powersgd_round_trip_matches_the_cpu(method, setting):
    g = gradient()
    cpu, cpu_bytes = one_round(method, setting, g, torch.Generator())
    gpu, gpu_bytes = one_round(method, setting, g.to(DEV), torch.Generator(DEV))
    assert gpu.device.type == DEV and gpu_bytes == cpu_bytes
    torch.testing.assert_close(gpu.cpu(), cpu, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("density", [0.001, 0.01, 0.1])
def test_topk_round_trip_matches_the_cpu_exactly(density):
    comp, g = get_compressor("topk"), gradient().reshape(-1)
    cpu = comp.decode(comp.encode(g, density), g.numel(), density)
    payload = comp.encode(g.to(DEV), density)
    assert payload.device.type == DEV
    assert torch.equal(comp.decode(payload, g.numel(), density).cpu(), cpu)
    assert torch.equal(comp.decode(payload.cpu(), g.numel(), density), cpu)


@pytest.mark.parametrize("bits", [1, 2, 3, 4, 7, 8, 16])
def test_bit_packing_matches_the_cpu_exactly(bits):
    codes = torch.randint(0, 1 << bits, (10_007,), generator=torch.Generator().manual_seed(1))
    packed = pack_bits(codes, bits)
    on_gpu = pack_bits(codes.to(DEV), bits)
    assert torch.equal(on_gpu.cpu(), packed)
    assert torch.equal(unpack_bits(on_gpu, bits, codes.numel()).cpu(), codes)


@pytest.mark.parametrize("bits", [2, 4, 8])
def test_qsgd_round_trip_keeps_its_promises_on_the_gpu(bits):
    comp, g = get_compressor("qsgd"), gradient().reshape(-1)
    payload = comp.encode(g.to(DEV), bits, torch.Generator(DEV).manual_seed(0))
    decoded = comp.decode(payload, g.numel(), bits)
    assert decoded.device.type == DEV
    assert torch.equal(comp.decode(payload.cpu(), g.numel(), bits), decoded.cpu())
    cpu_payload = comp.encode(g, bits, torch.Generator().manual_seed(0))
    nscale = 4 * -(-g.numel() // comp.bucket_size)
    assert torch.equal(payload[:nscale].cpu(), cpu_payload[:nscale])  # the fp32 scales
    levels = (1 << (bits - 1)) - 1
    scale = g.reshape(-1, comp.bucket_size).abs().amax(1).repeat_interleave(comp.bucket_size)
    assert bool(((decoded.cpu() - g).abs() <= scale / levels * (1 + 1e-6)).all())
