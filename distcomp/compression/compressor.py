"""The interface every gradient compression method implements, and the registry of methods.

A method is one module in ``distcomp/compression/methods/`` that defines one
:class:`Compressor` subclass, and that class declares everything about the method:

* ``name`` (what configs, CLIs and benchmark arms call it) and ``Options``, a
  :class:`~distcomp.knobs.Knobs` dataclass of its own knobs with their defaults and ranges;
  ``knob`` names the one that is set per tensor (PowerSGD's ``rank``, top-k's ``density``);
* its payload: :meth:`~Compressor.wire_bytes` and :meth:`~Compressor.reduce`, how the payloads
  of all ranks are combined (:class:`GatherCompressor` is the family of byte strings exchanged
  with all-gather);
* its place in the schedules: :meth:`~Compressor.gentle` (the Accordion-style schedule's setting
  for critical regimes), :meth:`~Compressor.candidates` and :meth:`~Compressor.candidate_errors`
  (L-GreCo's choices per layer and what each would cost in error), ``Plan`` (knobs of those
  candidates, part of :class:`~distcomp.compression.lgreco.LGreCoConfig`).

Defining the class registers it; :mod:`distcomp.compression` imports every module of the
methods folder, so the module is all a new method needs. A class that names a method but leaves
any of this out, or reuses a name, fails when it is defined, never later.

A compressor knows tensor math and the order of its collectives; the reducer around it
(:mod:`distcomp.compression.reducer`) owns error feedback, momentum correction, the non-finite
fallback and the byte ledger. Units: a *setting* is the value of ``knob`` for one tensor;
*bytes* are payload bytes this rank hands to collectives for one tensor in one step.
"""

from __future__ import annotations

import dataclasses
import math
import typing
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any, ClassVar, Protocol

import torch

from distcomp.comm import Comm
from distcomp.knobs import Knobs, check_value, field_types

FP32_BYTES = 4


@dataclass
class Item:
    """One tensor to average: ``x`` this rank's gradient plus error-feedback residual (fp32,
    the gradient's shape) and the ``setting`` it travels at; ``shape``: the whole tensor's
    shape when ``x`` is a block of its rows (:attr:`Exchange.rows`), else None."""

    key: str
    x: torch.Tensor
    setting: float
    shape: torch.Size | None = None


@dataclass
class Reduced:
    """What :meth:`Compressor.reduce` returns per item: ``average`` over ranks (fp32, the
    item's shape), ``own`` this rank's compressed contribution C(x) in the same shape (None
    unless :attr:`Exchange.keep_own`), and the ``nbytes`` it handed to ``collective``."""

    average: torch.Tensor
    own: torch.Tensor | None
    nbytes: int
    collective: str


class Exchange(Protocol):
    """The reducer's side of one bucket, handed to :meth:`Compressor.reduce`."""

    comm: Comm
    keep_own: bool  # whether the reducer needs each item's own C(x) (error feedback)
    seed: int  # the configuration's seed
    # the ranks holding the other row blocks of every item (a node under FSDP2), each block
    # averaged over ``comm``; None where items are whole tensors. Only a method that declares
    # ``joins_row_blocks`` gets it
    rows: Comm | None

    def first_round(self, summed: list[torch.Tensor], gathered: torch.Tensor | None
                    ) -> tuple[list[torch.Tensor], torch.Tensor | None] | None:
        """The bucket's first collective round: one all-reduce of the uncompressed tensors, the
        ``summed`` tensors and the non-finite flag, beside one all-gather of ``gathered`` (a
        1-D uint8 payload) when given. Returns the summed tensors (same shapes) and the
        gathered rows (world, bytes), or None when a rank saw inf/NaN: the method then returns
        None too and leaves its memory as it was."""

    def generator(self, key: str, shared: bool = False) -> torch.Generator:
        """Random numbers for one tensor in this step: seeded by (seed, rank, step, key), or
        with ``shared`` by (seed, step, key) alone, the same on every rank."""


_REGISTRY: dict[str, type[Compressor]] = {}


