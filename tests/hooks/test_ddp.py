"""The compression hook on real 2-rank gloo process groups, compared with plain DDP."""

from __future__ import annotations

import copy
import math

import pytest
import torch
import torch.distributed as dist
from torch import nn
from torch.nn import functional as F
from torch.nn.parallel import DistributedDataParallel as DDP

from distcomp.hooks import CompressionState, LGreCoState, compression_hook
from tests.models import ConvNet, Teacher, convnet_batch, convnet_steps, mlp
from tests.multiproc import outcome, run_ranks
from tests.resume import resume_matches

# the method alone: no dense warm-up, no Accordion schedule (tested on their own below)
RAW = {"warmup_steps": 0, "accordion": False}
LOSSLESS = {"powersgd": {"rank": 1000, **RAW}, "topk": {"density": 1.0, **RAW},
            "qsgd": {"bits": 32, **RAW}}
LOSSY = {"powersgd": {"rank": 2, **RAW}, "topk": {"density": 0.05, **RAW},
         "qsgd": {"bits": 4, **RAW}}
# every option that keeps state between steps: warm-up, Accordion (decisions at steps 3, 6,
# 9), top-k's momentum correction and density warm-up
ADAPTIVE = {"powersgd": {"rank": 2, "warmup_steps": 2, "accordion_interval": 3},
            "topk": {"density": 0.05, "momentum": 0.9, "density_warmup_steps": 4,
                     "warmup_steps": 2, "accordion_interval": 3},
            "qsgd": {"bits": 4, "warmup_steps": 2, "accordion_interval": 3}}


def _ddp(model, **kw):
    return DDP(model, bucket_cap_mb=0.01, find_unused_parameters=True, **kw)  # many buckets


def _grads(model):
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


def _lossless_vs_ddp(rank, world):
    """Max |grad difference| to plain DDP per method over 3 steps + a no_sync accumulation."""
    out = {}
    for method, setting in LOSSLESS.items():
        torch.manual_seed(0)
        ref = _ddp(ConvNet())
        torch.manual_seed(0)
        hooked = _ddp(ConvNet())
        state = CompressionState(hooked, method, min_compression_rate=0.0, **setting)
        hooked.register_comm_hook(state, compression_hook)
        opts = [torch.optim.SGD(m.parameters(), lr=0.1) for m in (ref, hooked)]
        worst = 0.0
        for step in range(4):
            for m, opt in zip((ref, hooked), opts):
                opt.zero_grad()
                if step == 3:  # gradient accumulation: first micro-batch without sync
                    xa, ya = convnet_batch(rank, 99)
                    with m.no_sync():
                        F.cross_entropy(m(xa), ya).backward()
                x, y = convnet_batch(rank, step)
                F.cross_entropy(m(x), y).backward()
            g_ref, g_hook = _grads(ref), _grads(hooked)
            assert g_ref.keys() == g_hook.keys()
            worst = max(worst, max(float((g_ref[k] - g_hook[k]).abs().max()) for k in g_ref))
            for opt in opts:
                opt.step()
        out[method] = {
            "max_diff": worst,
            "collectives": dict(state.ledger.per_collective),
            "steps": state.step,
            "frozen_in_ledger": "frozen" in state.ledger.per_key,
            "conv_bytes": state.ledger.per_key["conv.weight"],
        }
    return out


def test_lossless_settings_match_plain_ddp():
    res = run_ranks(_lossless_vs_ddp)
    for r in res:
        for method, rec in r.items():
            assert rec["max_diff"] < 1e-5, (method, rec)
            assert rec["steps"] == 4  # the no_sync backward called no hook
            assert not rec["frozen_in_ledger"]
        assert r["topk"]["collectives"].get("allgather", 0) > 0
        assert r["qsgd"]["collectives"].get("allgather", 0) > 0
        # conv weight (8, 2, 3) -> (8, 6), rank capped at 6: 4 * 6 * (8 + 6) bytes a step
        assert r["powersgd"]["conv_bytes"] == 4 * 4 * 6 * (8 + 6)


