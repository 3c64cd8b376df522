"""Short training runs of every compression method with every option that keeps state, whose
losses, bytes and final parameters were recorded before the compressor registry was refactored
(issue #35, at commit 4461c44): the refactor must not change what any method computes.

    python -m tests.distcomp.recorded_runs      # re-record tests/distcomp/recorded_runs.json

Only to re-record after a change that is *meant* to alter the numbers, saying so in its commit.
The runs use the public API only (``CompressionState``, ``LGreCoState``, ``CO2``), two gloo
ranks (four for the three-stage cases), a ConvNet in many small DDP buckets and momentum SGD.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from torch.nn import functional as F
from torch.nn.parallel import DistributedDataParallel as DDP

from tests.models import ConvNet, convnet_batch
from tests.multiproc import run_ranks

RECORD = Path(__file__).with_suffix(".json")
STEPS = 12
MOMENTUM = 0.9
# warm-up 2, Accordion decisions at steps 3, 6, 9, L-GreCo plans at 4 and 8
BASE = {"warmup_steps": 2, "accordion_interval": 3}
PLAN = {"warmup_steps": 4, "period": 4, "window": 2}
CASES = {
    "powersgd": ("powersgd", {"rank": 2, **BASE}, None),
    "powersgd-fixed": ("powersgd", {"rank": 3, "warmup_steps": 1, "accordion": False}, None),
    "powersgd-rate0": ("powersgd", {"rank": 1, "min_compression_rate": 0.0, **BASE}, None),
    "topk": ("topk", {"density": 0.05, "momentum": MOMENTUM, "density_warmup_steps": 4, **BASE},
             None),
    "topk-plain": ("topk", {"density": 0.1, "accordion_gentle": 0.2, **BASE}, None),
    "topk-no-ef": ("topk", {"density": 0.2, "error_feedback": False, **BASE}, None),
    "qsgd": ("qsgd", {"bits": 4, **BASE}, None),
    "qsgd-l2": ("qsgd", {"bits": 3, "qsgd_norm": "l2", "qsgd_bucket_size": 32, **BASE}, None),
    "lgreco-powersgd": ("powersgd", {"rank": 2, **BASE}, PLAN),
    "lgreco-topk": ("topk", {"density": 0.05, "momentum": MOMENTUM, **BASE}, PLAN),
    "lgreco-qsgd": ("qsgd", {"bits": 4, **BASE}, {**PLAN, "error_measure": "relative"}),
    "lgreco-powersgd-fixed": ("powersgd", {"rank": 4, "warmup_steps": 2, "accordion": False},
                              {**PLAN, "error_measure": "layer_sum", "gamma": 0.25}),
}
# four ranks as two nodes of two: dense inside the node, compressed between
NODE_CASES = {
    "node-powersgd": ("powersgd", {"rank": 2, **BASE}, None),
    "node-topk": ("topk", {"density": 0.05, "momentum": MOMENTUM, **BASE}, PLAN),
}
CO2_CASES = {
    "co2-qsgd": {"tau": 2, "compression": {"method": "qsgd", "bits": 8, "warmup_steps": 0,
                                           "accordion": False}},
    "co2-powersgd-lgreco": {"tau": 2, "compression": {"method": "powersgd", "rank": 2,
                                                      "warmup_steps": 1},
                            "lgreco": {"warmup_steps": 2, "period": 2, "window": 1}},
}


def _train(rank: int, model: DDP, opt, state) -> dict:
    losses = []
    for step in range(STEPS):
        x, y = convnet_batch(rank, step)
        opt.zero_grad()
        loss = F.cross_entropy(model(x), y)
        loss.backward()
        opt.step()
        losses.append(loss.item())
    if hasattr(opt, "synchronize"):
        opt.synchronize()
    book = state.ledger
    out = {"losses": losses,
           "bytes": [book.step_bytes(s) for s in range(STEPS)],
           "checksum": float(sum(p.detach().double().sum() for p in model.parameters()))}
    lgreco = getattr(getattr(state, "reducer", None), "lgreco", None)
    if lgreco is not None:
        out["plans"] = [{"step": p["step"], "settings": p["settings"]} for p in lgreco.plans]
    state.close()
    return out


def _hook_cases(rank: int, world: int, cases: dict, ranks_per_node: int | None = None) -> dict:
    from distcomp.hooks import CompressionState, LGreCoState, compression_hook

    out = {}
    for name, (method, options, plan) in cases.items():
        torch.manual_seed(0)
        model = DDP(ConvNet(), bucket_cap_mb=0.01, find_unused_parameters=True)
        topo = {} if ranks_per_node is None else {"ranks_per_node": ranks_per_node}
        if plan is None:
            state = CompressionState(model, method, **options, **topo)
        else:
            state = LGreCoState(model, method, lgreco=plan, **options, **topo)
        model.register_comm_hook(state, compression_hook)
        opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=MOMENTUM)
        out[name] = _train(rank, model, opt, state)
    return out


def _co2_cases(rank: int, world: int) -> dict:
    from distcomp.co2 import CO2
    from distcomp.hooks import local_hook

    out = {}
    for name, options in CO2_CASES.items():
        torch.manual_seed(0)
        model = DDP(ConvNet(), find_unused_parameters=True)
        model.register_comm_hook(None, local_hook)
        trainable = [p for p in model.parameters() if p.requires_grad]
        inner = torch.optim.SGD(trainable, lr=0.05, momentum=MOMENTUM)
        opt = CO2(inner, model, **options)
        out[name] = _train(rank, model, opt, opt)
    return out


def run_all() -> dict:
    """Every case, each rank's record (by case name, a list over ranks)."""
    runs = {}
    for cases, fn, world, kw in ((CASES, _hook_cases, 2, {"cases": CASES}),
                                 (NODE_CASES, _hook_cases, 4,
                                  {"cases": NODE_CASES, "ranks_per_node": 2}),
                                 (CO2_CASES, _co2_cases, 2, {})):
        by_rank = run_ranks(fn, world=world, timeout_s=300, **kw)
        for name in cases:
            runs[name] = [r[name] for r in by_rank]
    return runs


if __name__ == "__main__":
    RECORD.write_text(json.dumps(run_all(), indent=1) + "\n")
    print(f"recorded {RECORD}")
