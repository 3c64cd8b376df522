"""Graphs for node classification: the container, GCN normalisation, offline data, partitions.

Everything here is plain torch/numpy so every rank can hold the whole structure cheaply (the
pipeline needs it: a stage computes its layers for every vertex). Sizes: n vertices, E directed
edges (an undirected edge is stored both ways), F input features.
"""

from __future__ import annotations

import pickle
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch


@dataclass
class Graph:
    """x: (n, F) float32; y: (n,) int64 labels in [0, C); edge_index: (2, E) int64 rows
    (source, target); train/val/test masks: (n,) bool. Build with :func:`make_graph`, which
    validates and cleans the edges."""

    x: torch.Tensor
    y: torch.Tensor
    edge_index: torch.Tensor
    train_mask: torch.Tensor
    val_mask: torch.Tensor
    test_mask: torch.Tensor
    _norm: tuple | None = field(default=None, repr=False, compare=False)

    @property
    def num_nodes(self) -> int:
        return len(self.y)

    @property
    def num_classes(self) -> int:
        return int(self.y.max()) + 1

    def normalised_edges(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(dst, src, weight) of D^-1/2 (A + I) D^-1/2, self loops included, sorted by dst:
        the GCN normalisation over the *whole* graph. Self loops make isolated vertices keep
        their own embedding instead of a zero row. Cached: (2 E + n) entries."""
        if getattr(self, "_norm", None) is None:
            n = self.num_nodes
            loops = torch.arange(n)
            dst = torch.cat([self.edge_index[1], loops])
            src = torch.cat([self.edge_index[0], loops])
            deg = torch.bincount(dst, minlength=n).float()
            order = torch.argsort(dst * n + src)
            dst, src = dst[order], src[order]
            self._norm = (dst, src, deg[dst].rsqrt() * deg[src].rsqrt())
        return self._norm

    def adjacency(self, rows: torch.Tensor | None = None, columns: torch.Tensor | None = None
                  ) -> torch.Tensor:
        """Sparse CSR float32 (len(rows), n): the normalised adjacency's ``rows`` (targets;
        default all, in order), so ``adj @ h`` aggregates each target's neighbours and itself.
        ``columns``: local ids for the sources, an (n,) int64 map (-1 = not present; entries
        to absent sources are dropped) giving a (len(rows), columns.max() + 1) matrix."""
        dst, src, w = self.normalised_edges()
        n = self.num_nodes
        if rows is None:
            local = dst
            n_rows = n
        else:
            where = torch.full((n,), -1, dtype=torch.int64)
            where[rows] = torch.arange(len(rows))
            local = where[dst]
            keep = local >= 0
            local, src, w = local[keep], src[keep], w[keep]
            n_rows = len(rows)
        n_cols = n
        if columns is not None:
            src = columns[src]
            keep = src >= 0
            local, src, w = local[keep], src[keep], w[keep]
            n_cols = int(columns.max()) + 1
        order = torch.argsort(local * n_cols + src)
        local, src, w = local[order], src[order], w[order]
        crow = torch.zeros(n_rows + 1, dtype=torch.int64)
        crow[1:] = torch.cumsum(torch.bincount(local, minlength=n_rows), 0)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # "sparse CSR support is in beta"
            return torch.sparse_csr_tensor(crow, src, w, (n_rows, n_cols))


def make_graph(x, y, edge_index, train_mask, val_mask, test_mask) -> Graph:
    """Validate and clean: edges out of range raise; self loops are dropped (the normalisation
    adds exactly one per vertex), duplicates merged, every edge made undirected."""
    x = torch.as_tensor(np.asarray(x), dtype=torch.float32)
    y = torch.as_tensor(np.asarray(y), dtype=torch.int64)
    ei = torch.as_tensor(np.asarray(edge_index), dtype=torch.int64)
    n = len(y)
    if x.ndim != 2 or len(x) != n:
        raise ValueError(f"x must be (n, F) with n = len(y) = {n}, got {tuple(x.shape)}")
    if ei.ndim != 2 or ei.shape[0] != 2:
        raise ValueError(f"edge_index must be (2, E), got {tuple(ei.shape)}")
    if ei.numel() and (int(ei.min()) < 0 or int(ei.max()) >= n):
        raise ValueError(f"edge_index has vertex ids outside [0, {n}): "
                         f"min {int(ei.min())}, max {int(ei.max())}")
    if n and (int(y.min()) < 0):
        raise ValueError("labels must be >= 0")
    ei = ei[:, ei[0] != ei[1]]
    ei = torch.unique(torch.cat([ei, ei.flip(0)], 1), dim=1)
    masks = [torch.as_tensor(np.asarray(m), dtype=torch.bool) for m in
             (train_mask, val_mask, test_mask)]
    for name, m in zip(("train_mask", "val_mask", "test_mask"), masks):
        if m.shape != (n,):
            raise ValueError(f"{name} must be ({n},) bool, got {tuple(m.shape)}")
    if not masks[0].any():
        raise ValueError("train_mask selects no vertex")
    return Graph(x, y, ei, *masks)


def sbm(n: int = 10_000, *, classes: int = 8, avg_degree: float = 10.0, homophily: float = 0.8,
        features: int = 32, noise: float = 3.0, train: float = 0.1, val: float = 0.1,
        seed: int = 0) -> Graph:
    """Stochastic block model for node classification, generated offline in O(E).

    Every vertex belongs to one of ``classes`` blocks (its label); each of the n·avg_degree/2
    undirected edges joins a uniform vertex to a vertex of its own block with probability
    ``homophily``, else to a uniform vertex. Features are the block's mean vector (unit
    Gaussian) plus N(0, noise²) per entry, so one vertex alone is hard to classify and
    aggregating neighbours helps: the graph matters. Masks: random train/val fractions, the rest
    test."""
    if n < classes or classes < 2:
        raise ValueError(f"need n >= classes >= 2, got n={n}, classes={classes}")
    if not 0 <= homophily <= 1:
        raise ValueError(f"homophily must be in [0, 1], got {homophily}")
    rng = np.random.default_rng(seed)
    y = rng.permutation(np.arange(n) % classes)
    members = [np.flatnonzero(y == c) for c in range(classes)]
    m = int(n * avg_degree / 2)
    src = rng.integers(n, size=m)
    dst = rng.integers(n, size=m)
    same = rng.random(m) < homophily
    for c in range(classes):
        pick = same & (y[src] == c)
        dst[pick] = members[c][rng.integers(len(members[c]), size=int(pick.sum()))]
    means = rng.standard_normal((classes, features))
    x = means[y] + noise * rng.standard_normal((n, features))
    order = rng.permutation(n)
    n_train, n_val = max(classes, int(train * n)), int(val * n)
    masks = [np.zeros(n, bool) for _ in range(3)]
    masks[0][order[:n_train]] = True
    masks[1][order[n_train:n_train + n_val]] = True
    masks[2][order[n_train + n_val:]] = True
    return make_graph(x, y, np.stack([src, dst]), *masks)


def save_graph(graph: Graph, path: str | Path) -> None:
    """One .npz (written to a temporary name, then renamed: never half a file)."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp.npz")
    np.savez(tmp, x=graph.x.numpy(), y=graph.y.numpy(), edge_index=graph.edge_index.numpy(),
             train_mask=graph.train_mask.numpy(), val_mask=graph.val_mask.numpy(),
             test_mask=graph.test_mask.numpy())
    tmp.replace(path)


