"""Which ranks share a node: the cluster shape that topology-aware reduction exploits.

Real clusters put 4-8 ranks on a node, joined by a fast local link (NVLink, shared memory),
and join nodes by a link 10-100x slower. Only the slow link needs compression, so the reducer
must know which ranks share a node. Launchers say so in the environment:

  torchrun: ``LOCAL_WORLD_SIZE`` (ranks per node) and ``LOCAL_RANK``;
  SLURM (srun): ``SLURM_NTASKS_PER_NODE`` or ``SLURM_TASKS_PER_NODE`` ("4(x2)") and
      ``SLURM_LOCALID``;
  Open MPI (mpirun): ``OMPI_COMM_WORLD_LOCAL_SIZE`` and ``OMPI_COMM_WORLD_LOCAL_RANK``;

and an explicit ``ranks_per_node=`` overrides them all. All of these launchers number ranks
node by node (torchrun: rank = node x local size + local rank; srun's and mpirun's default
block placement), so node ``n`` holds ranks ``[n L, (n + 1) L)`` and rank r is local rank
r mod L. That is checked at set-up (:func:`check_topology`) against each rank's own view, and
ranks that disagree get the same error on every rank before any gradient moves.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass

import torch

from distcomp.comm import Comm


@dataclass(frozen=True)
class Topology:
    """A world of ``nodes`` x ``ranks_per_node`` ranks numbered node by node.

    rank, world_size: this process's place in the default group.
    ranks_per_node: ranks on each node (the same on every node).
    """

    rank: int
    world_size: int
    ranks_per_node: int

    def __post_init__(self) -> None:
        for name in ("world_size", "ranks_per_node"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be an integer >= 1, got {value!r}")
        if self.world_size % self.ranks_per_node:
            raise ValueError(f"world size {self.world_size} is not a whole number of nodes of "
                             f"{self.ranks_per_node} ranks (ranks_per_node)")
        if not 0 <= self.rank < self.world_size:
            raise ValueError(f"rank {self.rank} is outside world size {self.world_size}")

    @property
    def nodes(self) -> int:
        return self.world_size // self.ranks_per_node

    @property
    def node(self) -> int:
        return self.rank // self.ranks_per_node

    @property
    def local_rank(self) -> int:
        return self.rank % self.ranks_per_node

    @property
    def layered(self) -> bool:
        """True where a three-stage reduction helps: several nodes of several ranks each."""
        return self.nodes > 1 and self.ranks_per_node > 1

    def node_ranks(self, node: int) -> list[int]:
        """The ranks of ``node`` (the fast-link group)."""
        return list(range(node * self.ranks_per_node, (node + 1) * self.ranks_per_node))

    def peer_ranks(self, local_rank: int) -> list[int]:
        """The ranks with ``local_rank`` on every node (one slow-link group)."""
        return [n * self.ranks_per_node + local_rank for n in range(self.nodes)]


def _slurm_tasks_per_node(value: str) -> int | None:
    """``SLURM_TASKS_PER_NODE`` ("4(x2)", "4", "4(x2),3") -> 4 where every node has the same
    count, else None (an uneven allocation has no single ranks-per-node)."""
    counts = {int(m.group(1)) for m in re.finditer(r"(\d+)(?:\(x\d+\))?", value)}
    return counts.pop() if len(counts) == 1 else None


def declared(env: dict[str, str] | None = None) -> tuple[int | None, int | None, str]:
    """(ranks per node, this rank's local rank, launcher) from the launcher's environment;
    (None, None, "none") where no launcher says."""
    env = os.environ if env is None else env

    def local(name: str) -> int | None:
        return int(env[name]) if name in env else None

    if "LOCAL_WORLD_SIZE" in env:
        return int(env["LOCAL_WORLD_SIZE"]), local("LOCAL_RANK"), "torchrun"
    per = env.get("SLURM_NTASKS_PER_NODE") or env.get("SLURM_TASKS_PER_NODE")
    if per and "SLURM_PROCID" in env:
        return _slurm_tasks_per_node(per), local("SLURM_LOCALID"), "slurm"
    if "OMPI_COMM_WORLD_LOCAL_SIZE" in env:
        return int(env["OMPI_COMM_WORLD_LOCAL_SIZE"]), local("OMPI_COMM_WORLD_LOCAL_RANK"), "mpi"
    return None, None, "none"


def check_topology(comm: Comm, topo: Topology, local_rank: int | None,
                   placement: bool = True) -> None:
    """Raise the same ValueError on every rank unless every rank agrees on ranks per node and
    (with ``placement``) each is the local rank the numbering makes it (``local_rank``: the
    launcher's, or None where it gives none). One all-gather of world x 3 int64."""
    mine = torch.tensor([topo.ranks_per_node, topo.local_rank if local_rank is None
                         else local_rank, topo.rank], dtype=torch.int64, device=comm.device)
    rows = comm.all_gather(mine).wait().cpu().tolist()
    per = sorted({r[0] for r in rows})
    if len(per) > 1:
        raise ValueError("ranks disagree on ranks per node: " + ", ".join(
            f"rank {r}={p}" for p, _, r in rows) + "; launch every node with the same number "
            "of ranks, or pass the same ranks_per_node= everywhere")
    misplaced = [(r, lr) for p, lr, r in rows if lr != r % p]
    if misplaced and placement:
        raise ValueError(
            f"ranks are not numbered node by node ({per[0]} per node): " + ", ".join(
                f"rank {r} is local rank {lr}, not {r % per[0]}" for r, lr in misplaced)
            + "; use the launcher's block placement (torchrun, srun --distribution=block, "
            "mpirun --map-by slot), or ranks_per_node=1 for a flat reduction")


def resolve(rank: int, world_size: int, ranks_per_node: int | None = None,
            env: dict[str, str] | None = None) -> tuple[Topology, int | None]:
    """This rank's :class:`Topology` and the launcher's local rank (None: not given): from
    ``ranks_per_node`` where given, else the launcher's environment, else one rank per node
    (flat). Pure: validates, runs no collective."""
    if ranks_per_node is not None:
        return Topology(rank, world_size, ranks_per_node), None
    per, local_rank, _ = declared(env)
    return Topology(rank, world_size, per or 1), local_rank if per else None


def check_topology_options(hierarchical, ranks_per_node, process_group) -> tuple:
    """Validate the user's topology knobs before any collective; returns them."""
    if hierarchical not in (None, True, False):
        raise ValueError(f"hierarchical must be True, False or None (auto), got {hierarchical!r}")
    if ranks_per_node is not None and (isinstance(ranks_per_node, bool) or
                                       not isinstance(ranks_per_node, int) or ranks_per_node < 1):
        raise ValueError(f"ranks_per_node must be an integer >= 1 or None, got {ranks_per_node!r}")
    if hierarchical and process_group is not None:
        raise ValueError("hierarchical=True builds its own groups over the whole world; it "
                         "cannot run on a process_group of yours")
    return hierarchical, ranks_per_node


def agree(comm: Comm, hierarchical: bool | None, ranks_per_node: int | None
          ) -> Topology | None:
    """This rank's :class:`Topology` where three stages are wanted (``hierarchical`` True, or
    None and the world is several nodes of several ranks), else None; checked on every rank
    (:func:`check_topology`, a collective over ``comm``), so a disagreement is the same
    ValueError everywhere."""
    import torch.distributed as dist

    topo, local_rank = resolve(dist.get_rank(), dist.get_world_size(), ranks_per_node)
    want = topo.layered if hierarchical is None else hierarchical
    check_topology(comm, topo, local_rank, placement=want)
    if want and not topo.layered:
        raise ValueError(f"hierarchical=True needs several nodes of several ranks; this "
                         f"world is {topo.nodes} node(s) x {topo.ranks_per_node} rank(s)")
    return topo if want else None
