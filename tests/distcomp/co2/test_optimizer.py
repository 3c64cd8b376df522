"""CO2 on real gloo ranks: reduction to DDP, identical anchors, staleness, penalty, clipping,
exact resume, GradScaler agreement, ZeRO as the inner optimizer, compressed pseudo-gradients."""

from __future__ import annotations

import copy
import io
from dataclasses import asdict

import pytest
import torch
import torch.distributed as dist
from torch.nn import functional as F
from torch.nn.parallel import DistributedDataParallel as DDP

from distcomp.co2 import CO2, CO2Config
from distcomp.hooks import local_hook
from tests.models import Teacher, mlp
from tests.multiproc import outcome, run_ranks


def _batch(rank: int, step: int, n: int = 32):
    return Teacher().batch(seed=1000 * step + rank, n=n)  # different data on every rank


def _local_ddp(seed: int = 0) -> DDP:
    torch.manual_seed(seed)
    model = DDP(mlp())
    model.register_comm_hook(None, local_hook)
    return model


def _train(model, opt, rank, start, n, **step_kwargs):
    losses = []
    for step in range(start, start + n):
        x, y = _batch(rank, step)
        opt.zero_grad()
        loss = F.cross_entropy(model(x), y)
        loss.backward()
        opt.step(**step_kwargs)
        losses.append(float(loss.detach()))
    return losses


def _digests(co2: CO2) -> list[str]:
    out = [None] * dist.get_world_size()
    dist.all_gather_object(out, co2.anchor_digest())
    return out


@pytest.mark.parametrize(
    "options, match",
    [({"tau": 0}, "tau"), ({"outer_lr": 0.0}, "outer_lr"), ({"outer_lr": -0.1}, "outer_lr"),
     ({"outer_momentum": 1.0}, "outer_momentum"), ({"outer_momentum": -0.1}, "outer_momentum"),
     ({"tau": 2.5}, "tau"), ({"gap_penalty": -1.0}, "gap_penalty"), ({"clip_norm": 0.0},
     "clip_norm"), ({"overlap": "yes"}, "overlap"), ({"taus": 4}, "unknown CO2 options"),
     ({"timeout_s": float("nan")}, "timeout_s"), ({"wire_dtype": "int8"}, "wire_dtype")],
)
def test_invalid_options_raise_before_any_collective(options, match):
    model = mlp()  # no process group exists: a collective here would raise something else
    with pytest.raises(ValueError, match=match):
        CO2(torch.optim.SGD(model.parameters(), lr=0.1), model, **options)


def test_a_wire_dtype_together_with_a_compressor_is_refused():
    model = mlp()
    with pytest.raises(ValueError, match="wire_dtype"):
        CO2(torch.optim.SGD(model.parameters(), lr=0.1), model, wire_dtype="bfloat16",
            compression={"method": "qsgd", "bits": 8})


def test_foreign_parameters_are_refused():
    model, other = mlp(), mlp()
    with pytest.raises(ValueError, match="not the model's"):
        CO2(torch.optim.SGD(other.parameters(), lr=0.1), model)


def _vs_ddp(rank, world):
    torch.manual_seed(0)
    ddp = DDP(mlp())
    ref_opt = torch.optim.SGD(ddp.parameters(), lr=0.1)
    model = _local_ddp()
    co2 = CO2(torch.optim.SGD(model.parameters(), lr=0.1), model, tau=1, overlap=False,
              outer_lr=1.0, outer_momentum=0.0)
    _train(ddp, ref_opt, rank, 0, 8)
    _train(model, co2, rank, 0, 8)
    return max(float((a - b).abs().max()) for a, b in zip(ddp.parameters(), model.parameters()))


def test_tau_one_without_staleness_is_synchronous_sgd():
    for diff in run_ranks(_vs_ddp):
        assert diff < 1e-5


