"""Sharded arms (FSDP2) of the benchmarks: how a workload's model is sharded, and what each rank
holds in memory.

    fsdp                     FSDP2 over every rank (one level, no replicas): its own dense
                             reduce-scatter crosses the hosts
    hsdp                     native HSDP: sharded inside each host, the dense all-reduce of each
                             shard across hosts
    hsdp_[lgreco_]METHOD     sharded inside each host, the cross-host average compressed by
                             ``FSDPCompression`` (any registered method, ``@SETTING`` as usual)
    fsdp_METHOD              FSDP2 over every rank with ``FSDPCompression``'s compressed
                             reduce-scatter (exact inside the host, encoded across hosts)
    fsdp_METHOD_ag8          the same with the weights' all-gathers as 8-bit codes
                             (``all_gather="int8"``)

Hosts are the launcher's (``LOCAL_WORLD_SIZE`` ranks each); FSDP units as
:func:`distcomp.sharding.shard_model` makes them.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch import nn

from distcomp.sharding import Sharding, shard_model

PREFIXES: dict[str, Sharding] = {"fsdp": "flat", "hsdp": "hybrid"}
MEMORY_KEYS = ("param_bytes", "optimizer_state_bytes", "compression_state_bytes")


def shard(net: nn.Module, sharding: Sharding, compressed: bool) -> nn.Module:
    """``net`` under ``fully_shard`` as the arm runs it (:func:`distcomp.sharding.shard_model`)."""
    return shard_model(net, sharding, compressed=compressed)


def memory(model: nn.Module, optimizer: torch.optim.Optimizer, state) -> dict:
    """Bytes this rank holds for training: its parameters, its optimizer state and the
    compression state (error feedback, PowerSGD's Qs), local shards only; the maximum over ranks."""
    def local(t: torch.Tensor) -> int:
        t = t.to_local() if hasattr(t, "to_local") else t
        return t.numel() * t.element_size()

    inner = getattr(optimizer, "inner", optimizer)  # CO2's wrapper: its inner optimizer's
    opt_bytes = sum(local(v) for s in inner.state.values() for v in s.values()
                    if isinstance(v, torch.Tensor))
    engine = getattr(state, "scatter", None) or getattr(state, "reducer", None)
    comp = engine.state_bytes() if hasattr(engine, "state_bytes") else 0
    out = torch.tensor([sum(local(p) for p in model.parameters()), opt_bytes, comp],
                       dtype=torch.float64)
    dist.all_reduce(out, op=dist.ReduceOp.MAX)
    return dict(zip(MEMORY_KEYS, (int(v) for v in out.tolist())))
