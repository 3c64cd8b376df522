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

Hosts are the launcher's (``LOCAL_WORLD_SIZE`` ranks each). Each block of a model's ``blocks``
(or, without one, each child module holding parameters) is one FSDP unit, then the root, as a
transformer is usually sharded.
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.distributed as dist
from torch import nn

Sharding = Literal["flat", "hybrid"]
PREFIXES: dict[str, Sharding] = {"fsdp": "flat", "hsdp": "hybrid"}
MEMORY_KEYS = ("param_bytes", "optimizer_state_bytes", "compression_state_bytes")


def shard(net: nn.Module, sharding: Sharding, compressed: bool) -> nn.Module:
    """``net`` under ``fully_shard``: over every rank (``"flat"``), or over each host's ranks,
    replicated across hosts (``"hybrid"``: native HSDP's 2-D mesh, or with ``compressed`` the
    1-D mesh of the host that ``FSDPCompression`` averages across)."""
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard

    from distcomp.compression.topology import resolve

    world = dist.get_world_size()
    if sharding == "flat":
        mesh = init_device_mesh("cpu", (world,))
    else:
        per = resolve(dist.get_rank(), world)[0].ranks_per_node
        if per == world:
            raise ValueError(f"HSDP replicates across hosts; all {world} ranks are on one")
        mesh = init_device_mesh("cpu", (world // per, per), mesh_dim_names=("node", "shard"))
        if compressed:
            mesh = mesh["shard"]
    units = list(net.blocks) if isinstance(getattr(net, "blocks", None), nn.Sequential) else \
        [c for c in net.children() if any(True for _ in c.parameters())]
    for unit in units:
        fully_shard(unit, mesh=mesh)
    return fully_shard(net, mesh=mesh)


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
