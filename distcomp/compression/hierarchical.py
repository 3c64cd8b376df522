"""Topology-aware averaging: exact inside a node, compressed only across nodes.

On a cluster of N nodes x L ranks, a flat compressed all-reduce sends every rank's compressed
gradient over the slow inter-node link, and the all-gather payloads of top-k and QSGD grow
with the world size. Averaging in three stages sends each layer over the slow link once per
node instead of once per rank, and compresses only there:

  1. inside each node, a dense all-reduce over the fast link: every rank holds the node mean;
  2. across nodes, each layer compressed and averaged (the usual reducer, error feedback,
     Accordion and L-GreCo included) among the ranks that own it, one per node;
  3. inside each node, every layer shared back from its owner (a dense all-reduce of the
     owned layers, zeros elsewhere).

Who owns a layer: each layer is dealt to one of the L local ranks the first time it is seen
(a bucket's new layers largest first, each to the local rank holding the fewest elements so
far), so every local rank runs the slow stage for about 1/L of the bytes, on its own
slow-link group (the ranks with its local rank on every node). The deal is remembered:
DDP regroups its buckets after the first step, and a layer that changed owner would leave
its error-feedback residual behind. We chose
sharding over one leader per node because the leader would compress, and hold the residuals
and warm-start state for, the whole model while L - 1 ranks wait; sharded, compression work
and that state are split L ways, and with one NIC per GPU (common on GPU clusters) the L
slow-link exchanges travel in parallel. The deal depends only on the bucket's keys and
shapes in the order DDP hands buckets over, so it is the same on every node; each rank's
reducer keeps state only for the layers it owns (its checkpoint holds that share, and the
deal).

The result equals the flat average over all ranks up to the compression of the node means:
stage 2 averages node means, and every node has L ranks.
"""

from __future__ import annotations

import torch
import torch.distributed as dist

from distcomp.comm import Comm, TorchComm
from distcomp.compression.reducer import CompressedReducer
from distcomp.compression.topology import Topology
from distcomp.ledger import ByteLedger


def deal(numels: list[int], load: list[int]) -> list[int]:
    """The local rank each new tensor goes to: largest first, each to the local rank with the
    fewest elements so far (ties: the lower index, then the lower rank); ``load`` (elements
    per local rank) is updated in place. Deterministic."""
    out = [0] * len(numels)
    for i in sorted(range(len(numels)), key=lambda i: (-numels[i], i)):
        r = min(range(len(load)), key=lambda r: (load[r], r))
        out[i] = r
        load[r] += numels[i]
    return out


class HierarchicalReducer:
    """The three stages around one :class:`CompressedReducer`.

    Fields:
      reducer: the slow-stage reducer; its ledger counts the inter-node bytes.
      topology: this rank's place (nodes x ranks per node).
      local, peers: the fast-link (this node's ranks) and slow-link (this local rank on every
        node) communicators.
      local_ledger: bytes this rank handed to the fast-link collectives (stages 1 and 3).
      owner: tensor key -> the local rank that runs its slow stage (dealt on first sight).
      load: elements owned per local rank.
    """

    def __init__(self, reducer: CompressedReducer, topology: Topology, local: Comm,
                 peers: Comm):
        if local.world_size != topology.ranks_per_node or peers.world_size != topology.nodes:
            raise ValueError(f"groups of {local.world_size} local and {peers.world_size} peer "
                             f"ranks do not match {topology}")
        self.reducer, self.topology, self.local, self.peers = reducer, topology, local, peers
        self.local_ledger = ByteLedger()
        self.owner: dict[str, int] = {}
        self.load = [0] * topology.ranks_per_node

    def reduce(self, grads: list[torch.Tensor], keys: list[str], step: int) -> None:
        """Replace every tensor in ``grads`` by its average over all ranks (in place); the
        same call on every rank, with the same keys and shapes (as the reducer needs)."""
        per_node = self.topology.ranks_per_node
        flat = torch.cat([g.detach().reshape(-1) for g in grads])
        flat /= per_node
        self.local.all_reduce_sum(flat).wait()
        scatter(flat, grads)
        new = [i for i, k in enumerate(keys) if k not in self.owner]
        for i, r in zip(new, deal([grads[i].numel() for i in new], self.load)):
            self.owner[keys[i]] = r
        own = [self.owner[k] for k in keys]
        mine = [i for i, o in enumerate(own) if o == self.topology.local_rank]
        if mine:
            self.reducer.reduce([grads[i] for i in mine], [keys[i] for i in mine], self.peers,
                                step)
        share_from_owners(self.local, grads, own, self.topology.local_rank)
        for k, g in zip(keys, grads):
            self.local_ledger.record(step, k, 2 * g.numel() * flat.element_size(), "allreduce")

    def state_dict(self) -> dict:
        return {"owner": dict(self.owner), "load": list(self.load),
                "local_ledger": self.local_ledger.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        if len(state["load"]) != self.topology.ranks_per_node:
            raise ValueError(f"saved deal is over {len(state['load'])} local ranks, this run "
                             f"has {self.topology.ranks_per_node}")
        self.owner, self.load = dict(state["owner"]), list(state["load"])
        self.local_ledger.load_state_dict(state["local_ledger"])


def scatter(flat: torch.Tensor, tensors: list[torch.Tensor]) -> None:
    """Copy consecutive slices of ``flat`` into ``tensors`` (in place, cast to their dtype)."""
    offset = 0
    for t in tensors:
        n = t.numel()
        t.copy_(flat[offset : offset + n].view_as(t))
        offset += n


@torch.no_grad()
def share_from_owners(local: Comm, tensors: list[torch.Tensor], owners: list[int],
                      me: int) -> torch.Tensor:
    """Every tensor set to its owner's value across the node: one dense fp32 all-reduce of
    the owned tensors, zeros elsewhere (exact: each element has one non-zero term). Returns
    the flat buffer that travelled (for the ledger)."""
    flat = torch.cat([t.detach().reshape(-1).float() if o == me else
                      torch.zeros(t.numel(), device=t.device) for t, o in zip(tensors, owners)])
    local.all_reduce_sum(flat).wait()
    scatter(flat, tensors)
    return flat


def node_groups(topology: Topology, backend: str | None = None) -> tuple:
    """(this rank's node group, its peer group, every group made): one new group per node and
    one per local rank. Every rank creates every group, in the same order, as ``new_group``
    requires (a collective over the default group); the caller destroys them when done."""
    backend = backend or dist.get_backend()
    nodes = [dist.new_group(topology.node_ranks(n), backend=backend)
             for n in range(topology.nodes)]
    peers = [dist.new_group(topology.peer_ranks(r), backend=backend)
             for r in range(topology.ranks_per_node)]
    return nodes[topology.node], peers[topology.local_rank], nodes + peers


def build(reducer: CompressedReducer, topology: Topology, timeout_s: float,
          backend: str | None = None) -> tuple[HierarchicalReducer, list]:
    """The :class:`HierarchicalReducer` of this rank over new process groups
    (:func:`node_groups`). Returns it and the groups, which the caller destroys when done."""
    node, peer, groups = node_groups(topology, backend)
    hier = HierarchicalReducer(reducer, topology, TorchComm(node, timeout_s),
                               TorchComm(peer, timeout_s))
    return hier, groups