def _rounds(rank, world, compression=None, lgreco=None, wire_dtype="float32"):
    model = _local_ddp()
    co2 = CO2(torch.optim.AdamW(model.parameters(), lr=1e-2), model, tau=3, outer_momentum=0.5,
              nesterov=True, clip_norm=0.5, compression=compression, lgreco=lgreco,
              wire_dtype=wire_dtype)
    start = co2.anchor.clone()
    digests, params_after_round = [], []
    for r in range(5):
        _train(model, co2, rank, 3 * r, 3)
        digests.append(_digests(co2))
        params_after_round.append(torch.equal(torch.cat([p.detach().reshape(-1)
                                                          for p in model.parameters()]),
                                              co2.base))
        if r == 0:
            first_unchanged = torch.equal(co2.anchor, start)
    losses = _train(model, co2, rank, 15, 3)
    co2.synchronize()
    final = torch.cat([p.detach().reshape(-1) for p in model.parameters()])
    out = [None] * world
    dist.all_gather_object(out, final)
    return {"digests": digests, "reset": params_after_round, "first_unchanged": first_unchanged,
            "final_equal": all(torch.equal(out[0], o) for o in out), "rounds": co2.rounds,
            "moved": float((co2.anchor - start).norm()), "losses": losses,
            "bytes": co2.ledger.total, "numel": co2.anchor.numel(),
            "plans": [] if lgreco is None else [p["settings"] for p in co2.reducer.lgreco.plans]}


@pytest.mark.parametrize("compression, lgreco, wire_dtype", [
    (None, None, "float32"),
    (None, None, "bfloat16"),
    ({"method": "powersgd", "rank": 2, "warmup_steps": 0}, None, "float32"),
    ({"method": "powersgd", "rank": 2, "warmup_steps": 0},
     {"warmup_steps": 2, "period": 2, "window": 1}, "float32"),
])
def test_every_round_leaves_identical_anchors_one_round_stale(compression, lgreco, wire_dtype):
    r0, r1 = run_ranks(_rounds, compression=compression, lgreco=lgreco, wire_dtype=wire_dtype)
    for a in (r0, r1):
        assert all(len(set(d)) == 1 for d in a["digests"]), a["digests"]  # identical anchors
        assert all(a["reset"])  # each round starts at the anchor + own unaveraged progress
        assert a["first_unchanged"]  # round 1's average is still travelling after round 1
        assert a["final_equal"] and a["rounds"] == 6 and a["moved"] > 0
        assert a["bytes"] > 0
    assert r0["digests"] == r1["digests"]
    # plans at rounds 2, 4 and 6 (the average synchronize() launches counts as round 6)
    assert r0["plans"] == r1["plans"] and len(r0["plans"]) == (3 if lgreco else 0)
    if compression is None:  # 6 rounds + the final synchronize, 4 or 2 bytes per element
        width = 2 if wire_dtype == "bfloat16" else 4
        assert r0["bytes"] == 7 * width * r0["numel"]


def _feedback(rank, world, wire_dtype):
    model = _local_ddp()
    co2 = CO2(torch.optim.SGD(model.parameters(), lr=0.1), model, wire_dtype=wire_dtype)
    delta = torch.full_like(co2.anchor, 1e-3 * (1 + 2**-10))  # between two bf16 values
    sent = torch.zeros(delta.numel(), dtype=torch.float64)
    for _ in range(64):
        co2._launch(delta.clone())
        sent += co2._collect().double()
    return float((sent - 64 * delta.double()).abs().max()), float(delta[0])


def test_sixteen_bit_rounding_is_fed_back_instead_of_accumulating():
    # one rank: the average is what was sent; its running sum must track the true sum within
    # one rounding (error feedback), not drift by 64 roundings as plain casting would
    err, value = run_ranks(_feedback, world=1, wire_dtype="bfloat16")[0]
    one_rounding = abs(value - float(torch.tensor(value).to(torch.bfloat16)))
    assert 0 < one_rounding and err <= 1.01 * one_rounding, (err, one_rounding)
    exact, _ = run_ranks(_feedback, world=1, wire_dtype="float32")[0]
    assert exact < 1e-12


def _penalty(rank, world):
    model = _local_ddp()
    co2 = CO2(torch.optim.SGD(model.parameters(), lr=0.1), model, outer_momentum=0.0,
              gap_penalty=2.0)
    d = torch.randn(co2.anchor.numel(), generator=torch.Generator().manual_seed(0))
    steps = {}
    for name, prev in (("steady", d), ("orthogonal", torch.roll(d, 1)), ("reversed", -d)):
        before = co2.anchor.clone()
        co2.prev_avg = prev.clone()
        co2._apply(d.clone(), stale=True)
        steps[name] = float((co2.anchor - before).norm())
    fresh_before = co2.anchor.clone()
    co2.prev_avg = -d
    co2._apply(d.clone(), stale=False)  # a blocking round is not stale: no penalty
    steps["fresh"] = float((co2.anchor - fresh_before).norm())
    return steps, float(d.norm())


