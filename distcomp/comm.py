"""The two collectives the reducer needs, behind a tiny interface so that DDP hooks, DeepSpeed
and Horovod adapters can share one reducer. Every wait has a timeout: a lost peer becomes an
exception, never a hang.
"""

from __future__ import annotations

import hashlib
import json
from datetime import timedelta
from typing import Protocol

import torch
import torch.distributed as dist


class Handle(Protocol):
    def wait(self) -> torch.Tensor: ...


class Comm(Protocol):
    rank: int
    world_size: int
    device: torch.device  # where this backend's tensors live (NCCL: the current CUDA device)

    def all_reduce_sum(self, t: torch.Tensor) -> Handle:
        """Start an in-place sum of ``t`` over ranks; ``wait()`` returns ``t``."""

    def all_gather(self, t: torch.Tensor) -> Handle:
        """Start gathering ``t`` (same shape on every rank); ``wait()`` -> (world, *t.shape)."""


def split_like(flat: torch.Tensor, like: list[torch.Tensor]) -> list[torch.Tensor]:
    """Consecutive views of ``flat`` (a fused collective's buffer) shaped as the tensors of
    ``like``, the order they were concatenated in."""
    out, offset = [], 0
    for t in like:
        out.append(flat[offset : offset + t.numel()].view_as(t))
        offset += t.numel()
    return out


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


class _ToDevice:
    """A handle whose result is copied to ``device`` once the collective finished."""

    def __init__(self, inner: Handle, device: torch.device):
        self._inner, self._device = inner, device

    def wait(self) -> torch.Tensor:
        return self._inner.wait().to(self._device)


class TorchComm:
    """torch.distributed on one process group (gloo or NCCL)."""

    def __init__(self, group: dist.ProcessGroup | None = None, timeout_s: float = 300.0):
        self.group = group
        self.timeout_s = timeout_s
        self.rank = dist.get_rank(group)
        self.world_size = dist.get_world_size(group)
        self.device = torch.device("cuda", torch.cuda.current_device()) \
            if dist.get_backend(group) == "nccl" else torch.device("cpu")

    def all_reduce_sum(self, t: torch.Tensor) -> Handle:
        work = dist.all_reduce(t, op=dist.ReduceOp.SUM, group=self.group, async_op=True)
        return _TorchHandle(work, t, f"all_reduce of {t.numel()} x {t.dtype}", self.timeout_s)

    def all_gather(self, t: torch.Tensor) -> Handle:
        what = f"all_gather of {t.numel()} x {t.dtype}"
        # gloo all-reduces and broadcasts CUDA tensors but documents no CUDA all-gather: a CUDA
        # payload (gloo ranks sharing a GPU) goes through host memory, as gloo's own CUDA paths do
        staged = t.is_cuda and dist.get_backend(self.group) == "gloo"
        src = t.cpu() if staged else t
        flat = src.new_empty(self.world_size * t.numel())  # gloo wants a flat output
        gather = getattr(dist, "all_gather_single", None) or dist.all_gather_into_tensor
        work = gather(flat, src.reshape(-1), group=self.group, async_op=True)
        out = flat.view(self.world_size, *t.shape)
        if staged:
            return _ToDevice(_TorchHandle(work, out, what, self.timeout_s), t.device)
        return _TorchHandle(work, out, what, self.timeout_s)

    def all_to_all(self, t: torch.Tensor) -> Handle:
        """Start sending row i of ``t`` (world, ...) to rank i; ``wait()`` -> a tensor of
        ``t``'s shape whose row i came from rank i."""
        out = torch.empty_like(t)
        work = dist.all_to_all_single(out, t.contiguous(), group=self.group, async_op=True)
        return _TorchHandle(work, out, f"all_to_all of {t.numel()} x {t.dtype}", self.timeout_s)

    def reduce_scatter_sum(self, t: torch.Tensor) -> Handle:
        """Start summing ``t`` (world x n,) over ranks, chunk i to rank i; ``wait()`` -> (n,)."""
        out = t.new_empty(t.numel() // self.world_size)
        scatter = getattr(dist, "reduce_scatter_single", None) or dist.reduce_scatter_tensor
        work = scatter(out, t.contiguous(), op=dist.ReduceOp.SUM, group=self.group,
                       async_op=True)
        return _TorchHandle(work, out, f"reduce_scatter of {t.numel()} x {t.dtype}",
                            self.timeout_s)


def check_same(comm: Comm, what: str, settings: dict) -> None:
    """Raise the same ValueError on every rank if the ranks were set up differently.

    A rank with another PowerSGD rank, CO2 tau or L-GreCo budget would not hang at once: it
    would pair collectives of other sizes (gloo aborts, NCCL may read garbage) or, worse,
    average silently wrong. So each integration calls this once at set-up: a 32-byte SHA-256
    of ``settings`` (JSON, sorted keys) is all-gathered; only when the digests differ are the
    settings themselves gathered, so that every rank raises the same message naming each field
    and each rank's value. Costs one all-gather of world x 32 bytes.
    """
    blob = json.dumps(settings, sort_keys=True, default=str).encode()
    dev = comm.device
    digest = torch.tensor(list(hashlib.sha256(blob).digest()), dtype=torch.uint8, device=dev)
    digests = comm.all_gather(digest).wait()
    if bool((digests == digests[0]).all()):
        return
    lengths = comm.all_gather(torch.tensor([len(blob)], dtype=torch.int64, device=dev))
    lengths = lengths.wait().reshape(-1).cpu()
    padded = torch.zeros(int(lengths.max()), dtype=torch.uint8, device=dev)
    padded[: len(blob)] = torch.tensor(list(blob), dtype=torch.uint8)
    rows = comm.all_gather(padded).wait().cpu()
    per_rank = [json.loads(bytes(rows[r, : int(n)].tolist())) for r, n in enumerate(lengths)]
    keys = sorted({k for s in per_rank for k in s})
    differ = [k for k in keys if any(s.get(k) != per_rank[0].get(k) for s in per_rank)]
    detail = "; ".join(
        f"{k}: " + ", ".join(f"rank {r}={s.get(k)!r}" for r, s in enumerate(per_rank))
        for k in differ)
    raise ValueError(f"{what}: ranks were configured differently ({detail})")


def model_fingerprint(named: list[tuple[str, torch.Tensor]]) -> str:
    """SHA-256 of the trainable parameters' names, shapes and dtypes, to compare across ranks."""
    text = ";".join(f"{n}:{tuple(p.shape)}:{p.dtype}" for n, p in named)
    return hashlib.sha256(text.encode()).hexdigest()[:16]
