"""Scaled sign compression with error feedback: EF-SignSGD (Karimireddy et al., ICML 2019).

Plain signSGD sends one bit per element and is biased: it does not converge on problems plain
SGD solves, and a scale alone does not fix that. Karimireddy et al. show that keeping what the
sign dropped (error feedback, the reducer's residual, on by default) and sending the sign of
the corrected gradient p = g + e scaled by its mean magnitude, ||p||_1 / n, converges like SGD.

Here the scale can be per block: ``sign_block`` elements share one fp32 scale (0: one scale for
the whole tensor, the paper's). Per block of values v with s = mean |v|, the decoded block is
s * sign(v) (zero counts as +), so ||v - C(v)||^2 = ||v||^2 - b s^2 exactly: smaller blocks
follow the gradient's magnitudes more closely for 4 more bytes each. Payload for n elements in
k blocks: 4 k bytes of scales, then ceil(n / 8) bytes of sign bits; all-gathered (signs of
different ranks do not add up in compressed form), every rank decodes and sums all of them.

The knob ``sign_block`` orders the other way from most methods: a smaller block is the milder
setting, and 0 (whole tensor) the harshest. L-GreCo chooses per layer among whole-tensor and
blocks of 4096 down to 32 elements, from the exact errors above.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from distcomp.compression.bitpack import pack_bits, packed_nbytes, unpack_bits
from distcomp.compression.blocks import BlockScaled
from distcomp.compression.compressor import GatherCompressor, bytes_as
from distcomp.knobs import Knobs, knob


@dataclass(frozen=True)
class SignOptions(Knobs):
    """sign_block: elements per fp32 scale; 0 (default): one scale per tensor (the paper's)."""

    sign_block: int = knob(0, low=0)


class SignSGD(BlockScaled, GatherCompressor):
    """EF-SignSGD: one bit per element and one scale per ``sign_block`` elements."""

    name = "signsgd"
    knob = "sign_block"
    Options = SignOptions
    CANDIDATE_BLOCKS = (0, 4096, 1024, 256, 64, 32)
    GENTLE_BLOCK = 64

    def wire_bytes(self, shape: torch.Size, setting: float) -> int:
        n = math.prod(shape)
        return self.scale_bytes(n, setting) + packed_nbytes(n, 1)

    def _blocks(self, x: torch.Tensor, setting: float
                ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(rows of one block each, their counts of real elements, and their mean |x|: the
        scale) of a flat fp32 tensor."""
        blocks, counts = self.rows(x, setting)
        return blocks, counts, blocks.abs().sum(1) / counts

    def encode(self, x: torch.Tensor, setting: float,
               generator: torch.Generator | None = None) -> torch.Tensor:
        x = x.reshape(-1).float()
        scale = self._blocks(x, setting)[2]
        signs = pack_bits((x < 0).to(torch.int64), 1)
        return torch.cat([scale.contiguous().view(torch.uint8), signs])

    def decode(self, payload: torch.Tensor, numel: int, setting: float) -> torch.Tensor:
        head = self.scale_bytes(numel, setting)
        scale = bytes_as(payload[:head], torch.float32)
        negative = unpack_bits(payload[head:], 1, numel)
        return self.per_element(scale, numel, setting) * (1.0 - 2.0 * negative.to(torch.float32))

    def candidate_errors(self, g: torch.Tensor, settings: list[float]) -> list[float]:
        x = g.detach().float().reshape(-1)
        out = []
        for s in settings:
            blocks, counts, scale = (t.double() for t in self._blocks(x, s))
            err2 = float((blocks.pow(2).sum(1) - counts * scale.pow(2)).sum())
            out.append(math.sqrt(max(0.0, err2)))
        return out
