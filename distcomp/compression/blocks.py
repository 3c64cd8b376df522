"""What the methods with one fp32 scale per block of elements share (EF-SignSGD, fp8).

Their knob is the block: elements per scale, 0 meaning one scale for the whole tensor. It
orders the other way from most knobs: a smaller block follows the gradient's magnitudes more
closely for 4 more bytes per block, so it is the milder setting and 0 the harshest. Mixed into
the method's :class:`~distcomp.compression.compressor.Compressor` class, which keeps its own
codec, payload size and candidate errors.
"""

from __future__ import annotations

import math

import torch

from distcomp.compression.compressor import FP32_BYTES


class BlockScaled:
    """Block arithmetic, the schedule's gentle block and L-GreCo's grid for a per-block-scale
    method. Subclasses set ``CANDIDATE_BLOCKS`` (L-GreCo's choices, 0 first) and
    ``GENTLE_BLOCK`` (the schedule's block where the user keeps one scale per tensor)."""

    CANDIDATE_BLOCKS: tuple[int, ...]
    GENTLE_BLOCK: int

    @staticmethod
    def block(numel: int, setting: float) -> int:
        """Elements per scale for a tensor of ``numel`` elements (0: all of them)."""
        return max(1, numel if int(setting) == 0 else min(int(setting), numel))

    def milder(self, a: float, b: float) -> bool:
        return (int(a) or math.inf) <= (int(b) or math.inf)

    def gentle(self, setting: float) -> int:
        """A quarter of the block, at least 8; ``GENTLE_BLOCK`` for one scale per tensor."""
        return self.GENTLE_BLOCK if int(setting) == 0 else max(8, int(setting) // 4)

    def eligible(self, shape: torch.Size) -> bool:
        return len(shape) >= 2  # biases and norm weights are small: never worth the error

    def candidates(self, uniform: float, shape: torch.Size, plan: object) -> list[float]:
        return list(self.CANDIDATE_BLOCKS)

    def scale_bytes(self, numel: int, setting: float) -> int:
        """4 bytes per block: the fp32 scales that open the payload."""
        return FP32_BYTES * math.ceil(numel / self.block(numel, setting))

    def rows(self, x: torch.Tensor, setting: float) -> tuple[torch.Tensor, torch.Tensor]:
        """(flat fp32 ``x`` zero-padded into rows of one block each, (k, block); each row's
        count of real elements, (k,) fp32)."""
        n = x.numel()
        b = self.block(n, setting)
        k = math.ceil(n / b)
        padded = torch.zeros(k * b, dtype=torch.float32, device=x.device)
        padded[:n] = x
        counts = torch.full((k,), float(b), device=x.device)
        counts[-1] = n - (k - 1) * b
        return padded.view(k, b), counts

    def per_element(self, scale: torch.Tensor, numel: int, setting: float) -> torch.Tensor:
        """Each block's scale repeated over its elements: (numel,)."""
        return scale.repeat_interleave(self.block(numel, setting))[:numel]
