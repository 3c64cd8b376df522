"""GNNPipe: layer-level pipeline parallelism for deep GNNs on the whole graph, and its hybrid
with graph parallelism (after Chen, Chen & Qian, 2023).

Layout. ``stages`` x ``partitions`` ranks; rank r is stage ``r % stages`` of the pipeline for
partition ``r // stages``. A stage holds a contiguous, balanced range of the model's modules
(graph layers split evenly; row-wise modules go with the next graph layer, trailing ones with
the last) and the whole graph structure. With one partition (``pipeline``) a pipeline owns
every vertex; with several (``hybrid``) each owns one METIS partition.

Chunks. A pipeline's vertices are split into ``num_chunks`` dependent chunks (METIS on the
induced subgraph where pymetis imports, else reverse Cuthill-McKee ranges). Schedule: GPipe,
one optimizer step per epoch: every stage runs the forward of chunks 0..C-1 in order (sending
each chunk's output rows on as soon as they are ready, so stage s works on chunk c while stage
s+1 works on chunk c-1), then the backward of chunks C-1..0; gradients accumulate over chunks.

Historical embeddings. Layer l for chunk c needs its neighbours' layer-l inputs. Every stage
keeps, per graph layer, an (n, d) table of the latest input rows it computed: when chunk c
runs, chunks 0..c-1 are already fresh from this epoch, chunks c+1.. still hold the previous
epoch's rows (zeros in epoch 0), and in the hybrid other partitions' halo rows are refreshed
once per epoch by an exchange inside the stage (so they are one epoch old). Neighbour rows from
the table are constants: gradients flow only within a chunk, which is what lets the chunks'
backward passes run independently. With one chunk and one partition nothing is stale and the
pipeline computes exactly full-graph training.

Convergence. Staleness hurts a plain deep GCN most, so the default model
(``distcomp.gnn.layers.deep_gcn``) uses residual GCN layers with LayerNorm: the identity path
carries each vertex's own fresh embedding, and the normalised branch bounds how far a stale
neighbour row can move an output. GCNII's initial residual (PyG's GCN2Conv) works too: the
first graph layer's input rows then travel with the activations, which doubles the bytes per
stage boundary, so it is not the default. ``history_momentum`` optionally
smooths the table (row = m * old + (1 - m) * new) for models that oscillate; default 0.

Evaluation is exact: one chunk per pipeline and, in the hybrid, a per-layer halo exchange
inside each stage (no staleness), so ``evaluate()`` equals single-process inference.

Bytes (ledger keys, per epoch): "activations" and "gradients" between stages (2 (S-1) N d
floats for N vertices, d the boundary width), "halo_refresh" and "grad_allreduce" in the
hybrid, "control" (the loss), "eval".
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence

import torch
import torch.distributed as dist
from torch import nn
from torch.nn import functional as F

from distcomp.gnn.graph import Graph, partition
from distcomp.gnn.graph_parallel import all_reduce, default_device, reduce_grads, world
from distcomp.gnn.halo import HaloPlan, PeerLink, exchange
from distcomp.gnn.layers import apply, is_graph_layer, run_layers, uses_x0, wrap
from distcomp.ledger import CONTROL_KEY, ByteLedger

EVAL_TAG, HALO_TAG = 1 << 20, 1 << 21  # above any chunk tag (chunks use 0 .. 2C-1)


def stage_ranges(modules: Sequence[nn.Module], stages: int) -> list[range]:
    """Contiguous module ranges, one per stage, with the graph layers split as evenly as
    possible (earlier stages take the remainder)."""
    graph_at = [i for i, m in enumerate(modules) if is_graph_layer(m)]
    if stages < 1:
        raise ValueError(f"stages must be >= 1, got {stages}")
    if stages > len(graph_at):
        raise ValueError(f"more stages ({stages}) than graph layers ({len(graph_at)}): "
                         "every stage needs at least one graph layer")
    base, extra = divmod(len(graph_at), stages)
    bounds, used = [0], 0
    for s in range(stages - 1):
        used += base + (s < extra)
        bounds.append(graph_at[used])  # a stage starts at its first graph layer's row-wise
        while bounds[-1] > bounds[-2] + 1 and not is_graph_layer(modules[bounds[-1] - 1]):
            bounds[-1] -= 1  # ... modules (encoders, activations) just before it
    bounds.append(len(modules))
    return [range(a, b) for a, b in zip(bounds, bounds[1:])]


def widths(modules: Sequence[nn.Module], in_dim: int) -> list[int]:
    """Input width of every module and the output width at the end (len(modules) + 1), from a
    dry run on two isolated vertices in eval mode, RNG state untouched."""
    out = [in_dim]
    h, x0 = torch.zeros(2, in_dim), None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # "sparse CSR support is in beta"
        eye = torch.eye(2).to_sparse_csr()
    with torch.no_grad(), torch.random.fork_rng():
        for m in modules:
            was = m.training
            m.eval()
            h, x0 = run_layers([m], h, eye, x0)
            m.train(was)
            out.append(h.shape[1])
    return out


class GNNPipe:
    """Pipelined (``partitions=1``) or hybrid training of a GNN given as a module list.

    modules: the whole model, built identically on every rank (each rank keeps its stage's
    part); graph: the whole graph on every rank (kept on the CPU; the modules, this rank's
    rows, tables and buffers go to ``device``, default the current CUDA device under NCCL,
    else the CPU). stages: default world size // partitions.
    Use ``parameters()`` (this stage's) for the optimizer, then ``train_epoch(opt)`` (returns
    the mean training loss, same on every rank) and ``evaluate()`` (accuracies).
    """

    def __init__(self, modules: Sequence[nn.Module], graph: Graph, *, num_chunks: int = 4,
                 partitions: int = 1, stages: int | None = None, method: str = "auto",
                 history_momentum: float = 0.0, timeout_s: float = 300.0,
                 ledger: ByteLedger | None = None, device: torch.device | str | None = None):
        rank, size = world()
        if partitions < 1 or size % partitions:
            raise ValueError(f"partitions ({partitions}) must divide the world size ({size})")
        stages = stages or size // partitions
        if stages * partitions != size:
            raise ValueError(f"stages x partitions = {stages} x {partitions} must equal the "
                             f"world size {size}")
        if num_chunks < 1:
            raise ValueError(f"num_chunks must be >= 1, got {num_chunks}")
        if not 0 <= history_momentum < 1:
            raise ValueError(f"history_momentum must be in [0, 1), got {history_momentum}")
        modules = [wrap(m) for m in modules]
        ranges = stage_ranges(modules, stages)
        dims = widths(modules, graph.x.shape[1])
        self.stage, self.part = rank % stages, rank // stages
        self.stages, self.partitions = stages, partitions
        mine = ranges[self.stage]
        self.device = dev = torch.device(device) if device is not None else default_device()
        self.modules = nn.ModuleList(modules[i] for i in mine).to(dev)
        # a model with an initial residual (GCN2Conv) carries the first graph layer's input
        # (x0, width x0_dim) along the pipeline next to the activations
        first = next(i for i, m in enumerate(modules) if is_graph_layer(m))
        self.x0_dim = dims[first] if uses_x0(modules) else 0
        self.in_dim = dims[mine.start] + (self.x0_dim if self.stage > 0 else 0)
        self.out_dim = dims[mine.stop] + (self.x0_dim if self.stage < stages - 1 else 0)
        self.momentum, self.timeout_s = history_momentum, timeout_s
        self.ledger = ledger or ByteLedger()
        self.link = PeerLink(self.ledger, timeout_s, dev)
        self.prev_rank = rank - 1 if self.stage > 0 else None
        self.next_rank = rank + 1 if self.stage < stages - 1 else None
        self.stage_ranks = [p * stages + self.stage for p in range(partitions)]
        assign = partition(graph, partitions, method=method)
        plan = HaloPlan.build(graph.edge_index, assign, self.part)
        own = plan.own
        if num_chunks > len(own):
            raise ValueError(f"num_chunks ({num_chunks}) exceeds the {len(own)} vertices of a "
                             "pipeline's partition")
        # -- validated; the first collective follows --------------------------------------
        self.group = _stage_group(stages, partitions, self.stage)
        chunks = _chunks(graph, own, num_chunks, method)
        # per chunk: its neighbours outside it, and the adjacency with columns numbered
        # (chunk rows, then those neighbours): a layer reads n_c + n_out rows, not all n
        self.chunks, self.outside, self.adj = [], [], []
        for rows in chunks:
            out, adj = _chunk_columns(graph, rows)
            self.chunks.append(rows.to(dev))
            self.outside.append(out.to(dev))
            self.adj.append(adj.to(dev))
        self.eval_adj = graph.adjacency(own, columns=plan.local_of).to(dev)
        self.plan = plan.to(dev)
        self.x, self.y = graph.x.to(dev), graph.y.to(dev)
        self.masks = {k: getattr(graph, f"{k}_mask").to(dev) for k in ("train", "val", "test")}
        n = graph.num_nodes
        self.history = {i: torch.zeros(n, dims[j], device=dev) for i, j in enumerate(mine)
                        if is_graph_layer(modules[j])}
        self.written = {i: torch.full((n,), -1, dtype=torch.int64, device=dev)
                        for i in self.history}
        self.reads: dict[tuple[int, int], torch.Tensor] = {}  # (module, chunk) -> epochs
        self.n_train = int(graph.train_mask.sum())
        self.epoch = 0

    @property
    def last(self) -> bool:
        return self.next_rank is None

    def parameters(self):
        return self.modules.parameters()

    # -- training ---------------------------------------------------------------------------
    def _split(self, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Received boundary rows -> (activations, x0 or None)."""
        if self.x0_dim == 0:
            return t, None
        return t[:, :-self.x0_dim], t[:, -self.x0_dim:]

    def _join(self, h: torch.Tensor, x0: torch.Tensor | None) -> torch.Tensor:
        return h if self.x0_dim == 0 else torch.cat([h, x0], 1)

    def _stage_forward(self, c: int, h: torch.Tensor, x0: torch.Tensor | None
                       ) -> tuple[torch.Tensor, torch.Tensor | None]:
        rows = self.chunks[c]
        for i, m in enumerate(self.modules):
            if i not in self.history:
                h = m(h)
                continue
            x0 = h if x0 is None else x0
            table = self.history[i]
            src = torch.cat([h, table[self.outside[c]]])  # own rows fresh (with grad)
            out = apply(m, src, self.adj[c], h, x0)
            new = h.detach()
            if self.momentum and self.epoch > 0:
                new = self.momentum * table[rows] + (1 - self.momentum) * new
            table[rows] = new
            self.written[i][rows] = self.epoch
            self.reads[(i, c)] = self.written[i][torch.cat([rows, self.outside[c]])]
            h = out
        return h, x0

    def train_epoch(self, optimizer: torch.optim.Optimizer) -> float:
        """One epoch: forward all chunks, backward all chunks, one optimizer step."""
        self.modules.train()
        self.link.step = self.epoch
        optimizer.zero_grad(set_to_none=True)
        n_chunks = len(self.chunks)
        saved, loss_sum = [], torch.zeros(1, device=self.device)
        for c, rows in enumerate(self.chunks):
            if self.prev_rank is None:
                inp = self.x[rows]
            else:
                inp = self.link.recv((len(rows), self.in_dim), self.prev_rank, c, "activations")
                inp.requires_grad_()
            h, x0 = (inp, None) if self.prev_rank is None else self._split(inp)
            out, x0 = self._stage_forward(c, h, x0)
            if self.last:
                mask = self.masks["train"][rows]
                out = F.cross_entropy(out[mask], self.y[rows][mask], reduction="sum") \
                    / self.n_train if mask.any() else out.sum() * 0.0
                loss_sum += out.detach()
            else:
                out = self._join(out, x0)
                self.link.send(out, self.next_rank, c, "activations")
            saved.append((inp, out))
        for c in reversed(range(n_chunks)):
            inp, out = saved.pop()
            if self.last:
                out.backward()
            else:
                grad = self.link.recv((len(self.chunks[c]), self.out_dim), self.next_rank,
                                      n_chunks + c, "gradients")
                out.backward(grad)
            if self.prev_rank is not None:
                self.link.send(inp.grad, self.prev_rank, n_chunks + c, "gradients")
        self.link.flush()
        if self.partitions > 1:
            reduce_grads(list(self.parameters()), self.ledger, self.epoch, self.timeout_s,
                         self.group)
            self._refresh_halo()
        optimizer.step()
        total = all_reduce(loss_sum, self.ledger, self.epoch, CONTROL_KEY, self.timeout_s)
        self.epoch += 1
        return float(total)

    def _refresh_halo(self) -> None:
        """Hybrid: send the rows other partitions need from every history table to them."""
        plan = self.plan
        for i, table in self.history.items():
            d = table.shape[1]
            for q, rows in plan.send_rows.items():
                self.link.send(table[plan.own[rows]], self.stage_ranks[q], HALO_TAG,
                               "halo_refresh")
            for q, rows in plan.recv_rows.items():
                got = self.link.recv((len(rows), d), self.stage_ranks[q], HALO_TAG,
                                     "halo_refresh")
                glob = plan.halo[rows - len(plan.own)]
                table[glob] = got
                self.written[i][glob] = self.epoch
            self.link.flush()

    # -- evaluation -------------------------------------------------------------------------
    @torch.no_grad()
    def evaluate(self) -> dict[str, float]:
        """Exact full-graph inference (no stale rows): accuracies on the three masks."""
        self.modules.eval()
        self.link.step = self.epoch
        own = self.plan.own
        if self.prev_rank is None:
            h = self.x[own]
        else:
            h = self.link.recv((len(own), self.in_dim), self.prev_rank, EVAL_TAG, "eval")
        h, x0 = (h, None) if self.prev_rank is None else self._split(h)
        gather = None if self.partitions == 1 else lambda h, i: exchange(
            h, self.plan, self.link, self.stage_ranks, tag=EVAL_TAG + 1, key="eval")
        h, x0 = run_layers(self.modules, h, self.eval_adj, x0, gather)
        counts = torch.zeros(3, 2, device=self.device)
        if self.last:
            pred = h.argmax(1)
            y = self.y[own]
            for k, name in enumerate(("train", "val", "test")):
                mask = self.masks[name][own]
                counts[k, 0] = (pred[mask] == y[mask]).sum()
                counts[k, 1] = mask.sum()
        else:
            self.link.send(self._join(h, x0), self.next_rank, EVAL_TAG, "eval")
        self.link.flush()
        all_reduce(counts, self.ledger, self.epoch, "eval", self.timeout_s)
        return {k: float(c[0] / c[1].clamp(min=1))
                for k, c in zip(("train", "val", "test"), counts)}

    def read_epochs(self, module: int, chunk: int) -> list[int]:
        """Epochs (sorted, distinct) of the rows that ``module`` (index on this stage) read
        for ``chunk`` in the last training epoch; -1 = never written (zeros)."""
        return torch.unique(self.reads[(module, chunk)]).tolist()

    def staleness(self) -> float:
        """Fraction of the rows read by graph layers in the last epoch that were not written
        in that epoch (historical or never written)."""
        stale = sum(int((r < self.epoch - 1).sum()) for r in self.reads.values())
        return stale / max(1, sum(len(r) for r in self.reads.values()))


