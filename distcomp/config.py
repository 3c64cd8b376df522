"""Validated configuration of a compressed reducer: every knob, its default and its range.

Built (and so validated) before any collective runs, so a typo fails fast with a message that
names the knob instead of hanging a job or corrupting error-feedback memory.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields

from distcomp.compressor import Compressor, get_compressor

METHODS = ("powersgd", "topk", "qsgd")


@dataclass(frozen=True)
class CompressionConfig:
    """Knobs of gradient compression.

    method: "powersgd", "topk" or "qsgd".
    rank: PowerSGD rank (int >= 1). Higher = closer to exact, more bytes: 4 r (n + m) per matrix.
    density: top-k fraction of entries kept, in (0, 1]. Bytes: 8 per kept entry.
    bits: QSGD bits per element incl. sign, one of 2..8, 16, 32.
    qsgd_bucket_size: QSGD elements per fp32 scale (>= 1); smaller = lower variance, more bytes.
    qsgd_norm: "max" (default, lower variance) or "l2" (the paper's).
    error_feedback: keep what compression dropped and add it to the next step's gradient.
        Needed for biased compressors (PowerSGD, top-k) to converge like uncompressed SGD.
    min_compression_rate: compress a tensor only if dense bytes > rate x compressed bytes;
        1.0 compresses only where it saves bytes, 0 compresses every eligible tensor.
    warmup_steps: steps at the start that use a plain all-reduce (compression hurts most early).
    seed: seeds PowerSGD's initial Q (same on all ranks) and QSGD's rounding (rank-dependent).
    timeout_s: seconds any single collective may take before the step fails with an error.
    """

    method: str = "powersgd"
    rank: int = 4
    density: float = 0.01
    bits: int = 4
    qsgd_bucket_size: int = 128
    qsgd_norm: str = "max"
    error_feedback: bool = True
    min_compression_rate: float = 1.0
    warmup_steps: int = 0
    seed: int = 0
    timeout_s: float = 300.0

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise ValueError(f"method must be one of {METHODS}, got {self.method!r}")
        comp = self.compressor()
        comp.validate_setting(self.setting)
        _check_number("min_compression_rate", self.min_compression_rate, low=0.0)
        _check_number("timeout_s", self.timeout_s, low=0.0, strict=True)
        for name in ("warmup_steps", "seed"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise ValueError(f"{name} must be an integer >= 0, got {value!r}")
        if not isinstance(self.error_feedback, bool):
            raise ValueError(f"error_feedback must be True or False, got {self.error_feedback!r}")

    @property
    def setting(self) -> float:
        """The uniform per-tensor setting of the chosen method (rank, density or bits)."""
        return {"powersgd": self.rank, "topk": self.density, "qsgd": self.bits}[self.method]

    def compressor(self) -> Compressor:
        if self.method == "qsgd":
            return get_compressor("qsgd", bucket_size=self.qsgd_bucket_size, norm=self.qsgd_norm)
        return get_compressor(self.method)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> CompressionConfig:
        known = {f.name for f in fields(cls)}
        unknown = set(d) - known
        if unknown:
            raise ValueError(f"unknown compression options {sorted(unknown)}")
        return cls(**d)


def _check_number(name: str, value: float, low: float, strict: bool = False) -> None:
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    if ok:
        ok = value > low if strict else value >= low
    if not ok:
        rel = ">" if strict else ">="
        raise ValueError(f"{name} must be a finite number {rel} {low}, got {value!r}")
