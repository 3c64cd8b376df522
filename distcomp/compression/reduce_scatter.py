"""Compressed reduce-scatter: a fully sharded model's gradient reduction with compressed chunks.

With every rank a shard (one-level FSDP2 over the whole world), the gradient reduction is a
reduce-scatter: each rank holds a flat buffer of S equal chunks of n elements, chunk d meant
for rank d, and rank d needs the sum over ranks of chunk d. No replica average is left to
compress afterwards, so the reduce-scatter itself must carry fewer bytes. Partial sums of
compressed chunks cannot be added in flight, so chunks travel through an all-to-all: each
rank encodes the chunks it sends with a :class:`GatherCompressor` (QSGD, fp8, EF-SignSGD,
top-k: any method whose payloads are byte strings), and the receiver decodes its S - 1 chunks
and adds them, in fp32, to its own chunk, which never leaves the rank and stays exact.

Where the topology is known (nodes x ranks per node, L > 1), two hops, so only the slow link
carries compressed bytes (the shape of ZeRO++'s hierarchical qgZ, with the first hop exact):

  1. inside the node, an exact reduce-scatter over the L ranks of the chunks grouped by their
     destination's local rank: rank (node a, local j) receives the node's sum of the N chunks
     meant for (b, j), b = 0..N-1, (N n) elements;
  2. across nodes, among the N peers with local rank j, the compressed all-to-all of those
     node sums: node a's sum for (b, j) goes to peer b, encoded.

Error feedback keeps what encoding lost of every chunk this rank sends, and adds it to the
next step's chunk: N n elements per sharded module on each rank (one hop: N = S; its own
row stays zero), the module's gradient / L. ``residual="float8"`` keeps it as float8 e4m3 with one
fp32 scale per 256 elements, a quarter of the memory; the rounding of the residual itself is
not fed back. Units: n in elements; bytes as sent by this rank, per link.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Literal

import torch

from distcomp.comm import TorchComm
from distcomp.compression.compressor import (
    GatherCompressor,
    method_class,
    method_names,
)
from distcomp.compression.config import CompressionConfig
from distcomp.compression.methods.fp8 import FP8
from distcomp.compression.reducer import step_generator
from distcomp.ledger import ByteLedger

Residual = Literal["fp32", "float8", "none"]
RESIDUALS: tuple[str, ...] = ("fp32", "float8", "none")
FP8_RESIDUAL_BLOCK = 256


class CompressedReduceScatter:
    """One process's state for compressed reduce-scatters of named flat buffers.

    Args:
      compressor: the method encoding every chunk that leaves this rank.
      setting: its knob (QSGD bits, fp8 block, ...), one for every chunk.
      peers: the all-to-all group, ordered by node (one-hop: the whole world).
      node: the exact first hop's group (this rank's node), or None for one hop.
      warmup_steps: steps reduced exactly before compressing (dense, through the same hops).
      residual: error feedback's memory, ``"fp32"``, ``"float8"`` (a quarter of it), or
        ``"none"`` (no error feedback).
      seed: the random numbers of stochastic methods (QSGD) come from (seed, rank, step, key).

    Fields: residuals (key -> fp32 (N, n), or fp8 payload bytes), ledger (the slow link: what
    the all-to-all sends, against a dense fp32 reduce-scatter's bytes), fast_ledger (the first
    hop).
    """

    def __init__(self, compressor: GatherCompressor, setting: float, peers: TorchComm,
                 node: TorchComm | None = None, *, warmup_steps: int = 0,
                 residual: Residual = "fp32", seed: int = 0):
        if not isinstance(compressor, GatherCompressor):
            raise TypeError(f"{compressor.name} cannot travel through an all-to-all: its "
                            "payloads are not byte strings (use a GatherCompressor)")
        if residual not in RESIDUALS:
            raise ValueError(f"residual must be one of {', '.join(RESIDUALS)}, got {residual!r}")
        self.compressor, self.setting = compressor, compressor.validate_setting(setting)
        self.peers, self.node = peers, node
        self.warmup_steps, self.residual, self.seed = warmup_steps, residual, seed
        self._fp8 = FP8(fp8_block=FP8_RESIDUAL_BLOCK) if residual == "float8" else None
        self.residuals: dict[str, torch.Tensor] = {}
        self.ledger, self.fast_ledger = ByteLedger(), ByteLedger()

    @property
    def world(self) -> int:
        return self.peers.world_size * (1 if self.node is None else self.node.world_size)

    def reduce_scatter(self, output: torch.Tensor, flat: torch.Tensor, key: str,
                       step: int) -> None:
        """``output`` (n,) = the sum over all ranks of their chunk for this rank, from ``flat``
        (world x n,): chunk d (elements [d n, (d + 1) n)) is meant for rank d. Any float
        dtype; sums in fp32."""
        n = output.numel()
        if flat.numel() != self.world * n:
            raise ValueError(f"{key}: reduce-scatter input of {flat.numel()} elements is not "
                             f"{self.world} chunks of the output's {n}")
        peers = self.peers.world_size
        part = self._first_hop(flat, n, key, step).view(peers, n)
        dense = 4 * n * (peers - 1)
        self.ledger.record_dense(step, key, dense)
        if step < self.warmup_steps:
            out = self.peers.reduce_scatter_sum(part.reshape(-1)).wait()
            self.ledger.record(step, key, dense, "reduce_scatter")
            output.copy_(out)
            return
        output.copy_(self._exchange(part, n, key, step))

    def _first_hop(self, flat: torch.Tensor, n: int, key: str, step: int) -> torch.Tensor:
        """(peers x n,) fp32: this node's sums of the chunks meant for the ranks with this
        rank's local rank (one hop: the input itself)."""
        if self.node is None:
            return flat.float()
        local = self.node.world_size
        grouped = flat.view(self.peers.world_size, local, n).transpose(0, 1).reshape(-1)
        nbytes = flat.element_size() * n * self.peers.world_size * (local - 1)
        self.fast_ledger.record_dense(step, key, nbytes)
        self.fast_ledger.record(step, key, nbytes, "reduce_scatter")
        return self.node.reduce_scatter_sum(grouped).wait().float()

    def _exchange(self, part: torch.Tensor, n: int, key: str, step: int) -> torch.Tensor:
        """The compressed all-to-all among peers: (n,) fp32 sum of this rank's exact row and
        the peers' decoded rows for it."""
        me, peers, c = self.peers.rank, self.peers.world_size, self.compressor
        send = part.clone()
        if self.residual != "none":
            send += self._residual(key, part)
        nb = c.wire_bytes(torch.Size([n]), self.setting)
        payloads = torch.zeros(peers, nb, dtype=torch.uint8, device=part.device)
        for b in range(peers):
            if b != me:
                gen = step_generator(self.seed, self.peers.rank, step, f"{key}/{b}", part.device)
                payloads[b] = c.encode(send[b], self.setting, gen)
        received = self.peers.all_to_all(payloads).wait()
        self.ledger.record(step, key, nb * (peers - 1), "all_to_all")
        total = part[me].clone()
        for b in range(peers):
            if b != me:
                total += c.decode(received[b], n, self.setting)
        if self.residual != "none":
            lost = send
            for b in range(peers):
                lost[b] = 0 if b == me else send[b] - c.decode(payloads[b], n, self.setting)
            self._keep(key, lost)
        return total

    def _residual(self, key: str, like: torch.Tensor) -> torch.Tensor:
        kept = self.residuals.get(key)
        if kept is None:
            return torch.zeros_like(like)
        if self._fp8 is not None:
            return self._fp8.decode(kept, like.numel(), FP8_RESIDUAL_BLOCK).view_as(like)
        return kept

    def _keep(self, key: str, lost: torch.Tensor) -> None:
        self.residuals[key] = lost if self._fp8 is None else \
            self._fp8.encode(lost.reshape(-1), FP8_RESIDUAL_BLOCK)

    def state_bytes(self) -> int:
        """Bytes of error-feedback memory this rank keeps between steps."""
        return sum(t.numel() * t.element_size() for t in self.residuals.values())

    def state_dict(self) -> dict:
        return {"residual": self.residual, "setting": self.setting,
                "residuals": {k: v.clone() for k, v in self.residuals.items()},
                "ledger": self.ledger.state_dict(), "fast_ledger": self.fast_ledger.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        for name in ("residual", "setting"):
            if state[name] != getattr(self, name):
                raise ValueError(f"checkpoint was made with {name}={state[name]!r}, this run "
                                 f"has {getattr(self, name)!r}")
        self.residuals = {k: v.clone() for k, v in state["residuals"].items()}
        self.ledger.load_state_dict(state["ledger"])
        self.fast_ledger.load_state_dict(state["fast_ledger"])


def reduce_scatter_config(config: CompressionConfig, lgreco: object,
                          accordion: bool | None) -> CompressionConfig:
    """``config`` as a compressed reduce-scatter runs it: one setting for every chunk, so no
    L-GreCo plan (``lgreco`` given), no Accordion schedule (``accordion``: the user's explicit
    choice; it would keep a sum of the module's whole gradient on every rank) and no momentum
    correction (two buffers of that size). ValueError where the user asked for any of them,
    or for a method whose payloads cannot travel chunk by chunk; validates only, no
    collective."""
    comp = config.compressor()
    gather = [n for n in method_names() if issubclass(method_class(n), GatherCompressor)]
    if not isinstance(comp, GatherCompressor):
        raise ValueError(f"{config.method} cannot compress a reduce-scatter (its payloads "
                         f"are summed in place, not sent chunk by chunk); over the whole world "
                         f"use one of {', '.join(gather)}, or shard each node's ranks "
                         "(mesh['shard']) to compress the cross-node average with it")
    why = ["L-GreCo plans" if lgreco is not None else "",
           "the Accordion schedule" if accordion else "",
           f"momentum correction (momentum={comp.momentum})" if comp.momentum else ""]
    why = [w for w in why if w]
    if why:
        raise ValueError(f"a reduce-scatter over the whole world is compressed with one setting "
                         f"per chunk; {' and '.join(why)} {'needs' if len(why) == 1 else 'need'} "
                         f"the layer's whole gradient on "
                         "every rank: turn them off (momentum=0), or shard each node's ranks "
                         "(mesh['shard'])")
    return replace(config, accordion=False)
