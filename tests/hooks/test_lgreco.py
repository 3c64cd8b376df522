"""L-GreCo on real 2-rank gloo process groups: identical plans, budget kept, exact resume."""

from __future__ import annotations

import pytest
import torch
import torch.distributed as dist
from torch import nn
from torch.nn import functional as F
from torch.nn.parallel import DistributedDataParallel as DDP

from distcomp.hooks import LGreCoState, lgreco_hook
from tests.models import Teacher
from tests.multiproc import run_ranks
from tests.resume import resume_matches

RAW = {"warmup_steps": 0, "accordion": False}  # the planner alone, against the uniform setting
SETTINGS = {"powersgd": {"rank": 4}, "topk": {"density": 0.02}, "qsgd": {"bits": 4}}
PLAN = {"warmup_steps": 3, "period": 4, "window": 2}
# with the Accordion schedule deciding every 2 steps: the baseline the plans are held to
ACCORDION = {"warmup_steps": 0, "accordion_interval": 2}


def _model():
    # layers of very different shapes, so the best per-layer settings differ
    return nn.Sequential(nn.Linear(32, 256), nn.ReLU(), nn.Linear(256, 256), nn.ReLU(),
                         nn.Linear(256, 64), nn.ReLU(), nn.Linear(64, 10))


def _make(method, extra=None):
    torch.manual_seed(0)
    model = DDP(_model(), bucket_cap_mb=0.1)
    state = LGreCoState(model, method, lgreco=PLAN, **SETTINGS[method], **(extra or RAW))
    model.register_comm_hook(state, lgreco_hook)
    return model, state, torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)


def _steps(model, opt, rank, start, n):
    teacher = Teacher()
    for step in range(start, start + n):
        x, y = teacher.batch(seed=1000 * step + rank, n=32)  # different data on every rank
        opt.zero_grad()
        F.cross_entropy(model(x), y).backward()
        opt.step()


def _plans(rank, world):
    out = {}
    for method in SETTINGS:
        model, state, opt = _make(method)
        _steps(model, opt, rank, 0, 12)  # plans at steps 3, 7, 11
        lg = state.reducer.lgreco
        q_ranks = {k: q.shape[1] for k, q in state.reducer.memory.items()}
        out[method] = {
            "plans": [p["settings"] for p in lg.plans],
            "steps": [p["step"] for p in lg.plans],
            "totals": [(p["bytes"], p["error"], p["uniform_bytes"], p["uniform_error"])
                       for p in lg.plans],
            "rows": state.plan(),
            "settings": dict(state.reducer.settings),
            "q_ranks": q_ranks,
        }
    return out


def test_every_rank_adopts_the_same_plan_within_the_budget():
    """On 4 ranks (flat: no launcher says they share a node)."""
    r0, *others = run_ranks(_plans, world=4, timeout_s=240)
    for method in SETTINGS:
        a = r0[method]
        assert a["steps"] == [3, 7, 11]
        for b in others:  # identical although local gradients differ
            assert a["plans"] == b[method]["plans"], method
        for nbytes, err, u_bytes, u_err in a["totals"]:
            assert nbytes <= u_bytes and err <= u_err * (1 + 1e-9), (method, a["totals"])
        assert any(nbytes < u_bytes for nbytes, *_ in a["totals"]), method  # it does adapt
        rows = a["rows"]
        assert {r["name"] for r in rows} == set(a["plans"][-1])
        assert all({"name", "shape", "setting", "bytes", "error"} <= set(r) for r in rows)
        if method == "powersgd":  # warm-start Q follows each layer's new rank
            for key, r in a["settings"].items():
                assert a["q_ranks"][key] == min(r, *next(x["shape"] for x in rows
                                                         if x["name"] == key))


def _with_accordion(rank, world):
    out = {}
    for method in SETTINGS:
        model, state, opt = _make(method, ACCORDION)
        _steps(model, opt, rank, 0, 12)
        lg, acc = state.reducer.lgreco, state.reducer.accordion
        out[method] = {
            "plans": [(p["step"], p["settings"]) for p in lg.plans],
            "held": [p["error"] <= p["uniform_error"] * (1 + 1e-9) and
                     p["bytes"] <= p["uniform_bytes"] for p in lg.plans],
            "baselines": [sorted({r["uniform_setting"] for r in lg.rows})],
            "switches": acc.switches,
            "gentle": acc.gentle,
        }
    return out