def _stage_group(stages: int, partitions: int, stage: int):
    """The process group of one stage across partitions (created on every rank, in order)."""
    if partitions == 1:
        return None
    groups = [dist.new_group([p * stages + s for p in range(partitions)])
              for s in range(stages)]
    return groups[stage]


def _chunk_columns(graph: Graph, rows: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(neighbours of ``rows`` outside them (global ids), adjacency (len(rows), len(rows) +
    len(outside)) with columns = rows then outside)."""
    dst, src, _ = graph.normalised_edges()
    inside = torch.zeros(graph.num_nodes, dtype=torch.bool)
    inside[rows] = True
    outside = torch.unique(src[inside[dst] & ~inside[src]])
    columns = torch.full((graph.num_nodes,), -1, dtype=torch.int64)
    columns[rows] = torch.arange(len(rows))
    columns[outside] = torch.arange(len(rows), len(rows) + len(outside))
    return outside, graph.adjacency(rows, columns=columns)


def _chunks(graph: Graph, own: torch.Tensor, num_chunks: int, method: str
            ) -> list[torch.Tensor]:
    """Split ``own`` (global ids) into ``num_chunks`` sorted chunks along the induced
    subgraph's structure."""
    if num_chunks == 1:
        return [own]
    local = torch.full((graph.num_nodes,), -1, dtype=torch.int64)
    local[own] = torch.arange(len(own))
    src, dst = local[graph.edge_index]
    keep = (src >= 0) & (dst >= 0)
    sub = Graph(graph.x[:0].new_zeros((len(own), 0)), torch.zeros(len(own), dtype=torch.int64),
                torch.stack([src[keep], dst[keep]]), *(torch.ones(len(own), dtype=torch.bool),) * 3)
    assign = partition(sub, num_chunks, method=method)
    return [own[assign == c] for c in range(num_chunks)]
