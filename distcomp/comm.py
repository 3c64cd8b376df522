"""The two collectives the reducer needs, behind a tiny interface so that DDP hooks, DeepSpeed
and Horovod adapters can share one reducer. Every wait has a timeout: a lost peer becomes an
exception, never a hang.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Protocol

import torch
import torch.distributed as dist


class Handle(Protocol):
    def wait(self) -> torch.Tensor: ...


class Comm(Protocol):
    rank: int
    world_size: int

    def all_reduce_sum(self, t: torch.Tensor) -> Handle:
        """Start an in-place sum of ``t`` over ranks; ``wait()`` returns ``t``."""

    def all_gather(self, t: torch.Tensor) -> Handle:
        """Start gathering ``t`` (same shape on every rank); ``wait()`` -> (world, *t.shape)."""


class CollectiveTimeout(RuntimeError):
    """A collective did not finish within the configured timeout (a peer is probably gone)."""


def wait_work(work: dist.Work, what: str, timeout_s: float) -> None:
    """Wait for an async collective at most ``timeout_s``; a failure or timeout becomes a
    :class:`CollectiveTimeout` that names the collective."""
    try:
        done = work.wait(timeout=timedelta(seconds=timeout_s))
    except RuntimeError as err:
        raise CollectiveTimeout(
            f"{what} failed or timed out after {timeout_s:.0f}s "
            f"(a peer may have been lost): {err}"
        ) from err
    if done is False:
        raise CollectiveTimeout(f"{what} timed out after {timeout_s:.0f}s")


class _TorchHandle:
    def __init__(self, work: dist.Work, result: torch.Tensor, what: str, timeout_s: float):
        self._work, self._result, self._what, self._timeout_s = work, result, what, timeout_s

    def wait(self) -> torch.Tensor:
        wait_work(self._work, self._what, self._timeout_s)
        return self._result


class TorchComm:
    """torch.distributed on one process group (gloo or NCCL)."""

    def __init__(self, group: dist.ProcessGroup | None = None, timeout_s: float = 300.0):
        self.group = group
        self.timeout_s = timeout_s
        self.rank = dist.get_rank(group)
        self.world_size = dist.get_world_size(group)

    def all_reduce_sum(self, t: torch.Tensor) -> Handle:
        work = dist.all_reduce(t, op=dist.ReduceOp.SUM, group=self.group, async_op=True)
        return _TorchHandle(work, t, f"all_reduce of {t.numel()} x {t.dtype}", self.timeout_s)

    def all_gather(self, t: torch.Tensor) -> Handle:
        flat = t.new_empty(self.world_size * t.numel())  # gloo wants a flat output
        gather = getattr(dist, "all_gather_single", None) or dist.all_gather_into_tensor
        work = gather(flat, t.reshape(-1), group=self.group, async_op=True)
        out = flat.view(self.world_size, *t.shape)
        return _TorchHandle(work, out, f"all_gather of {t.numel()} x {t.dtype}", self.timeout_s)
