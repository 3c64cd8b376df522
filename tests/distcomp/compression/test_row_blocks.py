"""PowerSGD on row blocks (FSDP2's shards) on 4 real gloo ranks, 2 nodes x 2: the node's ranks
compress each weight jointly, so the result is one power iteration on the whole node-mean
matrices, its slow-link bytes those of the whole weight; blocks of unequal and zero rows
work; an inf in one rank's block sends the whole node to the dense fallback together."""

from __future__ import annotations

import torch

from distcomp.compression.methods.powersgd import PowerSGD, as_matrix, orthogonalize
from tests.multiproc import run_ranks

SHAPES = {"w": (7, 12), "conv": (5, 3, 2, 2), "thin": (1, 40)}  # blocks of 4+3, 3+2, 1+0 rows


def _node_mean(node: int, step: int) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(10 * node + step)
    return {k: torch.randn(*s, generator=g) for k, s in SHAPES.items()}


def _block(t: torch.Tensor, j: int) -> torch.Tensor:
    per = -(-t.shape[0] // 2)
    return t[j * per : (j + 1) * per]


def _joint(rank: int, world: int) -> dict:
    import torch.distributed as dist

    from distcomp.comm import TorchComm
    from distcomp.compression.config import CompressionConfig
    from distcomp.compression.hierarchical import node_groups
    from distcomp.compression.reducer import CompressedReducer, RowBlocks
    from distcomp.compression.topology import Topology

    topo = Topology(rank, world, ranks_per_node=2)
    node, peer, groups = node_groups(topo)
    config = CompressionConfig(method="powersgd", rank=2, warmup_steps=0, accordion=False,
                               min_compression_rate=0.0)
    shapes = {k: torch.Size(s) for k, s in SHAPES.items()}
    reducer = CompressedReducer(config, rank=rank, rows=RowBlocks(TorchComm(node, 60), shapes))
    peers = TorchComm(peer, 60)
    grads = {k: _block(v, topo.local_rank).clone() for k, v in _node_mean(topo.node, 0).items()}
    reducer.reduce(list(grads.values()), list(grads), peers, 0)
    out = {"avg": grads, "residuals": {k: v.clone() for k, v in reducer.residuals.items()},
           "sent": reducer.ledger.summary()["sent_bytes"]}
    bad = {k: _block(v, topo.local_rank).clone() for k, v in _node_mean(topo.node, 1).items()}
    if rank == 1:
        bad["w"][0, 0] = float("inf")
    reducer.reduce(list(bad.values()), list(bad), peers, 1)
    out["fallbacks"] = reducer.nonfinite_buckets
    out["finite"] = {k: bool(torch.isfinite(v).all()) for k, v in bad.items()}
    for g in groups:
        dist.destroy_process_group(g)
    return out


def test_row_blocks_compress_the_whole_matrix_together():
    res = run_ranks(_joint, world=4, timeout_s=90)
    means = [_node_mean(n, 0) for n in range(2)]
    joint_bytes = 0
    for key, shape in SHAPES.items():
        ms = [as_matrix(m[key]) for m in means]
        r = min(2, *ms[0].shape)
        q0 = PowerSGD(rank=2).initial_q(torch.Size(shape), r, 0, key)
        p = orthogonalize(sum(m @ q0 for m in ms))
        q = sum(m.t() @ p for m in ms)
        want = (p @ q.t() / 2).view(shape)
        joint_bytes += 4 * r * sum(ms[0].shape)
        for rank, got in enumerate(res):
            node, j = divmod(rank, 2)
            torch.testing.assert_close(got["avg"][key], _block(want, j), rtol=1e-4, atol=1e-6)
            residual = ms[node] - p @ (p.t() @ ms[node])  # error feedback: M - P P^T M
            torch.testing.assert_close(got["residuals"][key].view(-1),
                                       _block(residual.view(shape), j).reshape(-1),
                                       rtol=1e-4, atol=1e-6)
    # each node's two ranks together send the whole weight's factors once: 4 r (n + m)
    assert res[0]["sent"] + res[1]["sent"] == joint_bytes + 2 * 4  # + each rank's flag
    for rank, got in enumerate(res):  # rank 1's inf: every rank falls back to the dense mean
        assert got["fallbacks"] == 1
        assert got["finite"] == {"w": rank % 2 == 0, "conv": True, "thin": True}, rank
