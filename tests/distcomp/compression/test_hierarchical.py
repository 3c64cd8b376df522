"""Topology-aware averaging on 4 real gloo ranks (2 nodes x 2): exact inside a node,
compressed across nodes, equal to a reference computed by hand from the node means; on one
loopback and across two network namespaces (2 ranks in each), where only the compressed stage
may cross the link between them."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from distcomp.compression.hierarchical import deal
from tests.multiproc import run_ranks

SHAPES = {"a.weight": (64, 48), "a.bias": (64,), "b.weight": (40, 56), "c.weight": (96, 32)}


def grads_of(rank: int, step: int) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(100 * rank + step)
    return {k: torch.randn(*s, generator=g) for k, s in SHAPES.items()}


def _three_stage(rank: int, world: int, method: str, setting: float) -> dict:
    import torch.distributed as dist

    from distcomp.compression.config import CompressionConfig
    from distcomp.compression.hierarchical import build
    from distcomp.compression.reducer import CompressedReducer
    from distcomp.compression.topology import Topology

    knob = {"powersgd": "rank", "topk": "density"}[method]
    config = CompressionConfig(method=method, **{knob: setting}, warmup_steps=0,
                               accordion=False, min_compression_rate=0.0)
    topo = Topology(rank, world, ranks_per_node=2)
    hier, groups = build(CompressedReducer(config, rank=rank), topo, timeout_s=60)
    out = []
    dist.barrier()
    tx = veth_tx_bytes()
    for step in range(2):
        grads = grads_of(rank, step)
        tensors = list(grads.values())
        hier.reduce(tensors, list(grads), step)
        out.append({k: t.clone() for k, t in grads.items()})
    dist.barrier()
    tx = veth_tx_bytes() - tx
    owned = sorted(hier.reducer.residuals)
    owner = dict(hier.owner)
    slow = hier.reducer.ledger.summary()
    local = hier.local_ledger.summary()
    for g in groups:
        dist.destroy_process_group(g)
    return {"out": out, "owned": owned, "owner": owner, "slow": slow, "local": local, "tx": tx}


def veth_tx_bytes() -> int:
    """Bytes this namespace has sent on its veth (any interface but loopback): /proc/net/dev
    shows the reading process's own network namespace."""
    lines = Path("/proc/self/net/dev").read_text().splitlines()[2:]
    return sum(int(line.split(":")[1].split()[8]) for line in lines
               if line.split(":")[0].strip() != "lo")


def node_means(step: int) -> list[dict[str, torch.Tensor]]:
    per_rank = [grads_of(r, step) for r in range(4)]
    return [{k: (per_rank[2 * n][k] + per_rank[2 * n + 1][k]) / 2 for k in SHAPES}
            for n in range(2)]


def reference(compress) -> list[dict[str, torch.Tensor]]:
    """Two steps of compression with error feedback between the 2 nodes, by hand:
    ``compress(key, [each node's input]) -> (the average, [what each node's share kept])``;
    1-D tensors travel exact."""
    out = []
    residual = [{k: torch.zeros(s) for k, s in SHAPES.items()} for _ in range(2)]
    for step in range(2):
        means, result = node_means(step), {}
        for k, s in SHAPES.items():
            if len(s) == 1:
                result[k] = (means[0][k] + means[1][k]) / 2
                continue
            xs = [means[n][k] + residual[n][k] for n in range(2)]
            result[k], kept = compress(k, xs)
            for n in range(2):
                residual[n][k] = xs[n] - kept[n]
        out.append(result)
    return out


def powersgd_reference(rank: int) -> list[dict[str, torch.Tensor]]:
    """Rank-r PowerSGD: one shared P, warm-started Q."""
    from distcomp.compression.methods.powersgd import PowerSGD, orthogonalize

    comp = PowerSGD()
    qs = {k: comp.initial_q(torch.Size(s), rank, 0, k) for k, s in SHAPES.items() if len(s) == 2}

    def compress(k, ms):
        p = orthogonalize(sum(m @ qs[k] for m in ms))
        q_local = [m.t() @ p for m in ms]
        qs[k] = sum(q_local)
        return p @ qs[k].t() / 2, [p @ q.t() for q in q_local]

    return reference(compress)


