"""The small interface every gradient compressor implements, and the registry that maps names
("powersgd", "topk", "qsgd") to classes for configs and CLIs.

A compressor knows tensor math only: it never talks to a process group. Two families differ in
how their payloads combine across ranks, which decides the collective the reducer uses:

* ``LINEAR`` (PowerSGD): payloads are summed with all-reduce; compression is a projection that
  every rank shares, so the sum of compressed tensors is the compression of the sum.
* ``GATHER`` (top-k, QSGD): each rank's payload is a byte string that cannot be summed in
  compressed form; payloads are all-gathered and every rank decodes and sums all of them.

Units: a *setting* is the family's one knob (rank: int, density: float, bits: int). Bytes are
payload bytes this rank contributes to collectives for one tensor in one step.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from typing import ClassVar

import torch

FP32_BYTES = 4


class Compressor(ABC):
    """Base class: validation, byte accounting and the "is it worth compressing" rule."""

    name: ClassVar[str]
    setting_name: ClassVar[str]
    family: ClassVar[str]  # "linear" or "gather"

    @abstractmethod
    def validate_setting(self, setting: float) -> float:
        """Return the setting normalised to its type; raise ``ValueError`` naming the knob."""

    @abstractmethod
    def eligible(self, shape: torch.Size) -> bool:
        """Whether this family can compress a tensor of this shape at all."""

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


class GatherCompressor(Compressor):
    """A compressor whose per-rank payloads are byte strings exchanged with all-gather."""

    family = "gather"

    @abstractmethod
    def encode(
        self, x: torch.Tensor, setting: float, generator: torch.Generator | None = None
    ) -> torch.Tensor:
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

    def roundtrip(
        self, x: torch.Tensor, setting: float, generator: torch.Generator | None = None
    ) -> torch.Tensor:
        """C(x): what the rest of the world sees of ``x`` (same shape as ``x``)."""
        flat = x.reshape(-1).float()
        return self.decode(self.encode(flat, setting, generator), flat.numel(), setting).view_as(x)


def bytes_as(data: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """Reinterpret a 1-D uint8 slice as ``dtype``; copies only when the slice is misaligned
    (payloads of several tensors are concatenated at arbitrary byte offsets)."""
    itemsize = torch.empty((), dtype=dtype).element_size()
    if data.storage_offset() % itemsize or not data.is_contiguous():
        data = data.clone()
    return data.view(dtype)


_REGISTRY: dict[str, type[Compressor]] = {}


def register(cls: type[Compressor]) -> type[Compressor]:
    _REGISTRY[cls.name] = cls
    return cls


def compressor_names() -> list[str]:
    return sorted(_REGISTRY)


def get_compressor(name: str, **kwargs) -> Compressor:
    """Instantiate a compressor by registry name; unknown names raise ``ValueError``."""
    # Importing the modules fills the registry.
    from distcomp.compression.methods import powersgd, qsgd, topk  # noqa: F401

    if name not in _REGISTRY:
        raise ValueError(f"unknown compressor {name!r}; choose from {compressor_names()}")
    return _REGISTRY[name](**kwargs)
