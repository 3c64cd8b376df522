"""Compression picked by name: what each method reads from the optimizer, and ``attach`` on a
real 2-rank DDP model."""

from __future__ import annotations

import logging

import pytest
import torch
from torch.nn import functional as F
from torch.nn.parallel import DistributedDataParallel as DDP

from distcomp import method_names
from distcomp.hooks import attach, comm_names, local_hook, method_options
from tests.models import mlp
from tests.multiproc import run_ranks


def test_names_are_the_registry_s_methods_and_their_lgreco_forms():
    assert comm_names() == [*method_names(), *(f"lgreco-{m}" for m in method_names())]
    assert method_options("lgreco-qsgd") == ("qsgd", {"lgreco": {}})
    assert method_options("lgreco-qsgd", lgreco={"period": 7}) == ("qsgd",
                                                                  {"lgreco": {"period": 7}})
    with pytest.raises(ValueError, match=r"unknown compression 'tpk'; choose from \['"):
        method_options("tpk")


def test_top_k_reads_heavy_ball_momentum_and_nothing_else(caplog):
    p = [torch.nn.Parameter(torch.zeros(2))]
    sgd = torch.optim.SGD(p, lr=0.1, momentum=0.9)
    assert method_options("topk", sgd) == ("topk", {"momentum": 0.9})
    assert method_options("topk", sgd, momentum=0.5) == ("topk", {"momentum": 0.5})  # explicit
    assert method_options("topk", torch.optim.SGD(p, lr=0.1)) == ("topk", {})
    assert method_options("topk", torch.optim.Adam(p)) == ("topk", {})
    assert method_options("powersgd", sgd) == ("powersgd", {})  # nothing to correct
    with caplog.at_level(logging.WARNING, logger="distcomp"):
        nesterov = torch.optim.SGD(p, lr=0.1, momentum=0.9, nesterov=True)
        assert method_options("topk", nesterov) == ("topk", {})
    assert "nesterov" in caplog.text
    two = torch.optim.SGD([{"params": p, "momentum": 0.9},
                           {"params": [torch.nn.Parameter(torch.zeros(1))], "momentum": 0.5}],
                          lr=0.1)
    with pytest.raises(ValueError, match="different momenta"):
        method_options("topk", two)


def _attach(rank, world):
    out = {}
    for name in ("topk", "lgreco-powersgd"):
        torch.manual_seed(0)
        model = DDP(mlp())
        opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
        state = attach(model, name, optimizer=opt, warmup_steps=1, accordion=False,
                       density=0.05)
        for step in range(3):
            g = torch.Generator().manual_seed(100 * step + rank)
            x, y = torch.randn(16, 32, generator=g), torch.randint(0, 10, (16,), generator=g)
            opt.zero_grad()
            F.cross_entropy(model(x), y).backward()
            opt.step()
        out[name] = {"momentum": state.reducer.compressor.momentum, "steps": state.step,
                     "lgreco": state.reducer.lgreco is not None,
                     "compressed": state.compression_stats()["ratio"]}
        state.close()
        with pytest.raises(RuntimeError, match="only be called once"):  # attach registered it
            model.register_comm_hook(None, local_hook)
    return out


def test_attach_registers_the_hook_with_the_optimizer_s_momentum():
    for r in run_ranks(_attach):
        assert r["topk"]["momentum"] == 0.9 and not r["topk"]["lgreco"]
        assert r["lgreco-powersgd"]["lgreco"] and r["lgreco-powersgd"]["momentum"] == 0
        assert all(v["steps"] == 3 and v["compressed"] > 1 for v in r.values())
