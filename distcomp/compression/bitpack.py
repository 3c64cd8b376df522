"""Pack b-bit unsigned codes densely into uint8, so quantized payloads cost exactly ceil(n*b/8)
bytes on the wire instead of one byte (or more) per code.

Codes are little-endian within a byte and across bytes: code i occupies bits [i*b, (i+1)*b) of
the bit stream, bit 0 being the least significant bit of byte 0. Three paths, same layout:
  * b divides 8 (1, 2, 4, 8): 8/b codes per byte, combined with shifts (fast, no temporaries);
  * b a multiple of 8 (16, 24, 32): each code split into b/8 little-endian bytes;
  * anything else (3, 5, 6, 7, ...): an explicit (n, b) bit matrix, packed 8 bits at a time.
"""

from __future__ import annotations

import torch

MAX_BITS = 32


def packed_nbytes(n: int, bits: int) -> int:
    """Bytes needed for ``n`` codes of ``bits`` bits each."""
    return (n * bits + 7) // 8


def _check_bits(bits: int) -> None:
    if not isinstance(bits, int) or not 1 <= bits <= MAX_BITS:
        raise ValueError(f"bits must be an int in [1, {MAX_BITS}], got {bits!r}")


def pack_bits(codes: torch.Tensor, bits: int) -> torch.Tensor:
    """Pack codes into a uint8 tensor of ``packed_nbytes(len(codes), bits)`` bytes.

    codes: (n,) integer tensor with values in [0, 2**bits); int64 is safest for bits > 16.
    """
    _check_bits(bits)
    codes = codes.reshape(-1).to(torch.int64)
    n = codes.numel()
    if 8 % bits == 0:
        per_byte = 8 // bits
        pad = (-n) % per_byte
        if pad:
            codes = torch.cat([codes, codes.new_zeros(pad)])
        shifts = torch.arange(per_byte, device=codes.device, dtype=torch.int64) * bits
        return (codes.view(-1, per_byte) << shifts).sum(dim=1).to(torch.uint8)
    if bits % 8 == 0:
        shifts = torch.arange(bits // 8, device=codes.device, dtype=torch.int64) * 8
        return ((codes.unsqueeze(1) >> shifts) & 0xFF).to(torch.uint8).reshape(-1)
    bit_idx = torch.arange(bits, device=codes.device, dtype=torch.int64)
    stream = ((codes.unsqueeze(1) >> bit_idx) & 1).reshape(-1)
    pad = (-stream.numel()) % 8
    if pad:
        stream = torch.cat([stream, stream.new_zeros(pad)])
    weights = torch.arange(8, device=codes.device, dtype=torch.int64)
    return (stream.view(-1, 8) << weights).sum(dim=1).to(torch.uint8)


def unpack_bits(data: torch.Tensor, bits: int, n: int) -> torch.Tensor:
    """Inverse of :func:`pack_bits`: (n,) int64 codes from a uint8 tensor."""
    _check_bits(bits)
    data = data.reshape(-1)
    if data.dtype != torch.uint8:
        raise TypeError(f"packed data must be uint8, got {data.dtype}")
    if data.numel() < packed_nbytes(n, bits):
        raise ValueError(f"{data.numel()} bytes cannot hold {n} codes of {bits} bits")
    raw = data.to(torch.int64)
    if 8 % bits == 0:
        per_byte = 8 // bits
        shifts = torch.arange(per_byte, device=data.device, dtype=torch.int64) * bits
        mask = (1 << bits) - 1
        return ((raw.unsqueeze(1) >> shifts) & mask).reshape(-1)[:n]
    if bits % 8 == 0:
        nb = bits // 8
        shifts = torch.arange(nb, device=data.device, dtype=torch.int64) * 8
        return (raw[: n * nb].view(n, nb) << shifts).sum(dim=1)
    weights = torch.arange(8, device=data.device, dtype=torch.int64)
    stream = ((raw.unsqueeze(1) >> weights) & 1).reshape(-1)[: n * bits]
    bit_idx = torch.arange(bits, device=data.device, dtype=torch.int64)
    return (stream.view(n, bits) << bit_idx).sum(dim=1)
