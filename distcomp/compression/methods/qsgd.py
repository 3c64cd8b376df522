"""QSGD stochastic quantization (Alistarh et al., NeurIPS 2017) with real bit-packing.

A tensor of n elements is cut into buckets of ``qsgd_bucket_size`` elements. Each bucket sends
one fp32 scale and, per element, a b-bit code: 1 sign bit and a (b-1)-bit level in [0, L],
L = 2^(b-1) - 1. The level of x is |x| / scale * L rounded stochastically (up with probability
equal to the fractional part), so the decoded value sign * level / L * scale is an unbiased
estimate of x.

Payload: 4 * ceil(n / bucket_size) bytes of scales, then ceil(n * b / 8) bytes of packed codes.

``qsgd_norm="max"`` scales by the bucket's max |x| (lower variance at few bits, the usual choice
in practice); ``"l2"`` by its Euclidean norm, as in the paper. At b = 32 the rounding error is
below 1e-9 of the scale: a lossless setting for testing.

L-GreCo's error for b bits is the expected stochastic-rounding error,
sqrt(sum (scale/L)^2 p (1 - p)), p the fractional level of each entry: deterministic, no
sampling noise.
"""

from __future__ import annotations

import math
import typing
from dataclasses import dataclass
from typing import Literal

import torch

from distcomp.compression.bitpack import pack_bits, packed_nbytes, unpack_bits
from distcomp.compression.compressor import FP32_BYTES, GatherCompressor, bytes_as
from distcomp.knobs import Knobs, knob

Bits = Literal[2, 3, 4, 5, 6, 7, 8, 16, 32]
ALLOWED_BITS: tuple[int, ...] = typing.get_args(Bits)


@dataclass(frozen=True)
class QSGDOptions(Knobs):
    """bits: bits per element, sign included.
    qsgd_bucket_size: elements per fp32 scale; smaller = lower variance, more bytes.
    qsgd_norm: "max" (lower variance) or "l2" (the paper's)."""

    bits: Bits = 4
    qsgd_bucket_size: int = knob(128, low=1)
    qsgd_norm: Literal["max", "l2"] = "max"


@dataclass(frozen=True)
class QSGDPlan(Knobs):
    """qsgd_bits: L-GreCo's QSGD candidate bit widths."""

    qsgd_bits: tuple[Bits, ...] = (2, 3, 4, 6, 8)

    def check(self) -> None:
        if not self.qsgd_bits:
            raise ValueError("qsgd_bits must not be empty")
        object.__setattr__(self, "qsgd_bits", tuple(sorted(set(self.qsgd_bits))))


class QSGD(GatherCompressor):
    """Bucketed QSGD. Setting: ``bits`` per element (sign included)."""

    name = "qsgd"
    knob = "bits"
    Options = QSGDOptions
    Plan = QSGDPlan

    @property
    def bucket_size(self) -> int:
        return self.options.qsgd_bucket_size

    @property
    def norm(self) -> str:
        return self.options.qsgd_norm

    def eligible(self, shape: torch.Size) -> bool:
        return len(shape) >= 2  # biases and norm weights are small: never worth the error

    def wire_bytes(self, shape: torch.Size, setting: float) -> int:
        n = math.prod(shape)
        return FP32_BYTES * math.ceil(n / self.bucket_size) + packed_nbytes(n, int(setting))

    def gentle(self, setting: float) -> int:
        """Twice the bits, at most 8; settings of 8 bits or more go to 16."""
        bits = int(setting)
        return min(8, 2 * bits) if bits < 8 else max(16, bits)

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

    def candidates(self, uniform: float, shape: torch.Size, plan: QSGDPlan) -> list[float]:
        return list(plan.qsgd_bits)

    def candidate_errors(self, g: torch.Tensor, settings: list[float]) -> list[float]:
        return expected_errors(g.detach().float(), [int(b) for b in settings], self.bucket_size,
                               self.norm)


def expected_errors(g: torch.Tensor, bits: list[int], bucket_size: int,
                    norm: str) -> list[float]:
    """sqrt(E||Q_b(g) - g||^2) of QSGD stochastic rounding for each bit width b, exactly: an
    entry at fractional level p contributes (scale / L)^2 p (1 - p). The scales are shared by
    every b, so they are computed once."""
    x = g.reshape(-1).float()
    nb = math.ceil(x.numel() / bucket_size)
    padded = torch.zeros(nb * bucket_size, dtype=torch.float32, device=x.device)
    padded[: x.numel()] = x
    buckets = padded.view(nb, bucket_size)
    scale = buckets.abs().amax(1) if norm == "max" else buckets.norm(dim=1)
    safe = torch.where(scale > 0, scale, torch.ones_like(scale))
    unit = buckets.abs_().div_(safe.unsqueeze(1))  # |x| / scale in [0, 1]
    out = []
    for b in bits:
        levels = (1 << (b - 1)) - 1
        y = unit * levels
        p = y.sub_(y.floor())
        per_bucket = p.mul_(1 - p).sum(1, dtype=torch.float64)
        out.append(float((per_bucket * (safe.double() / levels) ** 2).sum().sqrt()))
    return out