def test_penalty_shrinks_the_update_as_the_staleness_gap_grows():
    steps, norm = run_ranks(_penalty, world=1)[0]
    assert steps["steady"] == pytest.approx(norm, rel=1e-5)
    assert steps["steady"] > steps["orthogonal"] > steps["reversed"]
    assert steps["reversed"] == pytest.approx(norm / 3, rel=1e-5)  # gap 1: 1 / (1 + 2)
    assert steps["fresh"] == pytest.approx(norm, rel=1e-5)


def _clip(rank, world, clip_norm):
    model = _local_ddp()
    co2 = CO2(torch.optim.SGD(model.parameters(), lr=0.5), model, tau=2, outer_momentum=0.9,
              clip_norm=clip_norm)
    norms = []
    for r in range(6):
        _train(model, co2, rank, 2 * r, 2)
        norms.append(float(co2.momentum.norm()))
    return norms


def test_clipping_bounds_the_outer_momentum_norm():
    free = run_ranks(_clip, clip_norm=None)[0]
    bound = 0.25 * max(free)
    clipped = run_ranks(_clip, clip_norm=bound)[0]
    assert max(free) > bound  # unclipped momentum does exceed the bound ...
    assert all(n <= bound * (1 + 1e-5) for n in clipped)  # ... and the clip holds it there
    assert max(clipped) == pytest.approx(bound, rel=1e-5)


def _make(compression=None, **options):
    model = _local_ddp()
    return model, CO2(torch.optim.AdamW(model.parameters(), lr=1e-2), model, tau=3,
                      compression=compression, **options)


def _resume(rank, world, compression=None, **options):
    model, co2 = _make(compression, **options)
    _train(model, co2, rank, 0, 7)  # round 2 is in flight, mid-round 3
    buf = io.BytesIO()
    torch.save({"model": model.state_dict(), "co2": co2.state_dict()}, buf)
    _train(model, co2, rank, 7, 8)
    expected = copy.deepcopy(model.state_dict())
    model2, co2b = _make(compression, **options)
    buf.seek(0)
    ckpt = torch.load(buf, weights_only=False)
    model2.load_state_dict(ckpt["model"])
    co2b.load_state_dict(ckpt["co2"])
    _train(model2, co2b, rank, 7, 8)
    same = all(torch.equal(expected[k], v) for k, v in model2.state_dict().items())
    return same, torch.equal(co2.anchor, co2b.anchor), co2b.rounds


@pytest.mark.parametrize("compression, options", [
    (None, {}), (None, {"wire_dtype": "bfloat16"}), ({"method": "qsgd", "bits": 4}, {})])
def test_resume_with_a_round_in_flight_is_bit_identical(compression, options):
    for same, anchors, rounds in run_ranks(_resume, compression=compression, **options):
        assert same and anchors and rounds == 5


def _mismatch(rank, world):
    model, co2 = _make()
    state = co2.state_dict()
    other = CO2(torch.optim.AdamW(model.parameters(), lr=1e-2), model, tau=4)
    try:
        other.load_state_dict(state)
    except ValueError as err:
        return str(err)
    return None


def test_loading_a_checkpoint_of_another_schedule_is_refused():
    for msg in run_ranks(_mismatch):
        assert msg is not None and "tau=3" in msg


def _scaler(rank, world):
    model = _local_ddp()
    co2 = CO2(torch.optim.SGD(model.parameters(), lr=0.1), model, tau=2)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**10)
    record = []
    for step in range(6):
        x, y = _batch(rank, step)
        co2.zero_grad()
        loss = F.cross_entropy(model(x), y)
        if step == 2 and rank == 1:  # not a round boundary (those reset the parameters)
            loss = loss * float("inf")  # only rank 1 overflows
        before = [p.detach().clone() for p in model.parameters()]
        scaler.scale(loss).backward()
        co2.step(scaler=scaler)
        scaler.update()
        moved = any(not torch.equal(b, p) for b, p in zip(before, model.parameters()))
        record.append((moved, scaler.get_scale(), co2.steps))
    return record, co2.anchor_digest()


