"""8-bit weights in a sharded model's all-gathers (one-level FSDP2 across nodes).

Sharded over the whole world, FSDP2 all-gathers every module's weights before its forward and
again before its backward, densely: on a slow link those all-gathers cost more than the
gradient's reduce-scatter (two per step against one). Weights, unlike gradients, need no error
feedback to stay unbiased over steps: the master shard stays fp32 on its rank and the optimizer
updates it exactly; only the copy used for one forward and backward is rounded. So each rank
sends its shard as int8 with one fp32 scale (absolute maximum / 127) per block of
``BLOCK`` elements, blocks restarting at each parameter: about 1 + 4/256 bytes per element
against fp32's 4, bf16's 2. The rounding error of an element is at most half its block's scale
(max |w| / 254 of the block).

Every rank, its own chunk included, uses the decoded bytes, so all ranks compute with the same
weights (their gradients differ from fp32's only by that rounding, which the loss measures: see
BENCHMARKS.md). Inputs FSDP2 gathers as raw bytes (parameters of mixed dtypes) go dense.
"""

from __future__ import annotations

import math

import torch
import torch.distributed as dist

from distcomp.comm import TorchComm

BLOCK = 256  # elements per fp32 scale
QUANTIZED = (torch.float32, torch.bfloat16, torch.float16)


def _segments(n: int, block: int, splits: list[int] | None) -> tuple[list[tuple], int]:
    """(element start, length, first block) per segment, and the blocks in all: blocks restart
    at each segment (a parameter's chunk), so no scale spans two parameters (a bias or a norm
    weight beside a conv weight would set the conv weight's step). ``splits`` that do not sum
    to ``n`` count as one segment."""
    splits = splits if splits and sum(splits) == n else [n]
    out, start, row = [], 0, 0
    for length in splits:
        out.append((start, length, row))
        start, row = start + length, row + math.ceil(length / block)
    return out, row


def encode(x: torch.Tensor, block: int = BLOCK, splits: list[int] | None = None) -> torch.Tensor:
    """Flat ``x`` (n elements) as bytes: n int8 codes, then one fp32 scale per block of
    ``block`` elements of each segment of ``splits`` (uint8, n + 4 (blocks) bytes)."""
    n = x.numel()
    segments, k = _segments(n, block, splits)
    rows = torch.zeros(k * block, dtype=torch.float32, device=x.device)
    flat = x.reshape(-1)
    for start, length, row in segments:
        rows[row * block : row * block + length] = flat[start : start + length]
    rows = rows.view(k, block)
    scale = rows.abs().amax(dim=1) / 127.0
    codes = torch.round(rows / torch.where(scale > 0, scale, 1.0)[:, None]).to(torch.int8)
    codes = codes.reshape(-1)
    codes = torch.cat([codes[row * block : row * block + length]
                       for _, length, row in segments])
    return torch.cat([codes.view(torch.uint8), scale.view(torch.uint8)])


def decode(payload: torch.Tensor, n: int, out: torch.Tensor, block: int = BLOCK,
           splits: list[int] | None = None) -> None:
    """Write the ``n`` elements :func:`encode` packed into ``payload`` (uint8, same ``block``
    and ``splits``) into ``out`` (flat, any float dtype)."""
    segments, k = _segments(n, block, splits)
    codes = payload[:n].view(torch.int8).float()
    scale = payload[n:n + 4 * k].clone().view(torch.float32)  # a row may start unaligned
    per = torch.cat([scale[row : row + math.ceil(length / block)].repeat_interleave(block)[:length]
                     for _, length, row in segments])
    out.copy_(codes * per)


def payload_bytes(n: int, block: int = BLOCK, splits: list[int] | None = None) -> int:
    """Bytes one rank sends for a chunk of ``n`` elements."""
    return n + 4 * _segments(n, block, splits)[1]


class QuantizedAllGather:
    """FSDP2's all-gather for one sharded module (``FSDPModule.set_custom_all_gather``):
    each rank's chunk of the flat all-gather buffer travels as int8 codes with block scales.

    Args:
      timeout_s: seconds the all-gather may take before it raises (never a hang).
      block: elements per scale.
      splits: elements of each parameter's chunk in the module's flat buffer (FSDP2's order,
        padding included): blocks restart at each; None: one segment.

    Fields:
      sent_bytes: bytes this rank sent so far (its encoded chunks).
      dense_bytes: what FSDP2's own all-gathers would have sent (its chunks at their dtype).
      calls: all-gathers run (forward and backward each count).
    """

    def __init__(self, timeout_s: float = 300.0, block: int = BLOCK,
                 splits: list[int] | None = None):
        if block < 1:
            raise ValueError(f"block must be >= 1 element, got {block}")
        self.timeout_s, self.block, self.splits = timeout_s, block, splits
        self.sent_bytes = self.dense_bytes = self.calls = 0
        self.closed = False

    def allocate(self, size, *, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
        return torch.empty(*size, dtype=dtype, device=device)

    def __call__(self, output_tensor: torch.Tensor, input_tensor: torch.Tensor, group,
                 async_op: bool = False) -> None:
        """``output_tensor`` (world x n,) <- every rank's ``input_tensor`` (n,), decoded.
        Synchronous (returns no work): FSDP2 then treats the gather as finished."""
        if self.closed:
            raise RuntimeError("the quantized all-gather's FSDPCompression is closed; build a "
                               "new one")
        comm = TorchComm(group, self.timeout_s)
        n = input_tensor.numel()
        self.calls += 1
        self.dense_bytes += n * input_tensor.element_size()
        if input_tensor.dtype not in QUANTIZED:  # FSDP2's raw bytes of mixed dtypes
            self.sent_bytes += n * input_tensor.element_size()
            output_tensor.view(comm.world_size, n).copy_(comm.all_gather(input_tensor).wait())
            return
        payload = encode(input_tensor, self.block, self.splits)
        self.sent_bytes += payload.numel()
        gathered = comm.all_gather(payload).wait()
        rows = output_tensor.view(comm.world_size, n)
        for r in range(comm.world_size):
            decode(gathered[r], n, rows[r], self.block, self.splits)

    def summary(self) -> dict:
        """Bytes sent against FSDP2's own all-gathers'."""
        return {"sent_bytes": self.sent_bytes, "dense_bytes": self.dense_bytes,
                "ratio": self.sent_bytes / self.dense_bytes if self.dense_bytes else 1.0,
                "calls": self.calls}


def check_custom_all_gather() -> None:
    """RuntimeError on a torch whose FSDP2 takes no custom all-gather."""
    from torch.distributed.fsdp import FSDPModule

    if not hasattr(FSDPModule, "set_custom_all_gather") or not dist.is_available():
        raise RuntimeError(f"torch {torch.__version__}'s FSDPModule lacks "
                           "set_custom_all_gather, which an 8-bit all-gather needs")
