"""Validated configuration of a compressed reducer: every knob, its default and its range.

Built (and so validated) before any collective runs, so a typo fails fast with a message that
names the knob instead of hanging a job or corrupting error-feedback memory.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields

from distcomp.compression.accordion import default_gentle
from distcomp.compression.compressor import Compressor, get_compressor

METHODS = ("powersgd", "topk", "qsgd")


@dataclass(frozen=True)
class CompressionConfig:
    """Knobs of gradient compression.

    method: "powersgd", "topk" or "qsgd".
    rank: PowerSGD rank (int >= 1). Higher = closer to exact, more bytes: 4 r (n + m) per matrix.
        8 by default: at rank 4 a momentum-SGD ResNet trailed plain DDP by 8-20% in loss at
        equal steps, at rank 8 by 0-6% (README, "Defaults").
    density: top-k fraction of entries kept, in (0, 1]. Bytes: 8 per kept entry.
    bits: QSGD bits per element incl. sign, one of 2..8, 16, 32.
    qsgd_bucket_size: QSGD elements per fp32 scale (>= 1); smaller = lower variance, more bytes.
    qsgd_norm: "max" (default, lower variance) or "l2" (the paper's).
    error_feedback: keep what compression dropped and add it to the next step's gradient.
        Needed for biased compressors (PowerSGD, top-k) to converge like uncompressed SGD.
    min_compression_rate: compress a tensor only if dense bytes > rate x compressed bytes.
        2.0 (torch's default too): a layer that would shrink less than 2x, such as a small
        classifier head at rank 8, travels exact; compressing it saves little and cost a
        ResNet 1.6% of loss at equal steps (README, "Defaults"). 1.0 compresses wherever it
        saves a byte, 0 compresses every eligible tensor.
    warmup_steps: steps at the start that use a plain all-reduce. Compression hurts most
        early, and adaptive optimizers (Adam) take their per-coordinate scale from the first
        gradients they see: started on compressed ones, Adam's second moments are too small
        for the coordinates a low-rank or sparse gradient misses (see README, "Defaults").
    momentum: top-k only: momentum correction and momentum-factor masking (Deep Gradient
        Compression; :mod:`distcomp.compression.dgc`) for an optimizer ``SGD(momentum=m)``:
        set it to m.
        0 (default) is plain error feedback, right for Adam and plain SGD.
    density_warmup_steps: top-k only: after ``warmup_steps``, the density starts at 25% and
        falls exponentially to ``density`` over this many steps (DGC's sparsity warm-up).
    accordion: switch every compressed layer between a gentle setting in critical regimes
        and the user's setting elsewhere (:mod:`distcomp.compression.accordion`).
    accordion_interval: steps between regime decisions (>= 1).
    accordion_threshold: relative change of a layer's gradient norm between two intervals
        that marks a critical regime (> 0).
    accordion_gentle: the setting in critical regimes (rank, density or bits; at least the
        user's setting); None: 4x the rank, 4x the density, twice the bits (at most 8).
    seed: seeds PowerSGD's initial Q (same on all ranks) and QSGD's rounding (rank-dependent).
    timeout_s: seconds any single collective may take before the step fails with an error.
    """

    method: str = "powersgd"
    rank: int = 8
    density: float = 0.01
    bits: int = 4
    qsgd_bucket_size: int = 128
    qsgd_norm: str = "max"
    error_feedback: bool = True
    min_compression_rate: float = 2.0
    warmup_steps: int = 10
    momentum: float = 0.0
    density_warmup_steps: int = 0
    accordion: bool = True
    accordion_interval: int = 50
    accordion_threshold: float = 0.5
    accordion_gentle: float | None = None
    seed: int = 0
    timeout_s: float = 300.0

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise ValueError(f"method must be one of {METHODS}, got {self.method!r}")
        comp = self.compressor()
        comp.validate_setting(self.setting)
        _check_number("min_compression_rate", self.min_compression_rate, low=0.0)
        _check_number("timeout_s", self.timeout_s, low=0.0, strict=True)
        for name, low in (("warmup_steps", 0), ("seed", 0), ("density_warmup_steps", 0),
                          ("accordion_interval", 1)):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise ValueError(f"{name} must be an integer >= {low}, got {value!r}")
        for name in ("error_feedback", "accordion"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"{name} must be True or False, got {getattr(self, name)!r}")
        _check_number("accordion_threshold", self.accordion_threshold, low=0.0, strict=True)
        _check_number("momentum", self.momentum, low=0.0)
        if self.momentum >= 1.0:
            raise ValueError(f"momentum must be in [0, 1), got {self.momentum!r}")
        if self.method != "topk":
            for name in ("momentum", "density_warmup_steps"):
                if getattr(self, name):
                    raise ValueError(f"{name} applies to method 'topk' only, got {name}="
                                     f"{getattr(self, name)!r} with {self.method!r}")
        if self.momentum and not self.error_feedback:
            raise ValueError("momentum correction accumulates in the error-feedback residual: "
                             "it needs error_feedback=True")
        if self.accordion_gentle is not None:
            gentle = comp.validate_setting(self.accordion_gentle)
            if gentle < comp.validate_setting(self.setting):
                raise ValueError(f"accordion_gentle ({self.accordion_gentle!r}) must not compress "
                                 f"harder than the {comp.setting_name} ({self.setting!r})")

    @property
    def setting(self) -> float:
        """The uniform per-tensor setting of the chosen method (rank, density or bits)."""
        return {"powersgd": self.rank, "topk": self.density, "qsgd": self.bits}[self.method]

    @property
    def gentle(self) -> float:
        """The setting Accordion uses in critical regimes (see ``accordion_gentle``)."""
        comp = self.compressor()
        if self.accordion_gentle is not None:
            return comp.validate_setting(self.accordion_gentle)
        return default_gentle(comp, comp.validate_setting(self.setting))

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


# options only one method reads (momentum and density_warmup_steps are refused outright with
# another method, since they change what top-k's residual holds)
METHOD_ONLY = {"rank": "powersgd", "density": "topk", "bits": "qsgd",
               "qsgd_bucket_size": "qsgd", "qsgd_norm": "qsgd"}
ACCORDION_ONLY = ("accordion_interval", "accordion_threshold", "accordion_gentle")


def ignored_options(method: str, options: dict) -> list[str]:
    """The options a user passed that this configuration will not read, each with why: a
    ``density=`` with PowerSGD, an Accordion knob with ``accordion=False``. Accepted (scripts
    that switch methods pass them all), but logged so a typo-level mistake is not silent."""
    out = [f"{k}={v!r} applies to method {METHOD_ONLY[k]!r} only; {method!r} ignores it"
           for k, v in options.items() if k in METHOD_ONLY and METHOD_ONLY[k] != method]
    if options.get("accordion") is False:
        out += [f"{k}={options[k]!r} is ignored with accordion=False"
                for k in ACCORDION_ONLY if k in options]
    return out


def _check_number(name: str, value: float, low: float, strict: bool = False) -> None:
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    if ok:
        ok = value > low if strict else value >= low
    if not ok:
        rel = ">" if strict else ">="
        raise ValueError(f"{name} must be a finite number {rel} {low}, got {value!r}")
