"""The layer contract the GNN wrappers rely on, a deep residual GCN, and a PyG adapter.

A model is a list of modules applied in order. Two kinds:

- a *graph layer* (:class:`GraphLayer`, or a torch_geometric conv through :class:`PyGLayer`)
  maps ``(x_src (n_src, d), adj (n_dst, n_src) sparse CSR, x_dst (n_dst, d)) -> (n_dst, d')``:
  it aggregates over the rows of ``adj`` (normalised weights, see ``Graph.adjacency``), and
  ``x_dst`` is the targets' own input (for residuals);
  A layer with ``uses_x0 = True`` also takes ``x0_dst`` (n_dst, d0): the targets' rows of the
  first graph layer's input (GCNII's initial residual); the wrappers carry it along;
- any other module is *row-wise* (an encoder, a classifier head, an activation): ``(n, d) ->
  (n, d')`` on the rows alone, needing no neighbours.

The wrappers decide which rows each call sees (a chunk, a partition plus its halo, or the
whole graph), so the same module list trains single-process, graph-parallel or pipelined.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import nn
from torch.nn import functional as F


class GraphLayer(nn.Module):
    """Base class marking a module as a graph layer (see the module docstring)."""

    uses_x0 = False

    def forward(self, x_src: torch.Tensor, adj: torch.Tensor, x_dst: torch.Tensor
                ) -> torch.Tensor:
        raise NotImplementedError


class ResGCNLayer(GraphLayer):
    """h' = h + dropout(relu(LayerNorm((Â h) W + b))): a GCN convolution inside a residual
    branch. Deep plain GCNs (16+ layers) over-smooth and stop training; the identity path keeps
    every vertex's own signal and a clean gradient path through depth, and LayerNorm keeps the
    branch's scale fixed so stale (historical) neighbour inputs cannot blow it up.
    Aggregating first costs nnz·d + n_dst·d² instead of n_src·d²."""

    def __init__(self, dim: int, dropout: float = 0.0):
        super().__init__()
        self.lin = nn.Linear(dim, dim)
        self.norm = nn.LayerNorm(dim)
        self.dropout = dropout

    def forward(self, x_src, adj, x_dst):
        h = F.relu(self.norm(self.lin(torch.sparse.mm(adj, x_src))))
        return x_dst + F.dropout(h, self.dropout, self.training)


class PyGLayer(GraphLayer):
    """A torch_geometric convolution as a graph layer. The conv is called on the bipartite
    (sources, targets) edge set read from ``adj``'s sparsity pattern, with ``adj``'s values as
    edge weights where the conv takes them (GCNConv, GraphConv) and with its own normalisation
    switched off (the weights already are the full-graph normalisation; a conv normalising
    inside a chunk would see truncated degrees). Convs without edge weights aggregate over the
    pattern, which includes every vertex's self loop. Convs that take (x_src, x_dst) pairs
    (SAGEConv, GATConv, GraphConv) get them; square-only convs (GCNConv) get sources padded with
    targets.
    """

    def __init__(self, conv: nn.Module):
        super().__init__()
        self.conv = conv
        if hasattr(conv, "normalize"):
            conv.normalize = False
        names = conv.forward.__code__.co_varnames
        self._weighted = "edge_weight" in names
        self.uses_x0 = "x_0" in names  # GCN2Conv: forward(x, x_0, edge_index, edge_weight)

    def forward(self, x_src, adj, x_dst, x0_dst=None):
        adj = adj.to_sparse_coo().coalesce()
        dst, src = adj.indices()
        n_dst, n_src = adj.shape
        kwargs = {"edge_weight": adj.values()} if self._weighted else {}
        if self.uses_x0:  # square-only; x_0 matters on the targets alone
            x0 = torch.cat([x0_dst.new_zeros((n_src, x0_dst.shape[1])), x0_dst])
            edges = torch.stack([src, dst + n_src])
            return self.conv(torch.cat([x_src, x_dst]), x0, edges, **kwargs)[n_src:]
        try:
            return self.conv((x_src, x_dst), torch.stack([src, dst]), size=(n_src, n_dst),
                             **kwargs)
        except (TypeError, ValueError, AssertionError, RuntimeError):
            # square-only conv: targets appended after the sources, edges point at them
            x = torch.cat([x_src, x_dst])
            out = self.conv(x, torch.stack([src, dst + n_src]), **kwargs)
            return out[n_src:]


def is_graph_layer(module: nn.Module) -> bool:
    return isinstance(module, GraphLayer)


def apply(module: nn.Module, x_src: torch.Tensor, adj: torch.Tensor, x_dst: torch.Tensor,
          x0_dst: torch.Tensor | None) -> torch.Tensor:
    """Call a graph layer, with the initial embedding where it takes one."""
    if module.uses_x0:
        return module(x_src, adj, x_dst, x0_dst)
    return module(x_src, adj, x_dst)


def uses_x0(modules: Sequence[nn.Module]) -> bool:
    return any(is_graph_layer(m) and m.uses_x0 for m in modules)


def wrap(module: nn.Module) -> nn.Module:
    """Graph layers pass through; torch_geometric MessagePassing convs get :class:`PyGLayer`;
    every other module is row-wise."""
    if isinstance(module, GraphLayer) or not type(module).__module__.startswith(
            "torch_geometric"):
        return module
    try:
        from torch_geometric.nn import MessagePassing
    except ImportError:
        return module
    return PyGLayer(module) if isinstance(module, MessagePassing) else module


def deep_gcn(in_dim: int, hidden: int, classes: int, layers: int, dropout: float = 0.0
             ) -> list[nn.Module]:
    """[encoder Linear+ReLU, ``layers`` x ResGCNLayer, head Linear]: ``layers`` + 2 modules."""
    if layers < 1:
        raise ValueError(f"layers must be >= 1, got {layers}")
    return [nn.Sequential(nn.Linear(in_dim, hidden), nn.ReLU()),
            *[ResGCNLayer(hidden, dropout) for _ in range(layers)],
            nn.Linear(hidden, classes)]


def run_layers(modules: Sequence[nn.Module], h: torch.Tensor, adj: torch.Tensor,
               x0: torch.Tensor | None = None,
               gather: Callable[[torch.Tensor, int], torch.Tensor] | None = None
               ) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Rows ``h`` through ``modules``: row-wise modules on ``h`` alone; graph layer ``i`` reads
    its sources from ``gather(h, i)`` (default ``h``: every source is a row of ``h``) through
    ``adj``. ``x0`` is the first graph layer's input (taken from ``h`` there unless given).
    Returns (output rows, x0)."""
    for i, m in enumerate(modules):
        if is_graph_layer(m):
            x0 = h if x0 is None else x0
            h = apply(m, h if gather is None else gather(h, i), adj, h, x0)
        else:
            h = m(h)
    return h, x0


def forward_full(modules: Sequence[nn.Module], x: torch.Tensor, adj: torch.Tensor
                 ) -> torch.Tensor:
    """Reference: the whole graph through every module in one process. (n, F) -> (n, C)."""
    return run_layers(modules, x, adj)[0]
