"""Graph container, normalisation, the SBM generator, partitions and the Planetoid reader."""

from __future__ import annotations

import pickle

import numpy as np
import pytest
import torch

from distcomp.gnn.graph import load_graph, load_planetoid, make_graph, partition, save_graph, sbm


def _dense_reference(g) -> torch.Tensor:
    n = g.num_nodes
    a = torch.eye(n)
    a[g.edge_index[1], g.edge_index[0]] = 1.0
    d = a.sum(1).rsqrt()
    return d[:, None] * a * d[None, :]


def test_adjacency_matches_dense_gcn_normalisation():
    g = sbm(200, classes=4, seed=3)
    dense = _dense_reference(g)
    assert torch.allclose(g.adjacency().to_dense(), dense, atol=1e-6)
    rows = torch.tensor([7, 3, 150])
    assert torch.allclose(g.adjacency(rows).to_dense(), dense[rows], atol=1e-6)
    cols = torch.full((200,), -1)
    keep = torch.arange(0, 200, 3)
    cols[keep] = torch.arange(len(keep))
    assert torch.allclose(g.adjacency(rows, cols).to_dense(), dense[rows][:, keep], atol=1e-6)


def test_make_graph_cleans_and_validates():
    x, y = np.zeros((4, 2)), np.array([0, 1, 0, 1])
    masks = [np.array([1, 1, 0, 0], bool), np.zeros(4, bool), np.array([0, 0, 1, 1], bool)]
    g = make_graph(x, y, [[0, 1, 1, 2], [1, 0, 1, 0]], *masks)  # duplicate and a self loop
    assert sorted(map(tuple, g.edge_index.T.tolist())) == [(0, 1), (0, 2), (1, 0), (2, 0)]
    assert torch.allclose(g.adjacency().to_dense()[3], torch.tensor([0, 0, 0, 1.0]))  # isolated
    with pytest.raises(ValueError, match="outside"):
        make_graph(x, y, [[0, 4], [1, 0]], *masks)
    with pytest.raises(ValueError, match=r"\(2, E\)"):
        make_graph(x, y, [[0, 1, 2]], *masks)
    with pytest.raises(ValueError, match="train_mask selects no vertex"):
        make_graph(x, y, [[0], [1]], np.zeros(4, bool), *masks[1:])


def test_sbm_is_deterministic_homophilous_and_saves(tmp_path):
    a, b = sbm(1000, seed=5), sbm(1000, seed=5)
    assert torch.equal(a.edge_index, b.edge_index) and torch.equal(a.x, b.x)
    src, dst = a.edge_index
    assert (a.y[src] == a.y[dst]).float().mean() > 0.7
    assert not (a.train_mask & a.test_mask).any()
    save_graph(a, tmp_path / "g.npz")
    c = load_graph(tmp_path / "g.npz")
    assert torch.equal(c.edge_index, a.edge_index) and torch.equal(c.test_mask, a.test_mask)
    assert [p.name for p in tmp_path.iterdir()] == ["g.npz"]


@pytest.mark.parametrize("method", ["metis", "rcm", "contiguous"])
def test_partitions_are_balanced(method):
    if method == "metis":
        pytest.importorskip("pymetis", reason="pymetis (METIS) is not installed")
    g = sbm(2000, seed=1)
    assign = partition(g, 4, method=method)
    counts = torch.bincount(assign, minlength=4)
    assert counts.sum() == 2000 and counts.min() >= 0.9 * 500 and counts.max() <= 1.1 * 500


def test_metis_cuts_fewer_edges_than_ranges():
    pytest.importorskip("pymetis", reason="pymetis (METIS) is not installed")
    g = sbm(4000, seed=2)
    src, dst = g.edge_index

    def cut(method):
        a = partition(g, 2, method=method)
        return float((a[src] != a[dst]).float().mean())

    assert cut("metis") < 0.5 * cut("contiguous")
    with pytest.raises(ValueError, match="parts"):
        partition(g, 0)


def _write_planetoid(root, name="cora"):
    """Four vertices in PyG's raw Planetoid layout: 2 training (allx[:2], y), allx also holds
    vertex 2, the test vertices 3 and 2... stored in tx in sorted-index order."""
    from scipy.sparse import csr_matrix

    raw = root / "Cora" / "raw"
    raw.mkdir(parents=True)
    allx = csr_matrix(np.array([[1.0, 0], [0, 1], [1, 1]]))
    tx = csr_matrix(np.array([[2.0, 2]]))
    onehot = np.eye(2)
    files = {"x": allx[:2], "y": onehot[[0, 1]], "allx": allx, "ally": onehot[[0, 1, 0]],
             "tx": tx, "ty": onehot[[1]], "graph": {0: [1], 1: [0, 3], 2: [], 3: [1]}}
    for key, value in files.items():
        with open(raw / f"ind.{name}.{key}", "wb") as f:
            pickle.dump(value, f)
    (raw / f"ind.{name}.test.index").write_text("3\n")


def test_planetoid_reader_reads_the_raw_layout(tmp_path):
    pytest.importorskip("scipy", reason="scipy is not installed")
    _write_planetoid(tmp_path)
    g = load_planetoid(tmp_path, "cora")
    assert g.num_nodes == 4 and g.y.tolist() == [0, 1, 0, 1]
    assert g.x[3].tolist() == [2.0, 2.0]
    assert g.train_mask.tolist() == [True, True, False, False]
    assert g.test_mask.tolist() == [False, False, False, True]
    assert sorted(map(tuple, g.edge_index.T.tolist())) == [(0, 1), (1, 0), (1, 3), (3, 1)]
    with pytest.raises(FileNotFoundError, match="nothing is downloaded"):
        load_planetoid(tmp_path, "pubmed")
