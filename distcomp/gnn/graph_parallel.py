"""Graph parallelism, the baseline GNNPipe is measured against (and, on one rank, plain
single-process full-graph training).

Every rank holds all layers and one partition of the vertices (METIS when available, see
``distcomp.gnn.graph.partition``). At every graph layer it fetches its halo's embeddings from their
owners and, in the backward pass, returns the halo's gradients: full-graph training, exact,
with (2L - 1) halo transfers per epoch for L graph layers (the first layer's backward sends
nothing back to raw features). Parameter gradients are summed over ranks before the step, so
every rank keeps identical parameters. Bytes: ``ledger`` (per epoch, key "halo_forward",
"halo_backward", "grad_allreduce", "control"; evaluation under keys starting with "eval").
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.distributed as dist
from torch import nn
from torch.nn import functional as F

from distcomp.comm import wait_work
from distcomp.gnn.graph import Graph, partition
from distcomp.gnn.halo import HaloPlan, PeerLink, exchange
from distcomp.gnn.layers import run_layers, wrap
from distcomp.ledger import CONTROL_KEY, ByteLedger


def world() -> tuple[int, int]:
    """(rank, world size); (0, 1) without an initialised process group."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def all_reduce(t: torch.Tensor, ledger: ByteLedger, step: int, key: str, timeout_s: float,
               group=None) -> torch.Tensor:
    """Sum ``t`` in place over ``group`` (no-op on one rank), bytes on the ledger."""
    if world()[1] == 1 or (group is not None and dist.get_world_size(group) == 1):
        return t
    ledger.record(step, key, t.numel() * t.element_size(), "all_reduce")
    wait_work(dist.all_reduce(t, group=group, async_op=True), f"all_reduce of {key}", timeout_s)
    return t


def default_device() -> torch.device:
    """The current CUDA device under an NCCL process group, else the CPU."""
    if dist.is_available() and dist.is_initialized() and dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def reduce_grads(params: Sequence[nn.Parameter], ledger: ByteLedger, step: int,
                 timeout_s: float, group=None) -> None:
    """Sum every parameter's gradient over ``group`` in one flat buffer."""
    params = [p for p in params if p.requires_grad]
    for p in params:
        if p.grad is None:
            p.grad = torch.zeros_like(p)
    flat = torch.cat([p.grad.reshape(-1) for p in params])
    all_reduce(flat, ledger, step, "grad_allreduce", timeout_s, group)
    offset = 0
    for p in params:
        p.grad.copy_(flat[offset:offset + p.numel()].view_as(p))
        offset += p.numel()


class GraphParallel:
    """Full-graph training with the vertices partitioned over the ranks of the default group.

    modules: the model as a module list (see :mod:`distcomp.gnn.layers`), identical on every
    rank; graph: the whole graph, identical on every rank (kept on the CPU; this rank's rows,
    the modules and all buffers go to ``device``, default :func:`default_device`). Use
    ``parameters()`` for the optimizer; ``train_epoch(opt)`` runs one full-graph step and
    returns the mean training loss (the same on every rank); ``evaluate()`` returns accuracies
    on the train/val/test masks.
    """

    def __init__(self, modules: Sequence[nn.Module], graph: Graph, *, method: str = "auto",
                 timeout_s: float = 300.0, ledger: ByteLedger | None = None,
                 device: torch.device | str | None = None):
        self.rank, self.world_size = world()
        self.device = torch.device(device) if device is not None else default_device()
        self.modules = nn.ModuleList(wrap(m) for m in modules).to(self.device)
        self.ledger = ledger or ByteLedger()
        self.timeout_s = timeout_s
        self.link = PeerLink(self.ledger, timeout_s, self.device)
        assign = partition(graph, self.world_size, method=method)
        plan = HaloPlan.build(graph.edge_index, assign, self.rank)
        self.adj = graph.adjacency(plan.own, columns=plan.local_of).to(self.device)
        own = plan.own
        self.plan = plan.to(self.device)
        self.x = graph.x[own].to(self.device)
        self.y = graph.y[own].to(self.device)
        self.masks = {k: getattr(graph, f"{k}_mask")[own].to(self.device)
                      for k in ("train", "val", "test")}
        self.n_train = int(graph.train_mask.sum())
        self.epoch = 0

    def parameters(self):
        return self.modules.parameters()

    def _forward(self, key: str = "halo") -> torch.Tensor:
        gather = None if self.world_size == 1 else lambda h, i: exchange(
            h, self.plan, self.link, range(self.world_size), tag=2 * i, key=key)
        return run_layers(self.modules, self.x, self.adj, gather=gather)[0]

    def train_epoch(self, optimizer: torch.optim.Optimizer) -> float:
        self.modules.train()
        self.link.step = self.epoch
        optimizer.zero_grad(set_to_none=True)
        logits = self._forward()
        mask = self.masks["train"]
        loss = F.cross_entropy(logits[mask], self.y[mask], reduction="sum") / self.n_train
        loss.backward()
        reduce_grads(list(self.parameters()), self.ledger, self.epoch, self.timeout_s)
        optimizer.step()
        total = all_reduce(loss.detach().reshape(1).clone(), self.ledger, self.epoch,
                           CONTROL_KEY, self.timeout_s)
        self.epoch += 1
        return float(total)

    @torch.no_grad()
    def evaluate(self) -> dict[str, float]:
        self.modules.eval()
        self.link.step = self.epoch
        pred = self._forward(key="eval").argmax(1)
        counts = torch.tensor([[float((pred[m] == self.y[m]).sum()), float(m.sum())]
                               for m in self.masks.values()], device=self.device)
        all_reduce(counts, self.ledger, self.epoch, "eval", self.timeout_s)
        return {k: float(c[0] / c[1].clamp(min=1)) for k, c in zip(self.masks, counts)}
