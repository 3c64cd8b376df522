"""The model on which torch's own powerSGD_hook aborts or hangs here (2-rank gloo, CPU): a
1024-2048-2048-10 MLP at rank 4, which DDP splits into several buckets. torch's hook launches a
bucket's second all-reduce from a future callback, racing the autograd thread's launch of the
next bucket, so ranks can issue collectives in different orders. Ours must train on it, every
time, with both ranks ending with identical parameters."""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F
from torch.nn.parallel import DistributedDataParallel as DDP

from distcomp.hooks import CompressionState, compression_hook
from tests.multiproc import run_ranks


def _train_big_mlp(rank, world, repeats=2, steps=6):
    import torch.distributed as dist

    out = []
    for rep in range(repeats):
        for method in ("powersgd", "topk", "qsgd"):
            torch.manual_seed(rep)
            model = DDP(nn.Sequential(nn.Linear(1024, 2048), nn.ReLU(), nn.Linear(2048, 2048),
                                      nn.ReLU(), nn.Linear(2048, 10)), bucket_cap_mb=4)
            state = CompressionState(model, method, rank=4, density=0.01, bits=4, timeout_s=60)
            model.register_comm_hook(state, compression_hook)
            opt = torch.optim.SGD(model.parameters(), lr=0.01)
            for step in range(steps):
                g = torch.Generator().manual_seed(step * 2 + rank)
                x, y = torch.randn(32, 1024, generator=g), torch.randint(0, 10, (32,), generator=g)
                opt.zero_grad()
                F.cross_entropy(model(x), y).backward()
                opt.step()
            flat = torch.cat([p.detach().reshape(-1) for p in model.parameters()])
            other = flat.clone()
            dist.broadcast(other, src=0)
            out.append((method, state.step, bool(torch.equal(flat, other))))
    return out


def test_multi_bucket_model_trains_without_abort_or_hang():
    for rank_result in run_ranks(_train_big_mlp, timeout_s=240):
        assert len(rank_result) == 6
        for method, steps, same in rank_result:
            assert steps == 6 and same, method
