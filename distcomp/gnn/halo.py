"""Point-to-point transfers with a ledger and timeouts, and the halo exchange built on them.

Graph parallelism gives every rank a partition of the vertices; a layer on a partition needs the
embeddings of its *halo* (neighbours owned by other ranks), and the backward pass sends the
halo's gradients back to their owners. Every rank holds the whole graph and the partition
vector, so each one derives who sends which rows to whom without any communication.

Local numbering on a rank: its own vertices first (ascending global id), then its halo
(ascending global id): a layer sees an ((own + halo), d) input and writes (own, d).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.distributed as dist

from distcomp.comm import wait_work
from distcomp.ledger import ByteLedger


class PeerLink:
    """isend / recv between ranks of the default group. Every send is recorded on the ledger
    (bytes of the tensor, under ``key``, at ``step``); every wait is bounded by ``timeout_s``
    and a timeout or lost peer raises :class:`distcomp.comm.CollectiveTimeout`. gloo sends
    only host memory: with CUDA tensors on gloo (ranks sharing a GPU) they go through it."""

    def __init__(self, ledger: ByteLedger, timeout_s: float = 300.0,
                 device: torch.device | str = "cpu"):
        self.ledger = ledger
        self.timeout_s = timeout_s
        self.device = torch.device(device)
        self.step = 0
        self._pending: list[tuple[dist.Work, torch.Tensor, str]] = []
        self._host = self.device.type != "cpu" and dist.is_initialized() and \
            dist.get_backend() == "gloo"

    def send(self, t: torch.Tensor, dst: int, tag: int, key: str) -> None:
        t = t.detach().contiguous()
        if self._host:
            t = t.cpu()
        self.ledger.record(self.step, key, t.numel() * t.element_size(), "send")
        self._pending.append((dist.isend(t, dst, tag=tag), t, f"send of {key} to rank {dst}"))

    def recv(self, shape: Sequence[int], src: int, tag: int, what: str,
             dtype: torch.dtype = torch.float32) -> torch.Tensor:
        out = torch.empty(tuple(shape), dtype=dtype, device="cpu" if self._host else self.device)
        wait_work(dist.irecv(out, src, tag=tag), f"receive of {what} from rank {src}",
                  self.timeout_s)
        return out.to(self.device)

    def flush(self) -> None:
        """Wait for every send started so far (their buffers are kept alive until then)."""
        pending, self._pending = self._pending, []
        for work, _, what in pending:
            wait_work(work, what, self.timeout_s)


@dataclass
class HaloPlan:
    """Who exchanges what, for the partition ``me`` of ``assign`` (n,) part ids.

    own: (n_own,) global ids; halo: (n_halo,) global ids; local_of: (n,) local id of every
    vertex on this rank (-1 where absent). send_rows[q]: local (own) rows partition q needs;
    recv_rows[q]: local (halo) rows partition q owns, in the order q sends them."""

    own: torch.Tensor
    halo: torch.Tensor
    local_of: torch.Tensor
    send_rows: dict[int, torch.Tensor]
    recv_rows: dict[int, torch.Tensor]

    @classmethod
    def build(cls, edge_index: torch.Tensor, assign: torch.Tensor, me: int) -> HaloPlan:
        n = len(assign)
        src, dst = edge_index
        cross = assign[src] != assign[dst]
        # (owner of the source, partition needing it, source) for every cut edge, deduplicated
        need = torch.unique(torch.stack([assign[dst][cross], src[cross]]), dim=1)
        own = torch.nonzero(assign == me).flatten()
        halo = need[1][need[0] == me]  # ascending, unique
        local_of = torch.full((n,), -1, dtype=torch.int64)
        local_of[own] = torch.arange(len(own))
        local_of[halo] = torch.arange(len(own), len(own) + len(halo))
        send_rows, recv_rows = {}, {}
        for q in range(int(assign.max()) + 1):
            if q == me:
                continue
            theirs = need[1][(need[0] == q) & (assign[need[1]] == me)]
            if len(theirs):
                send_rows[q] = local_of[theirs]
            mine = halo[assign[halo] == q]
            if len(mine):
                recv_rows[q] = local_of[mine]
        return cls(own, halo, local_of, send_rows, recv_rows)

    def to(self, device: torch.device | str) -> HaloPlan:
        """The same plan with every index tensor on ``device`` (where the embeddings live)."""
        return HaloPlan(self.own.to(device), self.halo.to(device), self.local_of.to(device),
                        {q: r.to(device) for q, r in self.send_rows.items()},
                        {q: r.to(device) for q, r in self.recv_rows.items()})


def exchange(x_own: torch.Tensor, plan: HaloPlan, link: PeerLink, ranks: Sequence[int],
             tag: int, key: str = "halo") -> torch.Tensor:
    """(n_own, d) -> (n_own + n_halo, d) with the halo rows fetched from their owners; the
    backward sends the halo rows' gradients back and adds what arrives to the own rows.
    ``ranks[q]``: the global rank holding partition q."""
    return _Exchange.apply(x_own, plan, link, tuple(ranks), tag, key)


def _swap(rows_out: dict, rows_in: dict, values: torch.Tensor, link: PeerLink,
          ranks: tuple, tag: int, key: str, d: int) -> dict[int, torch.Tensor]:
    for q, rows in rows_out.items():
        link.send(values[rows], ranks[q], tag, key)
    got = {q: link.recv((len(rows), d), ranks[q], tag, key) for q, rows in rows_in.items()}
    link.flush()
    return got


class _Exchange(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x_own, plan, link, ranks, tag, key):
        d = x_own.shape[1]
        out = x_own.new_zeros((len(plan.own) + len(plan.halo), d))
        out[:len(plan.own)] = x_own
        for q, rows in _swap(plan.send_rows, plan.recv_rows, x_own.detach(), link, ranks, tag,
                             key + "_forward", d).items():
            out[plan.recv_rows[q]] = rows
        ctx.plan, ctx.link, ctx.ranks, ctx.tag, ctx.key = plan, link, ranks, tag, key
        return out

    @staticmethod
    def backward(ctx, grad):
        plan = ctx.plan
        d = grad.shape[1]
        grad_own = grad[:len(plan.own)].clone()
        got = _swap(plan.recv_rows, plan.send_rows, grad, ctx.link, ctx.ranks, ctx.tag + 1,
                    ctx.key + "_backward", d)
        for q, g in got.items():
            grad_own.index_add_(0, plan.send_rows[q], g)
        return grad_own, None, None, None, None, None
