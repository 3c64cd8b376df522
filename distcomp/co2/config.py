"""Knobs of CO2's outer loop (:class:`distcomp.co2.CO2`), validated before any collective."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch

from distcomp.knobs import Knobs, knob

WireDtype = Literal["float32", "bfloat16", "float16"]
WIRE_DTYPES = {name: getattr(torch, name) for name in WireDtype.__args__}


@dataclass(frozen=True)
class CO2Config(Knobs):
    """Knobs of the outer loop.

    tau: local steps per round. Larger hides slower links but drifts further.
    outer_lr: outer learning rate; 1 with outer_momentum 0 is plain parameter averaging.
    outer_momentum: beta.
    nesterov: Nesterov form of the outer momentum.
    gap_penalty: strength of the staleness-gap penalty (0 disables it).
    clip_norm: max L2 norm of the outer momentum over all parameters; None: no clipping.
    overlap: True (CO2): apply the previous round's average while this one travels;
        False (DiLoCo-style): wait for this round's average and apply it at once.
    timeout_s: seconds any collective may take before the step fails with an error.
    wire_dtype: the type the pseudo-gradient travels in when no compressor is set. 16 bits
        halve the bytes and the transfer time; what rounding drops is kept per rank (error
        feedback) and sent with the next round. The sum itself runs in that type (one rounding
        per added rank).
    """

    tau: int = knob(4, low=1)
    outer_lr: float = knob(1.0, low=0.0, low_open=True)
    outer_momentum: float = knob(0.5, low=0.0, high=1.0, high_open=True)
    nesterov: bool = False
    gap_penalty: float = knob(1.0, low=0.0)
    clip_norm: float | None = knob(None, low=0.0, low_open=True)
    overlap: bool = True
    timeout_s: float = knob(300.0, low=0.0, low_open=True)
    wire_dtype: WireDtype = "float32"

    @classmethod
    def from_dict(cls, d: dict, what: str | None = "CO2") -> CO2Config:
        return super().from_dict(d, what)

