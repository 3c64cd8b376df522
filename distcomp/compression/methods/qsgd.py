"""QSGD stochastic quantization (Alistarh et al., NeurIPS 2017) with real bit-packing.

A tensor of n elements is cut into buckets of ``bucket_size`` elements. Each bucket sends one fp32
scale and, per element, a b-bit code: 1 sign bit and a (b-1)-bit level in [0, L], L = 2^(b-1) - 1.
The level of x is |x| / scale * L rounded stochastically (up with probability equal to the
fractional part), so the decoded value sign * level / L * scale is an unbiased estimate of x.

Payload: 4 * ceil(n / bucket_size) bytes of scales, then ceil(n * b / 8) bytes of packed codes.

``norm="max"`` scales by the bucket's max |x| (lower variance at few bits, the usual choice in
practice); ``norm="l2"`` by its Euclidean norm, as in the paper. At b = 32 the rounding error is
below 1e-9 of the scale: a lossless setting for testing.
"""

from __future__ import annotations

import math

import torch

from distcomp.compression.bitpack import pack_bits, packed_nbytes, unpack_bits
from distcomp.compression.compressor import FP32_BYTES, GatherCompressor, bytes_as, register

ALLOWED_BITS = (2, 3, 4, 5, 6, 7, 8, 16, 32)


@register
class QSGD(GatherCompressor):
    """Bucketed QSGD. Setting: ``bits`` per element in ALLOWED_BITS (sign included)."""

    name = "qsgd"
    setting_name = "bits"

    def __init__(self, bucket_size: int = 128, norm: str = "max"):
        if isinstance(bucket_size, bool) or not isinstance(bucket_size, int) or bucket_size < 1:
            raise ValueError(f"QSGD bucket_size must be an integer >= 1, got {bucket_size!r}")
        if norm not in ("max", "l2"):
            raise ValueError(f"QSGD norm must be 'max' or 'l2', got {norm!r}")
        self.bucket_size = bucket_size
        self.norm = norm

    def validate_setting(self, setting: float) -> int:
        if isinstance(setting, bool) or setting not in ALLOWED_BITS:
            raise ValueError(f"QSGD bits must be one of {ALLOWED_BITS}, got {setting!r}")
        return int(setting)

    def eligible(self, shape: torch.Size) -> bool:
        return len(shape) >= 2  # biases and norm weights are small: never worth the error

    def wire_bytes(self, shape: torch.Size, setting: float) -> int:
        n = math.prod(shape)
        return FP32_BYTES * math.ceil(n / self.bucket_size) + packed_nbytes(n, int(setting))

    def encode(
        self, x: torch.Tensor, setting: float, generator: torch.Generator | None = None
    ) -> torch.Tensor:
        bits = int(setting)
        x = x.reshape(-1).float()
        n = x.numel()
        nbuckets = math.ceil(n / self.bucket_size)
        # float64 only where float32's 24-bit mantissa cannot hold the levels exactly
        dtype = torch.float64 if bits > 16 else torch.float32
        padded = torch.zeros(nbuckets * self.bucket_size, dtype=dtype, device=x.device)
        padded[:n] = x
        buckets = padded.view(nbuckets, self.bucket_size)
        magnitude = buckets.abs()
        scale = magnitude.amax(dim=1) if self.norm == "max" else buckets.norm(dim=1)
        scale = scale.float().to(dtype)  # the decoder sees the fp32 scale: quantise against it
        levels = (1 << (bits - 1)) - 1
        safe = torch.where(scale > 0, scale, torch.ones_like(scale))
        scaled = magnitude.mul_(levels / safe.unsqueeze(1)).clamp_(0, levels)
        noise = torch.rand(scaled.shape, generator=generator, dtype=dtype, device=x.device)
        level = scaled.add_(noise).floor_().clamp_(max=levels).long()
        codes = level | ((buckets < 0).long() << (bits - 1))
        packed = pack_bits(codes.reshape(-1)[:n], bits)
        return torch.cat([scale.float().contiguous().view(torch.uint8), packed])

    def decode(self, payload: torch.Tensor, numel: int, setting: float) -> torch.Tensor:
        bits = int(setting)
        nbuckets = math.ceil(numel / self.bucket_size)
        scale = bytes_as(payload[: FP32_BYTES * nbuckets], torch.float32)
        codes = unpack_bits(payload[FP32_BYTES * nbuckets :], bits, numel)
        levels = (1 << (bits - 1)) - 1
        dtype = torch.float64 if bits > 16 else torch.float32
        values = torch.zeros(nbuckets * self.bucket_size, dtype=dtype, device=payload.device)
        values[:numel] = (codes & levels).to(dtype)
        values[:numel] *= 1.0 - 2.0 * (codes >> (bits - 1)).to(dtype)
        values = values.view(nbuckets, self.bucket_size) * (scale.to(dtype) / levels).unsqueeze(1)
        return values.reshape(-1)[:numel].float()
