"""The compressed reduce-scatter on 4 real gloo ranks: two hops (2 nodes x 2, exact inside the
node) and one hop equal a reference computed by hand from every rank's input (fp8 is
deterministic, so the reference is exact), error feedback carries what encoding lost into
the next step (fp32 and fp8 residuals), the warm-up is the exact sum, and the ledgers count
the all-to-all's bytes."""

from __future__ import annotations

import pytest
import torch
import torch.distributed as dist

from distcomp.comm import TorchComm
from distcomp.compression.compressor import get_compressor
from distcomp.compression.reduce_scatter import FP8_RESIDUAL_BLOCK, CompressedReduceScatter
from distcomp.compression.topology import Topology
from tests.multiproc import run_ranks

N_CHUNK = 300  # elements per chunk (not a multiple of fp8's block: a short last block)


def _inputs(world: int, step: int) -> list[torch.Tensor]:
    """Every rank's flat input at ``step`` (world x N_CHUNK,), known to every rank."""
    gen = torch.Generator().manual_seed(1000 * step + 7)
    return [torch.randn(world * N_CHUNK, generator=gen) * (1 + r) for r in range(world)]


def _scatter(me: int, world: int, per_node: int, residual: str, warmup: int = 0):
    t = Topology(me, world, per_node)
    comp = get_compressor("fp8", fp8_block=64)
    peers = [dist.new_group(t.peer_ranks(j)) for j in range(per_node)]
    nodes = [dist.new_group(t.node_ranks(n)) for n in range(t.nodes)] if per_node > 1 else []
    return t, comp, CompressedReduceScatter(
        comp, 64, TorchComm(peers[t.local_rank], 30),
        TorchComm(nodes[t.node], 30) if nodes else None, warmup_steps=warmup, residual=residual)


def _reference(t: Topology, comp, residual: str, steps: int) -> list[torch.Tensor]:
    """What rank ``t.rank`` must receive at each step, from the definition: node sums of the
    chunks for this rank, every other node's sum encoded by its sender (plus the sender's
    residual), its own node's exact. A sender's residual holds a row per destination node;
    at most two nodes here, so the rows other than this rank's are its own (zero), which
    matters where the fp8 residual's blocks straddle rows."""
    assert t.nodes <= 2 or residual == "fp32"
    world, per, n = t.world_size, t.ranks_per_node, N_CHUNK
    fp8 = get_compressor("fp8", fp8_block=FP8_RESIDUAL_BLOCK)
    kept = torch.zeros(t.nodes, t.nodes, n)  # sender node -> its residual rows
    outs = []
    for step in range(steps):
        xs = _inputs(world, step)
        total = torch.zeros(n)
        for b in range(t.nodes):  # node b's sum of its ranks' chunk for this rank
            chunk = sum(xs[b * per + i][t.rank * n:(t.rank + 1) * n] for i in range(per))
            if b == t.node:
                total = chunk + total
                continue
            send = chunk + kept[b, t.node]
            decoded = comp.decode(comp.encode(send, 64), n, 64)
            total = total + decoded
            lost = torch.zeros(t.nodes, n)
            lost[t.node] = send - decoded
            kept[b] = lost if residual == "fp32" else fp8.decode(
                fp8.encode(lost.reshape(-1), FP8_RESIDUAL_BLOCK), lost.numel(),
                FP8_RESIDUAL_BLOCK).view_as(lost)
        outs.append(total)
    return outs


def _run(me, world, per_node, residual, warmup=0, steps=3):
    t, comp, rs = _scatter(me, world, per_node, residual, warmup)
    got = []
    for step in range(steps):
        out = torch.empty(N_CHUNK)
        rs.reduce_scatter(out, _inputs(world, step)[me], "w", step)
        got.append(out)
    exact = [sum(x[me * N_CHUNK:(me + 1) * N_CHUNK] for x in _inputs(world, s))
             for s in range(steps)]
    return {"got": got, "exact": exact, "stats": rs.ledger.summary(),
            "fast": rs.fast_ledger.summary(), "state_bytes": rs.state_bytes(),
            "reference": _reference(t, comp, residual, steps) if warmup == 0 else None,
            "wire": comp.wire_bytes(torch.Size([N_CHUNK]), 64)}


@pytest.mark.parametrize("per_node,residual", [(2, "fp32"), (2, "float8"), (1, "fp32")],
                         ids=["two-hops", "two-hops-fp8-residual", "one-hop"])
def test_compressed_reduce_scatter_equals_the_hand_reference(per_node, residual):
    res = run_ranks(_run, world=4, per_node=per_node, residual=residual)
    nodes = 4 // per_node
    for r in res:
        for got, ref, exact in zip(r["got"], r["reference"], r["exact"]):
            torch.testing.assert_close(got, ref, rtol=1e-6, atol=1e-5)
            err = float((got - exact).norm() / exact.norm())
            assert 1e-4 < err < 0.05, err  # compressed (not exact), and close
        stats = r["stats"]
        assert stats["sent_bytes"] == 3 * (nodes - 1) * r["wire"]  # 3 steps, N - 1 payloads
        assert stats["dense_bytes"] == 3 * (nodes - 1) * N_CHUNK * 4
        assert r["fast"]["sent_bytes"] == (3 * nodes * N_CHUNK * 4 if per_node > 1 else 0)
        full = nodes * N_CHUNK * 4  # fp32 residual: one row per peer
        assert r["state_bytes"] == (full if residual == "fp32" else
                                    nodes * N_CHUNK + 4 * -(-nodes * N_CHUNK // 256))


def test_warmup_is_the_exact_sum_and_bad_input_is_refused():
    for r in run_ranks(_run, world=4, per_node=2, residual="none", warmup=2):
        for got, exact in zip(r["got"][:2], r["exact"][:2]):
            torch.testing.assert_close(got, exact, rtol=1e-6, atol=1e-5)
        assert not torch.allclose(r["got"][2], r["exact"][2], atol=1e-5)
        assert r["state_bytes"] == 0
    with pytest.raises(TypeError, match="all-to-all"):
        CompressedReduceScatter(get_compressor("powersgd"), 4, None)
    with pytest.raises(ValueError, match="residual"):
        CompressedReduceScatter(get_compressor("fp8"), 0, None, residual="int4")
