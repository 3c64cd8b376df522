"""CO2 across nodes, as its authors run it: synchronous inside a node, asynchronous between.

Local updating pays off on the slow inter-node link; inside a node the fast link can average
gradients every step for free, and a node whose ranks step together is one larger replica
with a smaller gradient noise. So with several ranks per node
(:mod:`distcomp.compression.topology`):

  every step, before the inner optimizer: the gradients are averaged over the node's ranks
      (one dense all-reduce on the fast link), so the node's ranks take identical steps;
  every ``tau`` steps: the outer round of :class:`distcomp.co2.CO2` runs between nodes only,
      and is sharded: each parameter tensor is owned by one local rank (dealt by size, see
      :func:`distcomp.compression.hierarchical.deal`), which keeps that tensor's outer state
      (anchor, the round's start, outer momentum, the previous average, the rounding residual) and
      averages its pseudo-gradient with the same local rank on the other nodes;
  after a round: each owner's new parameters are shared with its node (a dense all-reduce of
      the owned tensors, zeros elsewhere), so the node's ranks stay identical.

The outer state per rank is then about 1/L of the flat CO2's (L ranks per node), and each
tensor's pseudo-gradient crosses the slow link once per node instead of once per rank.
"""

from __future__ import annotations

import torch
import torch.distributed as dist

from distcomp.comm import TorchComm
from distcomp.compression.hierarchical import deal, node_groups, share_from_owners
from distcomp.compression.topology import Topology
from distcomp.ledger import ByteLedger


class NodeShare:
    """The fast-link half of CO2 across nodes.

    Fields:
      topology: this rank's place.
      local: the node's communicator; peer_group: the slow-link group (this local rank on
        every node), over which CO2 averages the owned tensors.
      owner: per parameter (in the model's order) the local rank that owns its outer state.
      ledger: bytes this rank handed to the node's all-reduces (gradients and shares).
      groups: every process group made (destroyed by :meth:`close`).
    """

    def __init__(self, topology: Topology, numels: list[int], timeout_s: float):
        node, self.peer_group, self.groups = node_groups(topology)
        self.topology = topology
        self.local = TorchComm(node, timeout_s)
        self.owner = deal(numels, [0] * topology.ranks_per_node)
        missing = set(range(topology.ranks_per_node)) - set(self.owner)
        if missing:
            self.close()
            raise ValueError(f"{len(numels)} parameter tensors cannot be shared among "
                             f"{topology.ranks_per_node} ranks per node (local ranks "
                             f"{sorted(missing)} would own none); use hierarchical=False")
        self.ledger = ByteLedger()
        self.steps = 0

    def mine(self, items: list) -> list:
        """The entries of ``items`` (one per parameter) whose outer state this rank owns."""
        return [x for x, o in zip(items, self.owner) if o == self.topology.local_rank]

    def average_grads(self, params: list[torch.Tensor]) -> None:
        """Every gradient replaced by its mean over the node's ranks (a missing one counts as
        zeros, and gets the mean where another rank had one)."""
        flat = torch.cat([(p.grad.detach().reshape(-1).float() if p.grad is not None else
                           torch.zeros(p.numel(), device=p.device)) for p in params])
        flat /= self.topology.ranks_per_node
        self.local.all_reduce_sum(flat).wait()
        self.ledger.record(self.steps, "gradients", flat.numel() * flat.element_size(),
                           "allreduce")
        self.steps += 1
        for p, g in zip(params, torch.split(flat, [p.numel() for p in params])):
            if p.grad is None:
                if bool(g.any()):
                    p.grad = g.view_as(p).to(p.dtype)
            else:
                p.grad.copy_(g.view_as(p))

    def share(self, params: list[torch.Tensor]) -> None:
        """Every parameter set to its owner's value (the owners just applied a round)."""
        flat = share_from_owners(self.local, params, self.owner, self.topology.local_rank)
        self.ledger.record(self.steps, "parameters", flat.numel() * flat.element_size(),
                           "allreduce")

    def close(self) -> None:
        if dist.is_initialized():
            for group in self.groups:
                dist.destroy_process_group(group)
        self.groups = []