def topk_reference(density: float) -> list[dict[str, torch.Tensor]]:
    """Top-k of each node's input, summed."""
    from distcomp.compression.methods.topk import TopK

    def compress(k, xs):
        kept = []
        for x in xs:
            flat = torch.zeros(x.numel())
            idx = x.reshape(-1).abs().topk(TopK.k_for(x.numel(), density)).indices
            flat[idx] = x.reshape(-1)[idx]
            kept.append(flat.view_as(x))
        return sum(kept) / 2, kept

    return reference(compress)


@pytest.mark.parametrize("method,setting", [("powersgd", 2), ("topk", 0.25)])
def test_three_stages_match_the_node_mean_reference_by_hand(method, setting):
    check_against_reference(run_ranks(_three_stage, world=4, method=method, setting=setting),
                            method, setting)


@pytest.mark.parametrize("method,setting", [("powersgd", 2), ("topk", 0.25)])
def test_three_stages_across_two_namespaces_match_the_reference(method, setting, two_hosts):
    """Ranks 0-1 in one namespace and 2-3 in the other, joined by a shaped veth: the node
    stages take each namespace's loopback, only the compressed stage crosses the veth."""
    results = run_ranks(_three_stage, world=4, method=method, setting=setting,
                        hosts=two_hosts)
    check_against_reference(results, method, setting)
    slow = results[0]["slow"]["sent_bytes"] + results[1]["slow"]["sent_bytes"]
    local = results[0]["local"]["sent_bytes"] + results[1]["local"]["sent_bytes"]
    # what node a's veth sent during the two steps: its compressed stage plus headers, ACKs
    # and two barriers (~15 KB here), far from the dense node stage's bytes
    assert slow <= results[0]["tx"] < slow + local / 4, (results[0]["tx"], slow, local)


def check_against_reference(results: list[dict], method: str, setting: float) -> None:
    ref = powersgd_reference(setting) if method == "powersgd" else topk_reference(setting)
    for rank, res in enumerate(results):
        for step in range(2):
            for k in SHAPES:
                torch.testing.assert_close(res["out"][step][k], ref[step][k], rtol=1e-5,
                                           atol=1e-5, msg=f"rank {rank} step {step} {k}")
    # the layers are dealt between the two local ranks; each keeps state for its own only,
    # and the same local rank owns the same layers on both nodes
    own = deal([torch.Size(s).numel() for s in SHAPES.values()], [0, 0])
    for rank, res in enumerate(results):
        assert res["owner"] == dict(zip(SHAPES, own))
        mine = {k for k, o in zip(SHAPES, own) if o == rank % 2 and len(SHAPES[k]) == 2}
        assert set(res["owned"]) == mine
    # slow-link bytes: each node sends every layer once, split over its ranks
    node0 = results[0]["slow"]["sent_bytes"] + results[1]["slow"]["sent_bytes"]
    assert node0 == results[2]["slow"]["sent_bytes"] + results[3]["slow"]["sent_bytes"] > 0
    dense = sum(torch.Size(s).numel() * 4 for s in SHAPES.values())
    assert results[0]["local"]["sent_bytes"] == 2 * 2 * dense  # two steps, stages 1 and 3


def test_deal_balances_elements_across_buckets():
    sizes = [100, 10, 60, 50, 5, 5]
    load = [0, 0]
    own = deal(sizes, load)
    assert load == [115, 115] and own == deal(sizes, [0, 0])
    # one tensor per bucket (small DDP buckets): the load carries over, so both ranks own some
    load = [0, 0]
    assert [deal([n], load)[0] for n in (40, 30, 20, 10)] == [0, 1, 1, 0] and load == [50, 50]
    assert deal([], [0, 0, 0]) == []