# -- byte ledger -------------------------------------------------------------------------------
def _ledger(rank, world):
    out = {}
    for method, setting in LOSSY.items():
        torch.manual_seed(0)
        model = DDP(nn.Sequential(nn.Linear(32, 64), nn.ReLU(), nn.Linear(64, 10)))
        state = CompressionState(model, method, **setting)
        model.register_comm_hook(state, compression_hook)
        for _ in range(3):
            x = torch.randn(8, 32)
            model(x).sum().backward()
        out[method] = [state.ledger.step_bytes(s) for s in range(3)]
    return out


def _analytic_bytes(method):
    """Bytes per step of Linear(32, 64) + Linear(64, 10), one bucket, written out by hand."""
    biases = 4 * (64 + 10)
    flag = 4
    if method == "powersgd":  # 4 r (n + m) per weight, r = 2
        return 4 * 2 * (64 + 32) + 4 * 2 * (10 + 64) + biases + flag
    if method == "topk":  # 8 bytes per kept entry, k = round(0.05 n)
        return 8 * round(0.05 * 64 * 32) + 8 * round(0.05 * 10 * 64) + biases + flag
    # qsgd, 4 bits, buckets of 128: one fp32 scale per bucket + packed codes
    return sum(4 * math.ceil(n / 128) + n * 4 // 8 for n in (2048, 640)) + biases + flag


def test_byte_ledger_equals_analytic_count():
    for r in run_ranks(_ledger):
        for method, per_step in r.items():
            assert per_step == [_analytic_bytes(method)] * 3, method


# -- error feedback ----------------------------------------------------------------------------
def _ef_tracking(rank, world, steps=150):
    """Feed the same biased-towards-a-direction gradients with and without error feedback."""
    from distcomp import CompressedReducer, CompressionConfig
    from distcomp.comm import TorchComm

    comm = TorchComm()
    out = {}
    for method, setting in LOSSY.items():
        for ef in (True, False):
            red = CompressedReducer(CompressionConfig(method, error_feedback=ef, **setting), rank)
            gen = torch.Generator().manual_seed(rank)
            base = torch.randn(48, 40, generator=torch.Generator().manual_seed(7))
            true_sum = torch.zeros(48, 40)
            hat_sum = torch.zeros(48, 40)
            worst_res = 0.0
            for t in range(steps):
                g = base + 0.5 * torch.randn(48, 40, generator=gen)
                avg = g.clone()
                dist.all_reduce(avg)
                true_sum += avg / world
                red.reduce([g], ["w"], comm, t)
                hat_sum += g
                if ef:
                    worst_res = max(worst_res, float(red.residuals["w"].norm() / base.norm()))
                if t + 1 == steps // 3:
                    early_gap = float((true_sum - hat_sum).norm() / base.norm())
            mean_res = red.residuals["w"].clone() if ef else torch.zeros(48, 40)
            dist.all_reduce(mean_res)
            out[(method, ef)] = {
                "early_gap": early_gap,
                "gap": float((true_sum - hat_sum).norm() / base.norm()),
                "identity": float((true_sum - hat_sum - mean_res / world).norm() / base.norm()),
                "worst_res": worst_res,
            }
    return out


def test_error_feedback_tracks_the_true_gradient_sum():
    res = run_ranks(_ef_tracking)[0]
    for method in LOSSY:
        on, off = res[(method, True)], res[(method, False)]
        # sum of true averages - sum of decompressed averages = mean residual, exactly
        assert on["identity"] < 1e-3, (method, on)
        # the gap stays bounded: it does not grow from step 50 to step 150 ...
        assert on["gap"] < 1.2 * on["early_gap"] + 0.5 and on["worst_res"] < 20, (method, on)
        if method != "qsgd":  # ... while a biased compressor without memory drifts linearly
            assert off["gap"] > 2.5 * off["early_gap"] and off["gap"] > 5 * on["gap"], (on, off)


# -- convergence -------------------------------------------------------------------------------
def _train(rank, world, steps=300):
    teacher = Teacher()
    xe, ye = teacher.batch(seed=10**6, n=2048)
    out = {}
    for method, setting in [("allreduce", {})] + list(LOSSY.items()):
        torch.manual_seed(0)
        model = DDP(mlp())
        if method != "allreduce":
            state = CompressionState(model, method, **setting)
            model.register_comm_hook(state, compression_hook)
        opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
        for step in range(steps):
            x, y = teacher.batch(seed=step * world + rank, n=64)
            opt.zero_grad()
            F.cross_entropy(model(x), y).backward()
            opt.step()
        with torch.no_grad():
            out[method] = float(F.cross_entropy(model.module(xe), ye))
    return out


def test_training_with_each_compressor_gets_close_to_plain_ddp():
    res = run_ranks(_train, timeout_s=300)[0]
    ref = res["allreduce"]
    assert ref < 1.0, res  # the task is learnable at all
    for method in LOSSY:
        assert res[method] <= 1.10 * ref, res


# -- checkpointing -----------------------------------------------------------------------------
def _make(method, setting):
    torch.manual_seed(0)
    model = _ddp(ConvNet())
    state = CompressionState(model, method, **setting)
    model.register_comm_hook(state, compression_hook)
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    return model, state, opt


def _resume(rank, world, options):
    out = {}
    for method, setting in options.items():
        same, state, _ = resume_matches(
            lambda m=method, s=setting: _make(m, s),
            lambda model, opt, start, n: convnet_steps(model, opt, rank, start, n), split=5, more=5,
        )
        out[method] = same
        out[method + "_residuals"] = len(state.reducer.residuals)
        acc = state.reducer.accordion
        out[method + "_decided"] = acc is None or len(acc.norms) > 0
    return out


@pytest.mark.parametrize("options", [LOSSY, ADAPTIVE], ids=["raw", "adaptive"])
def test_state_dict_resume_is_bit_identical(options):
    for r in run_ranks(_resume, options=options):
        for method in options:
            assert r[method], method
            assert r[method + "_residuals"] > 0
            assert r[method + "_decided"]


def test_state_dict_rejects_other_settings():
    from distcomp import CompressedReducer, CompressionConfig

    a = CompressedReducer(CompressionConfig("topk"))
    b = CompressedReducer(CompressionConfig("qsgd"))
    with pytest.raises(ValueError, match="method"):
        b.load_state_dict(a.state_dict())
    c = CompressedReducer(CompressionConfig("topk", seed=1))
    with pytest.raises(ValueError, match="seed"):
        c.load_state_dict(a.state_dict())
    CompressedReducer(CompressionConfig("topk", timeout_s=5)).load_state_dict(a.state_dict())


# -- bad input ---------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "method,options,match",
    [
        ("powersgd", {"rank": 0}, "rank"),
        ("powersgd", {"rank": 2.5}, "rank"),
        ("topk", {"density": 0.0}, "density"),
        ("topk", {"density": 1.5}, "density"),
        ("qsgd", {"bits": 1}, "bits"),
        ("qsgd", {"bits": 12}, "bits"),
        ("qsgd", {"qsgd_bucket_size": 0}, "bucket_size"),
        ("qsgd", {"qsgd_norm": "linf"}, "norm"),
        ("no-such-method", {}, "method"),
        ("topk", {"timeout_s": 0}, "timeout_s"),
        ("topk", {"warmup_steps": -1}, "warmup_steps"),
        ("topk", {"densty": 0.1}, "densty"),
        ("powersgd", {"momentum": 0.9}, "momentum applies to method"),
        ("topk", {"momentum": 1.0}, "momentum"),
        ("topk", {"momentum": 0.9, "error_feedback": False}, "error_feedback"),
        ("qsgd", {"density_warmup_steps": 10}, "density_warmup_steps"),
        ("topk", {"density_warmup_steps": -1}, "density_warmup_steps"),
        ("topk", {"accordion": "yes"}, "accordion"),
        ("topk", {"accordion_interval": 0}, "accordion_interval"),
        ("topk", {"accordion_threshold": 0.0}, "accordion_threshold"),
        ("powersgd", {"accordion_gentle": 2}, "accordion_gentle"),
        ("qsgd", {"accordion_gentle": 12}, "bits"),
    ],
)
def test_bad_settings_raise_before_any_communication(method, options, match):
    assert not dist.is_initialized()  # nothing to communicate with: validation comes first
    with pytest.raises(ValueError, match=match):
        CompressionState(nn.Linear(4, 4), method, **options)