class Compressor(ABC):
    """Base class: validation, byte accounting and the "is it worth compressing" rule.

    Construct with an ``Options`` instance or its fields:
    ``TopK(density=0.05)``, ``get_compressor("qsgd", bits=2)``.
    """

    name: ClassVar[str]
    knob: ClassVar[str]
    Options: ClassVar[type[Knobs]]
    Plan: ClassVar[type[Knobs] | None] = None
    # whether the method compresses a tensor whose rows are split over ranks jointly
    # (``Exchange.rows``): a low-rank method would otherwise approximate each block on its own
    # and send one factor per block; an elementwise method sends the same either way
    joins_row_blocks: ClassVar[bool] = False

    def __init__(self, options: Knobs | None = None, **knobs: Any):
        if options is None:
            options = self.Options(**knobs)
        elif knobs or not isinstance(options, self.Options):
            raise TypeError(f"{self.name}: pass {self.Options.__qualname__} or its fields")
        self.options = options

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if "name" in cls.__dict__:
            _register(cls)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.options})"

    # -- the setting ---------------------------------------------------------------------------
    @property
    def setting(self) -> float:
        """The uniform setting from the options."""
        return getattr(self.options, self.knob)

    def validate_setting(self, setting: float) -> float:
        """``setting`` checked against the ``knob`` field's type and range and normalised to it
        (a whole float for an integer knob is taken); ValueError naming the knob."""
        f = {f.name: f for f in dataclasses.fields(self.Options)}[self.knob]
        kind = field_types(self.Options)[self.knob]
        if kind is int and isinstance(setting, float) and setting.is_integer():
            setting = int(setting)
        return check_value(self.knob, setting, kind, f.metadata)

    def milder(self, a: float, b: float) -> bool:
        """Whether setting ``a`` compresses no harder than ``b`` (by default: a larger knob
        sends more bytes)."""
        return a >= b

    @abstractmethod
    def gentle(self, setting: float) -> float:
        """The Accordion-style schedule's setting for critical regimes when the user names
        none, for a user setting of ``setting``: noticeably milder, still compressing."""

    def scheduled(self, setting: float, steps_compressed: int) -> float:
        """The setting to use ``steps_compressed`` steps after the dense warm-up ended (a ramp
        such as top-k's density warm-up); the setting itself by default."""
        return setting

    # -- bytes -----------------------------------------------------------------------------------
    @abstractmethod
    def eligible(self, shape: torch.Size) -> bool:
        """Whether the method can compress a tensor of this shape at all."""

    @abstractmethod
    def wire_bytes(self, shape: torch.Size, setting: float) -> int:
        """Exact payload bytes this rank sends for one tensor of ``shape`` in one step."""

    @staticmethod
    def dense_bytes(shape: torch.Size) -> int:
        """Bytes of the uncompressed fp32 tensor, the cost of sending it through all-reduce."""
        return FP32_BYTES * math.prod(shape)

    def compresses(self, shape: torch.Size, setting: float, min_compression_rate: float) -> bool:
        """Compress only where it pays: dense bytes / compressed bytes > ``min_compression_rate``.

        With a rate of 1.0 a tensor is compressed only if that saves bytes at all (the default,
        2.0, asks for a 2x saving); biases, norm weights and other small tensors then travel
        uncompressed, fused into one all-reduce. A rate of 0 compresses every eligible tensor
        (useful to test lossless settings).
        """
        if not self.eligible(shape) or math.prod(shape) == 0:
            return False
        return self.dense_bytes(shape) > min_compression_rate * self.wire_bytes(shape, setting)

    # -- the reduction ---------------------------------------------------------------------------
    @abstractmethod
    def reduce(self, items: list[Item], exchange: Exchange,
               memory: dict[str, torch.Tensor]) -> list[Reduced] | None:
        """Average ``items`` over the ranks: the first collective through
        ``exchange.first_round`` (every rank calls it exactly once), any later ones on
        ``exchange.comm``. ``memory``: key -> tensor the method keeps between steps (PowerSGD's
        warm-start Q), checkpointed by the reducer; write it only after a successful first
        round. None where ``first_round`` returned None."""

    def roundtrip(self, x: torch.Tensor, setting: float,
                  generator: torch.Generator | None = None) -> torch.Tensor:
        """C(x): what the method makes of ``x`` (any shape, fp32 result) at ``setting`` on a
        world of one rank, through its own :meth:`reduce` (``generator``: its random numbers;
        PowerSGD starts from a fresh Q)."""
        item = Item("roundtrip", x.detach().float(), setting)
        return self.reduce([item], _Alone(x.device, generator), {})[0].average

    # -- L-GreCo ---------------------------------------------------------------------------------
    @abstractmethod
    def candidates(self, uniform: float, shape: torch.Size, plan: Knobs | None) -> list[float]:
        """Settings L-GreCo may give a tensor of ``shape`` when the user's setting is
        ``uniform`` (``plan``: this method's ``Plan`` knobs from the L-GreCo config). Those that
        would not compress it are dropped by the caller."""

    @abstractmethod
    def candidate_errors(self, g: torch.Tensor, settings: list[float]) -> list[float]:
        """||g - C_s(g)||_F for each setting s (an expected value for random methods), from one
        tensor ``g``; exact or a close estimate, deterministic."""

    # -- what the optimizer tells ------------------------------------------------------------------
    @property
    def momentum(self) -> float:
        """The optimizer momentum the reducer corrects for (Deep Gradient Compression's
        momentum correction, :mod:`distcomp.compression.dgc`); 0: none."""
        return 0.0

    @classmethod
    def options_from_optimizer(cls, optimizer: torch.optim.Optimizer) -> dict:
        """Options this method reads from the user's optimizer (top-k: an SGD's momentum);
        none by default."""
        return {}


