"""A compression state's life: built before the process group (binding on the first hook call,
as Lightning needs), closed explicitly or as a context manager, and what it tells the user
(stats, repr, logs, warnings on ignored options)."""

from __future__ import annotations

import datetime
import logging
import os

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as tmp_mp
from torch.nn.parallel import DistributedDataParallel as DDP

from distcomp.hooks import CompressionState, LGreCoState, compression_hook
from tests.models import ConvNet, convnet_batch
from tests.multiproc import free_port, run_ranks

STEPS = 14  # past the 10 dense warm-up steps: the last ones compress


def _ddp(net: torch.nn.Module) -> DDP:
    return DDP(net, find_unused_parameters=True)  # ConvNet has a branch forward never uses


def _train(model: DDP, steps: int = STEPS) -> float:
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    rank = dist.get_rank()
    for step in range(steps):
        x, y = convnet_batch(rank, step)
        opt.zero_grad()
        torch.nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
    return float(sum(p.detach().double().sum() for p in model.parameters()))


def _late_init(rank: int, world: int, port: int, kind: str, out: str) -> None:
    """Build the state with no process group (as Lightning's DDPStrategy(ddp_comm_state=...)
    does), then init, wrap, train; and the same with a state built after init."""
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    cls = LGreCoState if kind == "lgreco" else CompressionState
    torch.manual_seed(0)
    net = ConvNet()
    state = cls(net, "powersgd", rank=2)
    assert not state.bound and "not bound yet" in repr(state)
    dist.init_process_group("gloo", rank=rank, world_size=world,
                            timeout=datetime.timedelta(seconds=60))
    try:
        model = _ddp(net)
        model.register_comm_hook(state, compression_hook)
        late = _train(model)
        bound, steps = state.bound, state.step
        ratio = state.compression_stats()["ratio"]
        state.close()
        torch.manual_seed(0)
        model = _ddp(ConvNet())
        with cls(model, "powersgd", rank=2) as eager:
            model.register_comm_hook(eager, compression_hook)
            early = _train(model)
        torch.save({"late": late, "early": early, "bound": bound, "steps": steps,
                    "ratio": ratio, "closed": repr(state)}, out)
    finally:
        dist.destroy_process_group()


@pytest.mark.parametrize("kind", ["powersgd", "lgreco"])
def test_a_state_built_before_the_process_group_binds_on_the_first_hook_call(kind, tmp_path):
    port = free_port()
    outs = [str(tmp_path / f"r{r}.pt") for r in range(2)]
    ctx = tmp_mp.get_context("spawn")
    procs = [ctx.Process(target=_late_init, args=(r, 2, port, kind, outs[r])) for r in range(2)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(240)
    codes = [p.exitcode for p in procs]
    for p in procs:
        if p.is_alive():
            p.kill()
    assert codes == [0, 0], codes
    results = [torch.load(o) for o in outs]
    for r in results:
        assert r["bound"] and r["steps"] == STEPS and r["ratio"] > 1.0
        assert r["late"] == r["early"]  # binding late changes nothing, bit for bit
        assert "closed" in r["closed"]
    assert results[0]["late"] == results[1]["late"]


def _close_and_refuse(rank, world):
    torch.manual_seed(0)
    model = _ddp(ConvNet())
    state = CompressionState(model, "powersgd", rank=2)
    model.register_comm_hook(state, compression_hook)
    _train(model, steps=2)
    group = state.process_group
    state.close()
    state.close()  # idempotent
    try:
        _train(model, steps=1)
        refused = None
    except RuntimeError as err:
        refused = str(err)
    given = dist.new_group()
    with CompressionState(_ddp(ConvNet()), "qsgd", process_group=given) as other:
        pass
    dist.barrier(group=given)  # a group the state was given survives its close
    return {"refused": refused, "group_gone": group not in dist.distributed_c10d._world.pg_map,
            "other_closed": "closed" in repr(other)}


def test_close_releases_the_group_and_a_closed_state_refuses_to_run():
    for r in run_ranks(_close_and_refuse):
        assert r["refused"] is not None and "closed" in r["refused"]
        assert r["group_gone"] and r["other_closed"]


def _stats(rank, world):
    torch.manual_seed(0)
    model = _ddp(ConvNet())
    state = CompressionState(model, "powersgd", rank=2, warmup_steps=1, accordion=False)
    model.register_comm_hook(state, compression_hook)
    _train(model, steps=4)
    stats = state.compression_stats(per_layer=True)
    state.close()
    dense = sum(p.numel() * 4 for p in model.parameters() if p.requires_grad)
    return {"stats": stats, "dense": dense, "repr": repr(state.ledger),
            "ledger": state.reducer.ledger.state_dict()}


def test_compression_stats_hold_the_dense_baseline_and_the_ratio():
    r = run_ranks(_stats)[0]
    s = r["stats"]
    assert s["steps"] == 4
    assert s["dense_bytes"] == 4 * r["dense"]  # the unused branch's zeros travel too
    assert s["sent_bytes"] == r["ledger"]["total"] and s["ratio"] == s["dense_bytes"] / s[
        "sent_bytes"]
    assert s["ratio"] > 1.5
    fc1 = s["per_key"]["fc1.weight"]  # 64 x 112: one dense step, three of P (64 x 2) + Q (112 x 2)
    assert fc1["dense_bytes"] == 4 * 4 * 64 * 112
    assert fc1["sent_bytes"] == 4 * (64 * 112 + 3 * 2 * (64 + 112))
    assert s["per_key"]["fc2.bias"]["ratio"] == pytest.approx(1.0)  # travels dense
    assert "ratio=" in r["repr"] and "MB" in r["repr"] or "KB" in r["repr"]


def test_options_the_method_ignores_are_logged(caplog):
    from distcomp.compression.options import parse_options

    with caplog.at_level(logging.WARNING, logger="distcomp"):
        parse_options("powersgd", {"density": 0.1, "rank": 2})
        parse_options("qsgd", {"accordion": False, "accordion_threshold": 0.3})
        parse_options("topk", {"density": 0.1})
    text = caplog.text
    assert "density=0.1 applies to method 'randk' or 'topk' only; 'powersgd' ignores it" in text
    assert "accordion_threshold=0.3 is ignored with accordion=False" in text
    assert text.count("distcomp:") == 2  # nothing for the options top-k reads


def _log_lines(rank, world):
    import distcomp.hooks.ddp as ddp

    ddp.LOG_EVERY = 5
    records = []
    handler = logging.Handler()
    handler.emit = records.append
    logger = logging.getLogger("distcomp")
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    model = _ddp(ConvNet())
    with CompressionState(model, "powersgd", rank=2, warmup_steps=0) as state:
        model.register_comm_hook(state, compression_hook)
        _train(model, steps=10)
    return [r.getMessage() for r in records]


def test_rank_zero_logs_bytes_and_ratio_every_interval():
    zero, one = run_ranks(_log_lines)
    assert len(zero) == 2 and one == []
    assert zero[0].startswith("distcomp: step 5: powersgd, ") and "x)" in zero[0]
