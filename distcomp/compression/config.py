"""Validated configuration of compressed averaging: the knobs every method shares, and the
chosen method's own options as its class declares them (:mod:`distcomp.compression.compressor`).

Built (and so validated) before any collective runs, so a typo fails fast with a message that
names the knob instead of hanging a job or corrupting error-feedback memory. Users pass every
knob flat, ``CompressionConfig("topk", density=0.05, warmup_steps=20)``: the shared knobs are
this class's fields, the rest go to the method's ``Options``. A knob only other methods have is
accepted and logged (scripts that switch methods pass them all), except those a method marks
``strict``, which would change what another method means and are refused.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Any

from distcomp.compression.compressor import Compressor, knob_owners, method_class
from distcomp.knobs import Knobs, knob

ACCORDION_ONLY = ("accordion_interval", "accordion_threshold", "accordion_gentle")


@dataclass(frozen=True, init=False)
class CompressionConfig(Knobs):
    """Knobs of gradient compression that every method shares.

    method: a registered method (:func:`~distcomp.compression.compressor.method_names`).
    options: the method's own options (its ``Options``: PowerSGD's ``rank``, top-k's
        ``density``, ...), built from the flat keywords; also read as attributes
        (``config.rank``).
    error_feedback: keep what compression dropped and add it to the next step's gradient.
        Needed for biased compressors (PowerSGD, top-k) to converge like uncompressed SGD.
    min_compression_rate: compress a tensor only if dense bytes > rate x compressed bytes.
        2.0 (torch's default too): a layer that would shrink less than 2x, such as a small
        classifier head, travels exact. 1.0 compresses wherever it saves a byte, 0 every
        eligible tensor.
    warmup_steps: steps at the start that use a plain all-reduce. Compression hurts most
        early, and adaptive optimizers (Adam) take their per-coordinate scale from the first
        gradients they see.
    accordion: switch every compressed layer between a gentle setting in critical regimes
        and the user's setting elsewhere (:mod:`distcomp.compression.accordion`).
    accordion_interval: steps between regime decisions.
    accordion_threshold: relative change of a layer's gradient norm between two intervals
        that marks a critical regime.
    accordion_gentle: the setting in critical regimes (the method's knob, no harsher than the
        user's setting); None: the method's own choice (its ``gentle``).
    seed: seeds the methods' random numbers (PowerSGD's initial Q, QSGD's rounding).
    timeout_s: seconds any single collective may take before the step fails with an error.
    """

    method: str = "powersgd"
    options: Knobs = field(default=None, metadata={"nested": True})
    error_feedback: bool = True
    min_compression_rate: float = knob(2.0, low=0.0)
    warmup_steps: int = knob(10, low=0)
    accordion: bool = True
    accordion_interval: int = knob(50, low=1)
    accordion_threshold: float = knob(0.5, low=0.0, low_open=True)
    accordion_gentle: float | None = None
    seed: int = knob(0, low=0)
    timeout_s: float = knob(300.0, low=0.0, low_open=True)

    def __init__(self, method: str = "powersgd", options: Knobs | None = None, **flat: Any):
        cls = method_class(method)
        shared = {f.name for f in fields(self)} - {"method", "options"}
        mine = {k: v for k, v in flat.items() if k in shared}
        own = {k: v for k, v in flat.items() if k not in shared}
        _refuse_foreign(method, cls, own)
        own = {k: v for k, v in own.items() if k in {f.name for f in fields(cls.Options)}}
        if options is None:
            options = cls.Options(**own)
        elif own or not isinstance(options, cls.Options):
            raise ValueError(f"options must be a {cls.Options.__qualname__} (without other "
                             f"{method} knobs beside it), got {options!r}")
        defaults = {f.name: f.default for f in fields(self) if f.name in shared}
        for name, value in {**defaults, **mine, "method": method, "options": options}.items():
            object.__setattr__(self, name, value)
        self.__post_init__()

    def __getattr__(self, name: str) -> Any:
        # called only for names that are not fields: the method's own options
        if name.startswith("_") or name == "options":
            raise AttributeError(name)
        try:
            return getattr(object.__getattribute__(self, "options"), name)
        except AttributeError:
            raise AttributeError(f"{type(self).__name__} with method {self.method!r} has no "
                                 f"option {name!r}") from None

    def check(self) -> None:
        comp = self.compressor()
        if comp.momentum and not self.error_feedback:
            raise ValueError("momentum correction accumulates in the error-feedback residual: "
                             "it needs error_feedback=True")
        if self.accordion_gentle is not None:
            gentle = comp.validate_setting(self.accordion_gentle)
            if not comp.milder(gentle, comp.setting):
                raise ValueError(f"accordion_gentle ({self.accordion_gentle!r}) must not compress "
                                 f"harder than the {comp.knob} ({comp.setting!r})")

    @property
    def setting(self) -> float:
        """The uniform per-tensor setting of the chosen method (its ``knob``)."""
        return self.compressor().setting

    @property
    def gentle(self) -> float:
        """The setting Accordion uses in critical regimes (see ``accordion_gentle``)."""
        comp = self.compressor()
        if self.accordion_gentle is not None:
            return comp.validate_setting(self.accordion_gentle)
        return comp.gentle(comp.setting)

    def compressor(self) -> Compressor:
        return method_class(self.method)(self.options)

    def to_dict(self) -> dict:
        """Every knob flat: the shared ones and the method's own."""
        out = {f.name: getattr(self, f.name) for f in fields(self) if f.name != "options"}
        return {**out, **self.options.to_dict()}

    @classmethod
    def from_dict(cls, d: dict, what: str | None = None) -> CompressionConfig:
        return cls(**d)


def _refuse_foreign(method: str, cls: type[Compressor], own: dict) -> None:
    """ValueError for a knob no method has, or a ``strict`` one of another method set to
    anything but its default."""
    owners = knob_owners()
    unknown = sorted(k for k in own if k not in owners)
    if unknown:
        raise ValueError(f"unknown compression options {unknown}")
    mine = {f.name for f in fields(cls.Options)}
    for k, v in own.items():
        if k in mine:
            continue
        for other in owners[k]:
            f = {f.name: f for f in fields(other.Options)}[k]
            if f.metadata.get("strict") and v != f.default:
                names = " or ".join(repr(o.name) for o in owners[k])
                raise ValueError(f"{k} applies to method {names} only, got {k}={v!r} with "
                                 f"{method!r}")


def ignored_options(method: str, options: dict) -> list[str]:
    """The options a user passed that this configuration will not read, each with why: a
    ``density=`` with PowerSGD, an Accordion knob with ``accordion=False``. Accepted (scripts
    that switch methods pass them all), but logged so a typo-level mistake is not silent."""
    owners = knob_owners()
    mine = {f.name for f in fields(method_class(method).Options)}
    out = [f"{k}={v!r} applies to method {' or '.join(repr(o.name) for o in owners[k])} only; "
           f"{method!r} ignores it"
           for k, v in options.items() if k in owners and k not in mine]
    if options.get("accordion") is False:
        out += [f"{k}={options[k]!r} is ignored with accordion=False"
                for k in ACCORDION_ONLY if k in options]
    return out
