"""Where each parameter's gradient shard lies in FSDP2's flat reduce-scatter output.

FSDP2 (``torch.distributed.fsdp.fully_shard``) reduces one module's gradients in one
reduce-scatter over its shard group of S ranks. Every parameter of global shape (d0, *rest) is
padded along dim 0 to a multiple of S and cut into S chunks of c = ceil(d0 / S) rows; rank i
receives chunk i of every parameter, one after the other, in the module's parameter order:

    output (elements): [ p0 chunk i (c0 * prod(rest0)) | p1 chunk i (c1 * prod(rest1)) | ... ]

Only the first ``rows(d0, S, i) = clamp(d0 - i * c, 0, c)`` rows of a chunk are real; the rest
is padding (zeros). A :class:`ShardSlot` names one parameter's real rows, so a reducer can
average each shard across replicas as the tensor (rows, *rest) it is: a row block of the
weight, which PowerSGD compresses as an ordinary matrix.

The parameter order is FSDP2's: its managed modules in depth-first post-order (children
before their parent, a nested ``fully_shard`` module left to its own group), each module's own
parameters in registration order, shared parameters once. This module reads it from the
public module tree; the caller checks the flat size on every call, so a layout FSDP laid out
otherwise fails loudly instead of averaging the wrong rows.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn


@dataclass(frozen=True)
class ShardSlot:
    """One parameter's shard in the flat output: ``key`` (its name), ``shape`` (rows, *rest)
    of the real rows on this rank, ``offset`` (elements from the start of the output) and
    ``padded`` (elements the chunk occupies, padding included)."""

    key: str
    shape: torch.Size
    offset: int
    padded: int

    @property
    def numel(self) -> int:
        return math.prod(self.shape)


def shard_rows(dim0: int, shards: int, index: int) -> int:
    """Real rows of chunk ``index`` when ``dim0`` rows are cut into ``shards`` equal chunks
    (the last ones short or empty, as ``torch.chunk`` leaves them)."""
    per = -(-dim0 // shards)
    return max(0, min(per, dim0 - index * per))


def layout(params: list[tuple[str, torch.Size]], shards: int, index: int) -> list[ShardSlot]:
    """The slots of rank ``index`` of ``shards`` for parameters (name, global shape), in the
    order FSDP2 lays them out. A 0-d parameter counts as one row."""
    out, offset = [], 0
    for key, shape in params:
        shape = torch.Size(shape) if len(shape) else torch.Size([1])
        rest = shape[1:]
        per = -(-shape[0] // shards)
        padded = per * math.prod(rest)
        out.append(ShardSlot(key, torch.Size([shard_rows(shape[0], shards, index), *rest]),
                             offset, padded))
        offset += padded
    return out


def views(flat: torch.Tensor, slots: list[ShardSlot]) -> list[torch.Tensor]:
    """Each slot's real rows as a view into ``flat`` (writes go to the output in place)."""
    return [flat[s.offset : s.offset + s.numel].view(s.shape) for s in slots]


def managed_parameters(module: nn.Module, is_sharded: Callable[[nn.Module], bool]
                       ) -> list[tuple[nn.Module, nn.Parameter]]:
    """(owning module, parameter) of every parameter ``fully_shard(module)`` manages, in its
    order: modules depth-first, children before parents, not descending into another sharded
    module (``is_sharded``), own parameters in registration order, each parameter once."""
    seen_modules: set[nn.Module] = set()
    order: list[nn.Module] = []

    def visit(m: nn.Module) -> None:
        seen_modules.add(m)
        for child in m.children():
            if child not in seen_modules and not is_sharded(child):
                visit(child)
        order.append(m)

    visit(module)
    out, seen = [], set()
    for m in order:
        for p in m.parameters(recurse=False):
            if p not in seen:
                seen.add(p)
                out.append((m, p))
    return out


def check_placement(name: str, p: torch.Tensor, mesh):
    """The parameter's mesh, checked: 1-D, the same for every parameter, sharded on dim 0."""
    from torch.distributed.tensor import Shard

    if p.device_mesh.ndim != 1:
        raise ValueError(f"parameter {name!r} is on a {p.device_mesh.ndim}-D mesh: native HSDP "
                         "all-reduces densely before any hook; shard with the 1-D sub-mesh of "
                         "each node's ranks (mesh['shard']) and FSDPCompression averages across "
                         "nodes")
    if mesh is not None and p.device_mesh != mesh:
        raise ValueError(f"parameter {name!r} is on another mesh than the others; shard every "
                         "module over the same node mesh")
    if tuple(p.placements) != (Shard(0),):
        raise ValueError(f"parameter {name!r} is placed {tuple(p.placements)}; FSDPCompression "
                         "needs FSDP2's default Shard(0) (no shard_placement_fn)")
    return p.device_mesh
