"""Shard a model with FSDP2 in the layout :class:`~distcomp.hooks.fsdp.FSDPCompression` compresses.

Two layouts, by where the shards live:

``"hybrid"`` (the default): shard inside each node, replicate across nodes. The reduce-scatter
and the weights' all-gathers stay on the node's fast link; only the replicas' average crosses
nodes. With ``compressed=True`` the model is sharded on the 1-D mesh of its node's ranks and
``FSDPCompression`` averages across nodes; with ``compressed=False`` it is native HSDP (a 2-D
mesh, FSDP2's dense all-reduce across nodes): the baseline.

``"flat"``: one mesh over every rank, no replicas (the least memory per rank): the
reduce-scatter and all-gathers cross nodes, which ``FSDPCompression`` compresses (the
reduce-scatter, and the all-gathers with ``all_gather="int8"``).

Each block of the model's ``blocks`` (a ``Sequential`` or ``ModuleList``), or without one
each child module holding parameters, is one FSDP unit, then the root: how a transformer is
usually sharded, so a unit's all-gather overlaps the previous unit's compute.
"""

from __future__ import annotations

from typing import Literal

import torch.distributed as dist
from torch import nn

from distcomp.compression.topology import resolve

Sharding = Literal["flat", "hybrid"]
SHARDINGS: tuple[str, ...] = ("flat", "hybrid")


def shard_units(model: nn.Module) -> list[nn.Module]:
    """The modules that become FSDP units before the root."""
    blocks = getattr(model, "blocks", None)
    if isinstance(blocks, (nn.Sequential, nn.ModuleList)):
        return list(blocks)
    return [c for c in model.children() if any(True for _ in c.parameters())]


def shard_model(model: nn.Module, sharding: Sharding = "hybrid", *, compressed: bool = True,
                ranks_per_node: int | None = None, **fully_shard_kwargs) -> nn.Module:
    """``model`` under ``fully_shard`` in place (and returned), in ``sharding``'s layout.

    Args:
      sharding: ``"hybrid"`` or ``"flat"`` (module docstring).
      compressed: hybrid only: the node's 1-D mesh for ``FSDPCompression`` (True) or native
        HSDP's 2-D mesh (False).
      ranks_per_node: the nodes (default: the launcher's, e.g. torchrun's ``LOCAL_WORLD_SIZE``).
      fully_shard_kwargs: passed to every ``fully_shard`` (``mp_policy``,
        ``reshard_after_forward``, ...).

    ValueError, before any collective, for an unknown layout or a hybrid one on one node."""
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard

    if sharding not in SHARDINGS:
        raise ValueError(f"sharding must be one of {', '.join(SHARDINGS)}, got {sharding!r}")
    rank, world = dist.get_rank(), dist.get_world_size()
    device = "cuda" if dist.get_backend() == "nccl" else "cpu"
    if sharding == "flat":
        mesh = init_device_mesh(device, (world,))
    else:
        per = resolve(rank, world, ranks_per_node)[0].ranks_per_node
        if per == world:
            raise ValueError(f"hybrid sharding replicates across nodes; all {world} ranks are "
                             "on one node: use sharding='flat' (or give ranks_per_node)")
        mesh = init_device_mesh(device, (world // per, per), mesh_dim_names=("node", "shard"))
        if compressed:
            mesh = mesh["shard"]
    for unit in shard_units(model):
        fully_shard(unit, mesh=mesh, **fully_shard_kwargs)
    return fully_shard(model, mesh=mesh, **fully_shard_kwargs)