def load_graph(path: str | Path) -> Graph:
    with np.load(path) as d:
        return make_graph(d["x"], d["y"], d["edge_index"], d["train_mask"], d["val_mask"],
                          d["test_mask"])


def load_planetoid(root: str | Path, name: str) -> Graph:
    """Cora / CiteSeer / PubMed from PyG's raw Planetoid files in ``root`` (``ind.<name>.x``,
    ``.tx``, ``.allx``, ``.y``, ``.ty``, ``.ally``, ``.graph``, ``.test.index``; the files
    ``torch_geometric.datasets.Planetoid`` downloads into ``<root>/<Name>/raw``). Never
    downloads. The standard split: 20 labelled vertices per class for training, the next 500
    for validation, the 1000 indexed test vertices for testing."""
    name = name.lower()
    root = Path(root)
    for base in (root, root / name.capitalize() / "raw", root / name / "raw"):
        if (base / f"ind.{name}.x").exists():
            break
    else:
        raise FileNotFoundError(f"no ind.{name}.x under {root} (looked in ., "
                                f"{name.capitalize()}/raw, {name}/raw); nothing is downloaded")
    parts = {}
    for key in ("x", "tx", "allx", "y", "ty", "ally", "graph"):
        with open(base / f"ind.{name}.{key}", "rb") as f:
            parts[key] = pickle.load(f, encoding="latin1")
    test_index = np.loadtxt(base / f"ind.{name}.test.index", dtype=np.int64).reshape(-1)
    dense = [p.toarray() if hasattr(p, "toarray") else np.asarray(p)
             for p in (parts["allx"], parts["tx"])]
    ys = [np.asarray(parts["ally"]), np.asarray(parts["ty"])]
    lo, hi = int(test_index.min()), int(test_index.max())
    if name == "citeseer":  # isolated test vertices are missing from tx/ty: pad with zeros
        full_x = np.zeros((hi - lo + 1, dense[1].shape[1]), dense[1].dtype)
        full_y = np.zeros((hi - lo + 1, ys[1].shape[1]), ys[1].dtype)
        full_x[np.sort(test_index) - lo], full_y[np.sort(test_index) - lo] = dense[1], ys[1]
        dense[1], ys[1] = full_x, full_y
    x, y = np.vstack(dense), np.vstack(ys)
    order = np.sort(test_index)
    x[test_index], y[test_index] = x[order].copy(), y[order].copy()
    labels = y.argmax(1)
    edges = [(s, t) for s, nbrs in parts["graph"].items() for t in nbrs if t < len(labels)]
    n, n_train = len(labels), len(np.asarray(parts["y"]))
    masks = [np.zeros(n, bool) for _ in range(3)]
    masks[0][:n_train] = True
    masks[1][n_train:n_train + 500] = True
    masks[2][test_index] = True
    return make_graph(x, labels, np.asarray(edges, dtype=np.int64).T.reshape(2, -1), *masks)


