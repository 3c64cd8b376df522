"""The bad-input catalogue: each case feeds one bad (or awkward but supported) input to the
public API or the CLI, as a user would. ``benchmarks.reliability.badinputs`` runs every case
in fresh processes (``ranks`` of them, on one gloo group) and records what happened.

A case's ``act(ctx)`` returns normally when the input was handled (for "works" cases it also
checks the result is right: finite, identical on every rank, equal to plain DDP where the
setting is exact) and raises when it was refused; ``match`` is a fragment the error must
contain (the knob, column or file it names). ``setup(ctx)`` builds input files on rank 0 first;
whatever ``act`` adds under ``ctx.work`` after an error counts as partial output.
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from torch import nn

from benchmarks.reliability.badinput_cli_cases import DATA_CASES
from benchmarks.reliability.badinput_types import Case, Ctx, ExitStatus

ROOT = Path(__file__).resolve().parents[2]


# -- gradient compression hooks and optimizers ---------------------------------------------

def _mlp(dtype: torch.dtype = torch.float32) -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 4)).to(dtype)


def _state(method: str = "powersgd", lgreco=None, **opts):
    from distcomp.hooks.ddp import CompressionState
    return lambda ctx: CompressionState(_mlp(), method, lgreco=lgreco, **opts)


def _co2(**opts):
    from distcomp.co2 import CO2
    return lambda ctx: CO2(torch.optim.SGD(_mlp().parameters(), lr=0.1), _mlp(), **opts)


class _Tied(nn.Module):
    """Input embedding and output projection share one weight (a language model's usual tie)."""

    def __init__(self):
        super().__init__()
        self.emb = nn.Embedding(10, 8)
        self.out = nn.Linear(8, 10, bias=False)
        self.out.weight = self.emb.weight

    def forward(self, x):
        return self.out(torch.tanh(self.emb(x)))


class _Branches(nn.Module):
    """Rank 0 also runs ``extra``: its gradient is None on rank 1 only."""

    def __init__(self):
        super().__init__()
        self.body, self.extra = nn.Linear(8, 4), nn.Linear(8, 4)

    def forward(self, x):
        y = self.body(x)
        return y + self.extra(x) if dist.get_rank() == 0 else y


class _Complex(nn.Module):
    def __init__(self):
        super().__init__()
        self.w = nn.Parameter(torch.randn(8, 8, dtype=torch.complex64))

    def forward(self, x):
        return (x.to(torch.complex64) @ self.w).abs()


def _frozen() -> nn.Module:
    m = _mlp()
    m[0].requires_grad_(False)
    return m


def _train(build, method: str | None, inputs, steps: int = 3, **opts) -> torch.Tensor:
    """``steps`` SGD steps of DDP(build()) with distcomp's hook (or DDP's own all-reduce when
    ``method`` is None); the flat parameters after them."""
    from torch.nn.parallel import DistributedDataParallel as DDP

    from distcomp.hooks.ddp import CompressionState, compression_hook

    torch.manual_seed(0)
    model = build()
    ddp = DDP(model, find_unused_parameters=isinstance(model, _Branches))
    if method is not None:
        ddp.register_comm_hook(CompressionState(ddp, method, **opts), compression_hook)
    opt = torch.optim.SGD([p for p in ddp.parameters() if p.requires_grad], lr=0.1)
    for step in range(steps):
        out = ddp(inputs(step))
        out.float().pow(2).mean().backward()
        opt.step()
        opt.zero_grad()
    return torch.cat([p.detach().float().reshape(-1) for p in model.parameters()])


def _works_like_ddp(build, inputs) -> Callable[[Ctx], None]:
    """PowerSGD trains to finite weights identical on every rank, and an exact setting (top-k
    keeping every entry is sent dense) ends where DDP's own all-reduce ends."""
    def act(ctx: Ctx) -> None:
        lowrank = _train(build, "powersgd", inputs, rank=2)
        assert torch.isfinite(lowrank).all(), "PowerSGD produced non-finite weights"
        every = [torch.empty_like(lowrank) for _ in range(ctx.world)]
        dist.all_gather(every, lowrank)
        assert all(torch.equal(every[0], e) for e in every), "ranks diverged"
        exact, plain = _train(build, "topk", inputs, density=1.0), _train(build, None, inputs)
        torch.testing.assert_close(exact, plain, rtol=1e-2, atol=1e-3)
    return act


def _floats(dtype: torch.dtype = torch.float32):
    return lambda step: torch.randn(6, 8, generator=torch.Generator().manual_seed(
        100 * dist.get_rank() + step)).to(dtype)


def _tokens(step: int) -> torch.Tensor:
    return torch.randint(0, 10, (6,), generator=torch.Generator().manual_seed(
        100 * dist.get_rank() + step))


def _sparse() -> nn.Module:
    return nn.Sequential(nn.Embedding(10, 8, sparse=True), nn.Linear(8, 4))


def _ddp_state(build) -> Callable[[Ctx], None]:
    def act(ctx: Ctx) -> None:
        from torch.nn.parallel import DistributedDataParallel as DDP

        from distcomp.hooks.ddp import CompressionState
        CompressionState(DDP(build()), "powersgd")
    return act


HOOK_CASES = [
    Case("powersgd-rank-zero", "hooks", "error", _state(rank=0), "rank"),
    Case("powersgd-rank-fraction", "hooks", "error", _state(rank=2.5), "rank"),
    Case("topk-density-zero", "hooks", "error", _state("topk", density=0.0), "density"),
    Case("topk-density-above-one", "hooks", "error", _state("topk", density=1.5), "density"),
    Case("qsgd-bits-unsupported", "hooks", "error", _state("qsgd", bits=9), "bits"),
    Case("unknown-method", "hooks", "error", _state("no-such-method"), "method"),
    Case("misspelt-option", "hooks", "error", _state(rnak=4), "rnak"),
    Case("timeout-not-positive", "hooks", "error", _state(timeout_s=0), "timeout_s"),
    Case("error-feedback-not-bool", "hooks", "error", _state(error_feedback="yes"),
         "error_feedback"),
    Case("lgreco-period-zero", "lgreco", "error", _state(lgreco={"period": 0}), "period"),
    Case("lgreco-unknown-option", "lgreco", "error", _state(lgreco={"budget": 2}), "budget"),
    Case("co2-tau-zero", "co2", "error", _co2(tau=0), "tau"),
    Case("co2-momentum-one", "co2", "error", _co2(outer_momentum=1.0), "outer_momentum"),
    Case("co2-wire-dtype", "co2", "error", _co2(wire_dtype="int8"), "wire_dtype"),
    Case("co2-negative-clip", "co2", "error", _co2(clip_norm=-1.0), "clip_norm"),
    Case("tied-weights", "model", "works", _works_like_ddp(_Tied, _tokens), ranks=2),
    Case("frozen-layers", "model", "works", _works_like_ddp(_frozen, _floats()), ranks=2),
    Case("grad-none-on-one-rank", "model", "works", _works_like_ddp(_Branches, _floats()),
         ranks=2),
    Case("half-parameters", "model", "works",
         _works_like_ddp(lambda: _mlp(torch.float16), _floats(torch.float16)), ranks=2),
    Case("bfloat16-parameters", "model", "works",
         _works_like_ddp(lambda: _mlp(torch.bfloat16), _floats(torch.bfloat16)), ranks=2),
    Case("sparse-gradients", "model", "error", _ddp_state(_sparse), "sparse"),
    Case("complex-parameters", "model", "error", _ddp_state(_Complex), "complex"),
]


# -- GNN pipeline ---------------------------------------------------------------------------

def _graph(edges: np.ndarray, n: int = 60, masks: int | None = None):
    from distcomp.gnn.graph import make_graph

    rng = np.random.default_rng(0)
    train = np.zeros(n, bool)
    train[: n // 2] = True
    m = masks or n
    return make_graph(rng.normal(size=(n, 5)).astype(np.float32), rng.integers(0, 3, n),
                      edges, train[:m], ~train[:m], ~train[:m])


def _ring(n: int = 60) -> np.ndarray:
    return np.stack([np.arange(n), (np.arange(n) + 1) % n])


def _pipeline(edges: np.ndarray, layers: int = 2, chunks: int = 2) -> Callable[[Ctx], None]:
    def act(ctx: Ctx) -> None:
        from distcomp.gnn.layers import deep_gcn
        from distcomp.gnn.pipeline import GNNPipe

        graph = _graph(edges)
        torch.manual_seed(0)
        pipe = GNNPipe(deep_gcn(5, 8, graph.num_classes, layers), graph, num_chunks=chunks,
                       timeout_s=30)
        opt = torch.optim.Adam(pipe.parameters(), lr=0.01)
        losses = [pipe.train_epoch(opt) for _ in range(3)]
        assert all(np.isfinite(losses)), losses
        acc = pipe.evaluate()
        assert all(0.0 <= v <= 1.0 for v in acc.values()), acc
    return act


def _make_graph(edges, n: int = 60, masks: int | None = None) -> Callable[[Ctx], None]:
    return lambda ctx: _graph(np.asarray(edges), n, masks)


_isolated = _ring(40)  # vertices 40..59 have no edge at all
_loops = np.concatenate([_ring(), np.stack([np.arange(60), np.arange(60)])], axis=1)

GNN_CASES = [
    Case("edge-index-out-of-range", "gnn", "error", _make_graph([[0, 1], [1, 60]]), "[0, 60)",
         group=False),
    Case("edge-index-negative", "gnn", "error", _make_graph([[0, -1], [1, 2]]), "[0, 60)",
         group=False),
    Case("edge-index-wrong-shape", "gnn", "error", _make_graph([[0, 1, 2]]), "edge_index",
         group=False),
    Case("mask-wrong-length", "gnn", "error", _make_graph(_ring(), masks=50), "train_mask",
         group=False),
    Case("self-loops", "gnn", "works", _pipeline(_loops), ranks=2),
    Case("isolated-nodes", "gnn", "works", _pipeline(_isolated), ranks=2),
    Case("more-stages-than-layers", "gnn", "error", _pipeline(_ring(), layers=1),
         "more stages", ranks=2),
    Case("more-chunks-than-vertices", "gnn", "error", _pipeline(_ring(), chunks=100),
         "num_chunks", ranks=2),
]


# -- checkpoints and the launch script ------------------------------------------------------

def _checkpoints(ctx: Ctx) -> None:
    from distcomp.checkpoint import save_rank

    for step in (10, 20):
        save_rank(ctx.work / "ckpt", step, 0, 1, {"step": step})
    newest = ctx.work / "ckpt" / "ckpt20-rank0.pt"
    newest.write_bytes(newest.read_bytes()[:-7])


def _falls_back(ctx: Ctx) -> None:
    from distcomp.checkpoint import latest, load_rank

    index = latest(ctx.work / "ckpt", 1)
    assert index == 10 and load_rank(ctx.work / "ckpt", index, 0) == {"step": 10}, index


def _launch(*argv) -> Callable[[Ctx], None]:
    def act(ctx: Ctx) -> None:
        proc = subprocess.run([sys.executable, str(ROOT / "launch" / "train.py"), *argv],
                              capture_output=True, text=True, timeout=120, cwd=ctx.work,
                              env={"OMP_NUM_THREADS": "1", "PATH": "/usr/bin:/bin",
                                   "PYTHONPATH": str(ROOT), "RANK": "0", "WORLD_SIZE": "1",
                                   "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": "1"})
        if proc.returncode:
            raise ExitStatus(proc.returncode, proc.stderr)
    return act


OTHER_CASES = [
    Case("checkpoint-cut-short", "checkpoint", "works", _falls_back, setup=_checkpoints,
         group=False),
    Case("checkpoint-other-world-size", "checkpoint", "error",
         lambda ctx: __import__("distcomp.checkpoint").checkpoint.latest(ctx.work / "ckpt", 2),
         "made by 1 ranks", setup=_checkpoints, group=False),
    Case("train-script-tau-zero", "launch", "error", _launch("--comm", "co2", "--tau", "0"),
         "tau", group=False),
]

CASES = HOOK_CASES + GNN_CASES + DATA_CASES + OTHER_CASES