def _nonfinite(rank, world):
    out = {}
    for method, setting in LOSSY.items():
        model, state, _ = _make(method, setting)
        opt = torch.optim.SGD(model.parameters(), lr=0.05)
        scaler = torch.amp.GradScaler("cpu", init_scale=2.0**4)
        convnet_steps(model, opt, rank, 0, 2)  # residuals are non-zero now
        before = {k: v.clone() for k, v in state.reducer.residuals.items()}
        qs_before = {k: v.clone() for k, v in state.reducer.memory.items()}
        params_before = copy.deepcopy(model.module.state_dict())
        x, y = convnet_batch(rank, 2)
        loss = F.cross_entropy(model(x), y)
        if rank == 0:
            loss = loss * float("nan")
        opt.zero_grad()
        scaler.scale(loss).backward()
        grads_nonfinite = all(not torch.isfinite(p.grad).all() for p in
                              [model.module.fc1.weight, model.module.conv.weight])
        scaler.step(opt)
        scaler.update()
        after = state.reducer.residuals
        out[method] = {
            "grads_nonfinite": grads_nonfinite,
            "residuals_kept": before.keys() == after.keys()
            and all(torch.equal(before[k], after[k]) for k in before),
            "qs_kept": all(torch.equal(qs_before[k], state.reducer.memory[k]) for k in qs_before),
            "step_skipped": all(torch.equal(params_before[k], v)
                                for k, v in model.module.state_dict().items()),
            "fallbacks": state.reducer.nonfinite_buckets,
        }
        convnet_steps(model, opt, rank, 3, 1)
        out[method]["recovered"] = all(torch.isfinite(p).all() for p in model.parameters())
    return out


