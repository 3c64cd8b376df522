"""8-bit floating point with a scale per block and error feedback: the cheap 4x.

Each element is sent as one byte of float8 (``fp8_format``: e4m3, 3 mantissa bits and a range
of +-448, or e5m2, 2 mantissa bits and +-57344) after dividing its block by a scale that maps
the block's largest magnitude to the format's largest value; ``fp8_block`` elements share one
fp32 scale (0: one scale for the whole tensor). Rounding is to nearest, one cast each way:
the cheapest encoder here on any device (CUDA casts it natively), for a fast link that can
still carry a quarter of the gradient. Error feedback (the reducer's residual) keeps the
rounding error and what fell below the format's smallest value, and sends it later.

Payload for n elements in k blocks: 4 k bytes of scales, then n bytes of float8; all-gathered
(8-bit floats of different scales do not add up in place), every rank decodes and sums.

The knob ``fp8_block`` orders like EF-SignSGD's: a smaller block is the milder setting, 0 the
harshest. L-GreCo chooses per layer among whole-tensor and blocks of 1024 down to 32, from
the exact rounding error of each (one cast per candidate).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import torch

from distcomp.compression.blocks import BlockScaled
from distcomp.compression.compressor import GatherCompressor, bytes_as
from distcomp.knobs import Knobs, knob

FORMATS = {"e4m3": torch.float8_e4m3fn, "e5m2": torch.float8_e5m2}


@dataclass(frozen=True)
class FP8Options(Knobs):
    """fp8_block: elements per fp32 scale; 0 (default): one scale per tensor.
    fp8_format: "e4m3" (more precision, the default) or "e5m2" (more range)."""

    fp8_block: int = knob(0, low=0)
    fp8_format: Literal["e4m3", "e5m2"] = "e4m3"


class FP8(BlockScaled, GatherCompressor):
    """float8 with a scale per ``fp8_block`` elements."""

    name = "fp8"
    knob = "fp8_block"
    Options = FP8Options
    CANDIDATE_BLOCKS = (0, 1024, 256, 128, 64, 32)
    GENTLE_BLOCK = 128

    @property
    def dtype(self) -> torch.dtype:
        return FORMATS[self.options.fp8_format]

    def wire_bytes(self, shape: torch.Size, setting: float) -> int:
        n = math.prod(shape)
        return self.scale_bytes(n, setting) + n

    def _quantize(self, x: torch.Tensor, setting: float) -> tuple[torch.Tensor, torch.Tensor]:
        """(scales (k,) fp32, float8 codes (n,)) of a flat fp32 tensor."""
        blocks = self.rows(x, setting)[0]
        scale = blocks.abs().amax(1) / torch.finfo(self.dtype).max
        safe = torch.where(scale > 0, scale, torch.ones_like(scale))
        codes = (blocks / safe.unsqueeze(1)).to(self.dtype).reshape(-1)[: x.numel()]
        return scale, codes

    def _dequantize(self, scale: torch.Tensor, codes: torch.Tensor, setting: float
                    ) -> torch.Tensor:
        return codes.float() * self.per_element(scale, codes.numel(), setting)

    def encode(self, x: torch.Tensor, setting: float,
               generator: torch.Generator | None = None) -> torch.Tensor:
        scale, codes = self._quantize(x.reshape(-1).float(), setting)
        return torch.cat([scale.contiguous().view(torch.uint8), codes.view(torch.uint8)])

    def decode(self, payload: torch.Tensor, numel: int, setting: float) -> torch.Tensor:
        head = self.scale_bytes(numel, setting)
        scale = bytes_as(payload[:head], torch.float32)
        codes = payload[head : head + numel].view(self.dtype)
        return self._dequantize(scale, codes, setting)

    def candidate_errors(self, g: torch.Tensor, settings: list[float]) -> list[float]:
        x = g.detach().float().reshape(-1)
        return [float((x - self._dequantize(*self._quantize(x, s), s)).double().norm())
                for s in settings]