def partition(graph: Graph, parts: int, *, method: str = "auto", seed: int = 0) -> torch.Tensor:
    """(n,) int64 part id per vertex, parts of near-equal size with few cut edges.

    method: "metis" (pymetis), "rcm" (reverse Cuthill-McKee order cut into equal ranges:
    neighbours get nearby positions, so ranges cut few edges on local graphs; no extra
    dependency beyond scipy), "contiguous" (vertex-id ranges) or "auto" (metis when pymetis
    imports, else rcm)."""
    n = graph.num_nodes
    if parts < 1 or parts > n:
        raise ValueError(f"parts must be in [1, n={n}], got {parts}")
    if parts == 1:
        return torch.zeros(n, dtype=torch.int64)
    if method == "auto":
        try:
            import pymetis  # noqa: F401

            method = "metis"
        except ImportError:
            method = "rcm"
    src, dst = graph.edge_index.numpy()
    if method == "metis":
        import pymetis

        order = np.argsort(src, kind="stable")
        xadj = np.concatenate([[0], np.cumsum(np.bincount(src, minlength=n))])
        opts = pymetis.Options(seed=seed)
        csr = pymetis.CSRAdjacency(xadj, dst[order])
        _, assign = pymetis.part_graph(parts, adjacency=csr, options=opts)
        return torch.as_tensor(np.asarray(assign), dtype=torch.int64)
    if method == "rcm":
        from scipy.sparse import csr_matrix
        from scipy.sparse.csgraph import reverse_cuthill_mckee

        a = csr_matrix((np.ones(len(src)), (src, dst)), shape=(n, n))
        order = np.asarray(reverse_cuthill_mckee(a, symmetric_mode=True))
    elif method == "contiguous":
        order = np.arange(n)
    else:
        raise ValueError(f"method must be auto, metis, rcm or contiguous, got {method!r}")
    assign = np.empty(n, np.int64)
    assign[order] = np.arange(n) * parts // n
    return torch.as_tensor(assign)