class GatherCompressor(Compressor):
    """A method whose per-rank payloads are byte strings that cannot be summed in compressed
    form: they are all-gathered, and every rank decodes and sums all of them."""

    @abstractmethod
    def encode(self, x: torch.Tensor, setting: float,
               generator: torch.Generator | None = None) -> torch.Tensor:
        """x: (n,) fp32 -> (wire_bytes,) uint8 payload."""

    @abstractmethod
    def decode(self, payload: torch.Tensor, numel: int, setting: float) -> torch.Tensor:
        """(wire_bytes,) uint8 payload -> (numel,) fp32 approximation of the encoded tensor."""

    def decode_sum(self, payloads: torch.Tensor, numel: int, setting: float) -> torch.Tensor:
        """payloads: (world, wire_bytes) uint8, one row per rank -> (numel,) fp32 sum."""
        return self.decode_rows(payloads, numel, setting)[0]

    def decode_rows(
        self, payloads: torch.Tensor, numel: int, setting: float, keep: int | None = None
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(sum of all rows' decodings, decoding of row ``keep`` or None), each row decoded
        once: the reducer needs the sum and its own row (for error feedback) from one pass."""
        out = torch.zeros(numel, dtype=torch.float32, device=payloads.device)
        kept = None
        for i, row in enumerate(payloads):
            decoded = self.decode(row, numel, setting)
            out += decoded
            if i == keep:
                kept = decoded
        return out, kept

    def reduce(self, items: list[Item], exchange: Exchange,
               memory: dict[str, torch.Tensor]) -> list[Reduced] | None:
        """Encode every item (own random numbers per rank), all-gather the payloads beside the
        first round's all-reduce, decode every row and sum."""
        payloads = [self.encode(it.x.reshape(-1), it.setting, exchange.generator(it.key))
                    for it in items]
        done = exchange.first_round([], torch.cat(payloads))
        if done is None:
            return None
        gathered = done[1]
        comm, out, offset = exchange.comm, [], 0
        for it, own in zip(items, payloads):
            n, nb = it.x.numel(), own.numel()
            rows = gathered[:, offset : offset + nb]
            offset += nb
            keep = comm.rank if exchange.keep_own else None
            total, mine = self.decode_rows(rows, n, it.setting, keep)
            out.append(Reduced(total.view_as(it.x) / comm.world_size,
                               None if mine is None else mine.view_as(it.x), nb, "allgather"))
        return out


def bytes_as(data: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """Reinterpret a 1-D uint8 slice as ``dtype``; copies only when the slice is misaligned
    (payloads of several tensors are concatenated at arbitrary byte offsets)."""
    itemsize = torch.empty((), dtype=dtype).element_size()
    if data.storage_offset() % itemsize or not data.is_contiguous():
        data = data.clone()
    return data.view(dtype)


class _Done:
    def __init__(self, t: torch.Tensor):
        self._t = t

    def wait(self) -> torch.Tensor:
        return self._t


class _AloneComm:
    """The collectives of a world of one rank: a sum is the tensor, a gather one row of it."""

    rank, world_size = 0, 1

    def __init__(self, device: torch.device):
        self.device = device

    def all_reduce_sum(self, t: torch.Tensor) -> _Done:
        return _Done(t)

    def all_gather(self, t: torch.Tensor) -> _Done:
        return _Done(t.unsqueeze(0))


class _Alone:
    """The exchange of :meth:`Compressor.roundtrip`: one rank, one generator for everything,
    error feedback on (as the reducer runs by default)."""

    keep_own, seed, rows = True, 0, None

    def __init__(self, device: torch.device, generator: torch.Generator | None):
        self.comm = _AloneComm(device)
        self._generator = generator

    def first_round(self, summed: list[torch.Tensor], gathered: torch.Tensor | None):
        return list(summed), None if gathered is None else gathered.unsqueeze(0)

    def generator(self, key: str, shared: bool = False) -> torch.Generator | None:
        return self._generator


# -- the registry ----------------------------------------------------------------------------------
def _register(cls: type[Compressor]) -> None:
    """Checks a method class completely when it is defined, then registers it."""
    where = f"compression method {cls.__dict__['name']!r} ({cls.__module__}.{cls.__qualname__})"
    missing = [n for n in dir(cls) if getattr(getattr(cls, n, None), "__isabstractmethod__",
                                               False)]
    if missing:
        raise TypeError(f"{where} does not define {', '.join(sorted(missing))}")
    for attr in ("knob", "Options"):
        if getattr(cls, attr, None) is None:
            raise TypeError(f"{where} does not declare {attr!r}")
    for attr in ("Options", "Plan"):
        kind = getattr(cls, attr)
        if kind is not None and not (dataclasses.is_dataclass(kind) and issubclass(kind, Knobs)):
            raise TypeError(f"{where}: {attr} must be a Knobs dataclass")
    if cls.knob not in field_types(cls.Options):
        raise TypeError(f"{where}: its knob {cls.knob!r} is not a field of its Options")
    if cls.name in _REGISTRY:
        raise TypeError(f"{where}: the name is taken by {_REGISTRY[cls.name].__qualname__}")
    for attr in ("Options", "Plan"):
        for other in _REGISTRY.values():
            clash = _clashing_fields(getattr(cls, attr), getattr(other, attr))
            if clash:
                raise TypeError(f"{where}: {attr} field(s) {clash} are declared differently by "
                                f"{other.name!r}; a knob name means one thing everywhere")
    _REGISTRY[cls.name] = cls


def _clashing_fields(a: type | None, b: type | None) -> list[str]:
    """Fields both dataclasses have with another type or range (defaults may differ)."""
    if a is None or b is None:
        return []
    fa, fb = ({f.name: f for f in dataclasses.fields(k)} for k in (a, b))
    ta, tb = field_types(a), field_types(b)
    return sorted(n for n in fa.keys() & fb.keys()
                  if ta[n] != tb[n] or dict(fa[n].metadata) != dict(fb[n].metadata))


def method_names() -> list[str]:
    """Every registered method, sorted."""
    return sorted(_REGISTRY)


def method_class(name: str) -> type[Compressor]:
    """The class registered as ``name``; ValueError listing the methods otherwise."""
    try:
        return _REGISTRY[name]
    except (KeyError, TypeError):
        raise ValueError(f"method must be one of {method_names()}, got {name!r}") from None


def get_compressor(name: str, **knobs: Any) -> Compressor:
    """An instance of method ``name`` with these options (the rest at their defaults)."""
    return method_class(name)(**knobs)


def knob_owners(group: str = "Options") -> dict[str, list[type[Compressor]]]:
    """Knob name -> the methods whose ``Options`` (or ``Plan``) declare it."""
    out: dict[str, list[type[Compressor]]] = {}
    for cls in _REGISTRY.values():
        kind = getattr(cls, group)
        for name in [] if kind is None else field_types(kind):
            out.setdefault(name, []).append(cls)
    return out


def knob_field(name: str, group: str = "Options") -> tuple[Any, typing.Mapping]:
    """(type, range metadata) of a knob, as every method that has it declares it."""
    cls = knob_owners(group)[name][0]
    kind = getattr(cls, group)
    f = {f.name: f for f in dataclasses.fields(kind)}[name]
    return field_types(kind)[name], f.metadata