def test_a_gradscaler_overflow_on_one_rank_skips_the_step_on_every_rank():
    (r0, d0), (r1, d1) = run_ranks(_scaler)
    assert r0 == r1  # same skips, same scales, same step counters
    assert [m for m, _, _ in r0] == [True, True, False, True, True, True]
    assert r0[2][1] == r0[1][1] / 2  # the scale backed off once, on both ranks
    assert d0 == d1


def _zero(rank, world):
    from torch.distributed.optim import ZeroRedundancyOptimizer

    model = _local_ddp()
    inner = ZeroRedundancyOptimizer(model.parameters(), optimizer_class=torch.optim.AdamW,
                                    lr=3e-3)
    co2 = CO2(inner, model, tau=2)
    losses = _train(model, co2, rank, 0, 40)
    return _digests(co2), sum(losses[:5]) / 5, sum(losses[-5:]) / 5


def test_zero_redundancy_optimizer_as_the_inner_optimizer():
    for digests, first, last in run_ranks(_zero, timeout_s=240):
        assert len(set(digests)) == 1
        assert last < 0.8 * first


def test_config_round_trips():
    c = CO2Config(tau=4, clip_norm=1.0)
    assert CO2Config.from_dict(asdict(c)) == c


def _converge(rank, world, kind):
    if kind == "ddp":
        torch.manual_seed(0)
        model = DDP(mlp())
        opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    else:
        model = _local_ddp()
        opt = CO2(torch.optim.AdamW(model.parameters(), lr=3e-3), model, tau=4,
                  overlap=kind != "diloco",
                  wire_dtype="bfloat16" if kind == "co2_bf16" else "float32")
    losses = _train(model, opt, rank, 0, 60)
    return sum(losses[-10:]) / 10


def test_co2_and_diloco_train_about_as_well_as_ddp():
    ddp = run_ranks(_converge, kind="ddp")[0]
    for kind in ("co2", "co2_bf16", "diloco"):
        assert run_ranks(_converge, kind=kind)[0] < 1.15 * ddp, kind


def _single(rank, world):
    plain = _local_ddp()
    opt = torch.optim.AdamW(plain.parameters(), lr=3e-3)
    model = _local_ddp()
    co2 = CO2(torch.optim.AdamW(model.parameters(), lr=3e-3), model, tau=3, outer_momentum=0.0,
              gap_penalty=0.0)
    _train(plain, opt, rank, 0, 20)
    _train(model, co2, rank, 0, 20)
    return max(float((a - b).abs().max()) for a, b in zip(plain.parameters(),
                                                          model.parameters()))


def test_one_rank_overlapped_averaging_is_plain_training():
    # one rank, plain averaging: the one-round-late average must equal the progress it replaces,
    # so no step is lost or applied twice
    assert run_ranks(_single, world=1)[0] < 1e-6


def _silent_peer(rank, world):
    import time

    model = _local_ddp()
    co2 = CO2(torch.optim.SGD(model.parameters(), lr=0.1), model, tau=3, timeout_s=2.0)
    _train(model, co2, rank, 0, 3)  # round 1: both ranks launch its average
    if rank == 1:
        time.sleep(8)  # alive, but never launches round 2's average
        return {"error": None}
    return outcome(lambda: _train(model, co2, rank, 3, 9))  # round 2 launches; 3 waits for it


def test_a_silent_peer_fails_the_outer_round_instead_of_hanging():
    r0 = run_ranks(_silent_peer, timeout_s=60)[0]
    assert r0["error"] is not None and "CollectiveTimeout" in r0["error"], r0
    assert r0["seconds"] < 10, r0


def _tau_per_rank(rank, world):
    opt = torch.optim.SGD((model := _local_ddp()).parameters(), lr=0.1)
    return outcome(lambda: CO2(opt, model, tau=3 + rank))["error"]


def test_ranks_with_different_tau_get_the_same_clear_error():
    r0, r1 = run_ranks(_tau_per_rank)
    assert r0 == r1 and "CO2: ranks were configured differently (co2.tau: rank 0=3, " \
        "rank 1=4)" in r0