def test_nonfinite_gradient_falls_back_and_leaves_residual_unchanged():
    for r in run_ranks(_nonfinite):
        for method, rec in r.items():
            assert all(rec.values()), (method, rec)
            assert rec["fallbacks"] >= 1  # every bucket holding a compressed tensor


# -- timeouts ----------------------------------------------------------------------------------
def _silent_peer(rank, world):
    import time

    torch.manual_seed(0)
    model = DDP(nn.Sequential(nn.Linear(64, 64), nn.Linear(64, 4)))
    state = CompressionState(model, "powersgd", rank=2, timeout_s=2.0)
    model.register_comm_hook(state, compression_hook)
    for _ in range(2):  # good steps; DDP's own bucket rebuild (a collective) happens in step 2
        model(torch.randn(4, 64)).sum().backward()
    if rank == 1:
        time.sleep(8)  # alive, but never joins the next collective
        return {"error": None}
    return outcome(lambda: model(torch.randn(4, 64)).sum().backward())


def test_a_silent_peer_becomes_an_error_not_a_hang():
    r0 = run_ranks(_silent_peer, timeout_s=60)[0]
    assert r0["error"] is not None and "timed out" in r0["error"], r0
    assert r0["seconds"] < 10, r0


def _configured_per_rank(rank, world):
    """One state per case, each rank with its own setting; the error each rank raised."""
    cases = {
        "powersgd rank": (CompressionState, {"method": "powersgd", "rank": 4 + 4 * rank}),
        "lgreco budget": (LGreCoState, {"method": "topk", "lgreco": {"alpha": 1.0 + rank}}),
        "model": (CompressionState, {"method": "qsgd"}),
    }
    errors = {}
    for name, (kind, options) in cases.items():
        model = nn.Linear(8, 8 + rank) if name == "model" else nn.Linear(8, 8)
        method = options.pop("method")
        errors[name] = outcome(lambda k=kind, m=model, a=method, o=options: k(m, a, **o))["error"]
    return errors


def test_ranks_configured_differently_get_the_same_clear_error():
    """Detected when the state is built (one 32-byte all-gather), identically on every rank,
    naming the field and each rank's value: never a hang or a silently wrong average."""
    r0, r1 = run_ranks(_configured_per_rank)
    assert r0 == r1
    assert "ranks were configured differently (rank: rank 0=4, rank 1=8)" in r0["powersgd rank"]
    assert "lgreco.alpha: rank 0=1.0, rank 1=2.0" in r0["lgreco budget"]
    assert r0["model"].startswith("ValueError: CompressionState: ranks were configured "
                                  "differently (parameters: rank 0=")