def test_plans_follow_the_accordion_baseline_on_every_rank():
    """Measured at 3, 7, 11; chosen again whenever a regime changes, against each layer's
    regime setting (gentle or the user's), never above its error or bytes."""
    r0, r1 = run_ranks(_with_accordion, timeout_s=240)
    assert r0 == r1
    for method, rec in r0.items():
        steps = [step for step, _ in rec["plans"]]
        assert steps[:1] == [3] and {7, 11} <= set(steps), (method, steps)
        assert len(steps) > 3 or not rec["switches"], (method, steps, rec["switches"])
        assert all(rec["held"]), method


def _after_dense_warmup(rank, world):
    model, state, opt = _make("powersgd", {"warmup_steps": 6, "accordion": False})
    _steps(model, opt, rank, 0, 12)
    lg = state.reducer.lgreco
    return [p["step"] for p in lg.plans], dict(state.reducer.settings)


def _dense_layers(rank, world):
    # rank 8, and Accordion's first interval is critical: every layer gets the gentle rank 32,
    # at which Linear(32, 256) would not shrink, so it travels dense while being plannable
    torch.manual_seed(0)
    model = DDP(_model(), bucket_cap_mb=0.1)
    state = LGreCoState(model, "powersgd", lgreco=PLAN, rank=8, warmup_steps=0,
                        accordion_interval=100)
    model.register_comm_hook(state, lgreco_hook)
    _steps(model, torch.optim.SGD(model.parameters(), lr=0.05), rank, 0, 4)
    red = state.reducer
    gentle = red.accordion.gentle
    dense = {n for n, p in model.module.named_parameters() if red.eligible(p.shape) and
             not red.compressor.compresses(p.shape, gentle, red.config.min_compression_rate)}
    return dense, {k: list(zip(cs, errs, nbytes)) for k, (cs, errs, nbytes)
                   in red.lgreco.table.items()}


def test_a_layer_that_travels_dense_is_measured_not_taken_as_free():
    """Its compressing candidates carry their measured error (random gradients are full rank),
    so the plan pays for compressing it like any other layer (it once saw error 0 there)."""
    dense, table = run_ranks(_dense_layers, timeout_s=240)[0]
    assert "0.weight" in dense and dense <= set(table)
    for key, rows in table.items():
        full = max(nbytes for _, _, nbytes in rows)
        assert all(err > 0 for _, err, nbytes in rows if nbytes < full), (key, rows)


def test_a_plan_due_inside_the_dense_warmup_comes_when_it_ends():
    """L-GreCo's first plan (step 3) falls in 6 dense steps: it is made at step 6, from the
    raw gradients of steps 4-5, and the schedule continues from there."""
    r0, r1 = run_ranks(_after_dense_warmup, timeout_s=240)
    assert r0 == r1
    steps, settings = r0
    assert steps == [6, 10]
    assert set(settings.values()) != {SETTINGS["powersgd"]["rank"]}  # it planned, not uniform


def _resume(rank, world):
    out = {}
    for method in SETTINGS:
        # saved after step 5, mid-window of the plan at step 7
        same, _, resumed = resume_matches(
            lambda m=method: _make(m),
            lambda model, opt, start, n: _steps(model, opt, rank, start, n), split=6, more=6,
        )
        out[method] = (same, len(resumed.reducer.lgreco.plans))
    return out


def test_resume_mid_training_with_a_plan_is_bit_identical():
    for r in run_ranks(_resume, timeout_s=240):
        for method, (same, plans) in r.items():
            assert same, method
            assert plans == 3, method


def _resume_accordion(rank, world):
    return {method: resume_matches(
        lambda m=method: _make(m, ACCORDION),
        lambda model, opt, start, n: _steps(model, opt, rank, start, n), split=5, more=7)[0]
        for method in SETTINGS}


def test_resume_with_accordion_and_plans_is_bit_identical():
    for r in run_ranks(_resume_accordion, timeout_s=240):
        assert all(r.values()), r


@pytest.mark.parametrize(
    "lgreco,match",
    [
        ({"alpha": -1.0}, "alpha"),
        ({"gamma": 2.0, "beta": 1.0}, "beta"),
        ({"qsgd_bits": (9,)}, "qsgd_bits"),
        ({"window": 8, "warmup_steps": 2}, "warmup_steps"),
        ({"bins": 0}, "bins"),
        ({"perid": 3}, "perid"),
        ("often", "lgreco"),
    ],
)
def test_invalid_plans_raise_before_any_collective(lgreco, match):
    assert not dist.is_initialized()
    with pytest.raises((ValueError, TypeError), match=match):
        LGreCoState(nn.Linear(4, 4), "powersgd", lgreco=lgreco)
