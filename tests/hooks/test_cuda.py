"""The hooks and CO2 on a CUDA model (``make gpu-check``): the same training as on the CPU, on
a 1-rank NCCL group and on 2 gloo ranks sharing one GPU (NCCL refuses two ranks on one device,
gloo does not), and state moving between CPU and GPU.

Tolerance: the GPU's convolutions and matrix products round differently from the CPU's, and six
steps of training carry that along: losses match to 1e-3 relative.
"""

from __future__ import annotations

import os

import pytest
import torch
import torch.distributed as dist
from torch.nn import functional as F
from torch.nn.parallel import DistributedDataParallel as DDP

from distcomp.hooks import CompressionState, LGreCoState, compression_hook
from tests.models import ConvNet, convnet_batch
from tests.multiproc import run_ranks

# DISTCOMP_TEST_DEVICE=cpu runs these on the CPU against itself: a dry run of the test code
DEV = os.environ.get("DISTCOMP_TEST_DEVICE", "cuda")
pytestmark = pytest.mark.skipif(
    DEV == "cuda" and not torch.cuda.is_available(),
    reason="needs a CUDA device (none here); `make gpu-check` runs these on a GPU machine")
METHODS = {"powersgd": {"rank": 2}, "topk": {"density": 0.05}, "qsgd": {"bits": 4}}
COMMON = {"warmup_steps": 2, "accordion_interval": 3, "min_compression_rate": 0.0}


def _train(rank, device, method, steps=6, group=None, state_from=None, lgreco=False):
    torch.manual_seed(0)
    model = ConvNet().to(device)
    ddp = DDP(model, process_group=group, find_unused_parameters=True)  # ConvNet has a branch
    kind = LGreCoState if lgreco else CompressionState
    extra = {"lgreco": {"warmup_steps": 3, "window": 2, "period": 3}} if lgreco else {}
    state = kind(ddp, method, process_group=group, **METHODS[method], **COMMON, **extra)
    if state_from is not None:
        state.load_state_dict(state_from)
    ddp.register_comm_hook(state, compression_hook)
    opt = torch.optim.SGD(ddp.parameters(), lr=0.05, momentum=0.9)
    losses = []
    for step in range(steps):
        x, y = convnet_batch(rank, step)
        opt.zero_grad()
        loss = F.cross_entropy(ddp(x.to(device)), y.to(device))
        loss.backward()
        opt.step()
        losses.append(float(loss))
    saved = state.state_dict()
    state.close()
    return losses, saved


def _to_cpu(state):
    return torch.utils._pytree.tree_map(
        lambda t: t.cpu() if isinstance(t, torch.Tensor) else t, state)


def _gloo_cpu_and_gpu(rank, world):
    out = {}
    for method in METHODS:
        cpu, cpu_saved = _train(rank, "cpu", method)
        gpu, gpu_saved = _train(rank, DEV, method)
        lg_cpu, _ = _train(rank, "cpu", method, lgreco=True)
        lg_gpu, _ = _train(rank, DEV, method, lgreco=True)
        # hook state saved on one device continues on the other: residuals, warm-start Qs and
        # schedules follow the model's device, and the continuation matches the CPU's own
        ref, _ = _train(rank, "cpu", method, steps=3, state_from=cpu_saved)
        gpu_to_cpu, _ = _train(rank, "cpu", method, steps=3, state_from=_to_cpu(gpu_saved))
        cpu_to_gpu, _ = _train(rank, DEV, method, steps=3, state_from=cpu_saved)
        out[method] = {"cpu": cpu, "gpu": gpu, "lg_cpu": lg_cpu, "lg_gpu": lg_gpu,
                       "ref": ref, "gpu_to_cpu": gpu_to_cpu, "cpu_to_gpu": cpu_to_gpu}
    return out


def test_two_gloo_ranks_on_one_gpu_train_like_the_cpu():
    for r in run_ranks(_gloo_cpu_and_gpu, timeout_s=300):
        for method, m in r.items():
            assert m["gpu"] == pytest.approx(m["cpu"], rel=1e-3), method
            assert m["lg_gpu"] == pytest.approx(m["lg_cpu"], rel=1e-3), method
            for moved in ("gpu_to_cpu", "cpu_to_gpu"):
                assert m[moved] == pytest.approx(m["ref"], rel=1e-3), (method, moved)


def _nccl_one_rank(rank, world):
    group = dist.new_group(backend="nccl")
    out = {}
    for method in METHODS:
        for lgreco in (False, True):
            cpu, _ = _train(rank, "cpu", method, lgreco=lgreco)
            gpu, _ = _train(rank, "cuda", method, group=group, lgreco=lgreco)
            out[(method, lgreco)] = (cpu, gpu)
    dist.destroy_process_group(group)
    return out


@pytest.mark.skipif(not torch.cuda.is_available() or not dist.is_nccl_available(),
                    reason="needs CUDA and NCCL (none here)")
def test_one_rank_nccl_group_trains_like_the_cpu():
    (r,) = run_ranks(_nccl_one_rank, world=1, timeout_s=300)
    for method, (cpu, gpu) in r.items():
        assert gpu == pytest.approx(cpu, rel=1e-3), method


def _co2_anchors(rank, world):
    from distcomp.co2 import CO2
    from distcomp.hooks import local_hook

    torch.manual_seed(0)
    model = DDP(ConvNet().to(DEV), find_unused_parameters=True)
    model.register_comm_hook(None, local_hook)
    digests = []
    trainable = [p for p in model.parameters() if p.requires_grad]
    with CO2(torch.optim.SGD(trainable, lr=0.05), model, tau=2,
             wire_dtype="bfloat16") as co2:
        for step in range(8):
            x, y = convnet_batch(rank, step)
            co2.zero_grad()
            F.cross_entropy(model(x.to(DEV)), y.to(DEV)).backward()
            co2.step()
            if co2.steps % 2 == 0:
                digests.append(co2.anchor_digest())
        co2.synchronize()
        final = torch.cat([p.detach().reshape(-1).cpu() for p in model.parameters()])
        on_device = co2.anchor.device.type
    return digests, final, on_device


def test_co2_keeps_identical_anchors_on_the_gpu():
    (d0, p0, dev0), (d1, p1, dev1) = run_ranks(_co2_anchors, timeout_s=300)
    assert dev0 == dev1 == DEV and len(d0) == 4
    assert d0 == d1 and torch.equal(p0, p1)


def _deepspeed(rank, world, comm):
    from distcomp.hooks.deepspeed import DeepSpeedCompression, register_deepspeed_hook
    from tests.hooks.test_deepspeed import _engine

    os.environ["RANK"] = str(rank)
    engine = _engine(zero_stage=0)
    if comm is not None:
        register_deepspeed_hook(engine, DeepSpeedCompression(engine, comm, rank=2,
                                                             warmup_steps=2))
    w = torch.randn(16, 4, generator=torch.Generator().manual_seed(99))
    losses = []
    for step in range(6):
        x = torch.randn(16, 16, generator=torch.Generator().manual_seed(step * 100 + rank))
        y = (x @ w).argmax(1)
        loss = F.cross_entropy(engine(x.to(engine.device)), y.to(engine.device))
        engine.backward(loss)
        engine.step()
        losses.append(loss.item())
    return {"losses": losses, "device": str(next(engine.module.parameters()).device)}


@pytest.mark.skipif(not torch.cuda.is_available() or
                    __import__("importlib.util").util.find_spec("deepspeed") is None,
                    reason="needs CUDA and DeepSpeed's CUDA build (none here)")
def test_deepspeed_zero0_with_the_hook_on_the_gpu():
    own = run_ranks(_deepspeed, comm=None, timeout_s=300)
    ours = run_ranks(_deepspeed, comm="powersgd", timeout_s=300)
    for a, b in zip(own, ours):
        assert a["device"].startswith("cuda") and b["device"].startswith("cuda")
        assert b["losses"][:3] == pytest.approx(a["losses"][:3], rel=1e-4)  # dense warm-up
        assert b["losses"][-1] < b["losses"][0]


def _windows(rank, world, overlap, tau, width, steps):
    """GPU-timeline seconds between consecutive round boundaries (CUDA events recorded on the
    compute stream right after each boundary step): they include every wait the host makes."""
    from distcomp.co2 import CO2
    from distcomp.hooks import local_hook

    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(width, width), torch.nn.ReLU(),
                              torch.nn.Linear(width, width)).to(DEV)
    model = DDP(net)
    model.register_comm_hook(None, local_hook)
    x = torch.randn(2048, width, device=DEV)
    events = []
    with CO2(torch.optim.SGD(model.parameters(), lr=1e-3), model, tau=tau,
             overlap=overlap) as co2:
        for _ in range(steps):
            co2.zero_grad()
            model(x).pow(2).mean().backward()
            co2.step()
            if co2.steps % tau == 0:
                events.append(torch.cuda.Event(enable_timing=True))
                events[-1].record()
        torch.cuda.synchronize()
        digest = co2.anchor_digest()
    gaps = [a.elapsed_time(b) / 1e3 for a, b in zip(events[1:], events[2:])]  # after round 1
    return sum(gaps) / len(gaps), digest


def _calibrate(rank, world, width):
    """(seconds of one local step on the GPU, of one all-reduce of the model's fp32 size)."""
    import time

    net = torch.nn.Sequential(torch.nn.Linear(width, width), torch.nn.ReLU(),
                              torch.nn.Linear(width, width)).to(DEV)
    x = torch.randn(2048, width, device=DEV)
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    net(x).pow(2).mean().backward()
    start.record()
    for _ in range(5):
        net(x).pow(2).mean().backward()
    end.record()
    end.synchronize()
    flat = torch.cat([p.detach().reshape(-1) for p in net.parameters()])
    dist.all_reduce(flat)
    t0 = time.perf_counter()
    dist.all_reduce(flat)
    torch.cuda.synchronize()
    return start.elapsed_time(end) / 5e3, time.perf_counter() - t0


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device (none here)")
def test_co2_outer_average_overlaps_the_next_local_steps_on_the_gpu():
    """tau is chosen so that the tau local steps take about 1.5x the outer all-reduce; then a
    round boundary of CO2 (overlap) must come at least 20% sooner than DiLoCo's (blocking),
    measured on the GPU's timeline, and the anchors stay identical on both ranks."""
    width = 4096
    step_s, reduce_s = run_ranks(_calibrate, width=width, timeout_s=300)[0]
    tau = max(2, min(64, round(1.5 * reduce_s / step_s)))
    blocking = run_ranks(_windows, overlap=False, tau=tau, width=width, steps=5 * tau,
                         timeout_s=300)
    overlapped = run_ranks(_windows, overlap=True, tau=tau, width=width, steps=5 * tau,
                           timeout_s=300)
    assert overlapped[0][1] == overlapped[1][1]
    assert overlapped[0][0] <= 0.8 * blocking[0][0], (tau, step_s, reduce_s, blocking,
                                                        overlapped)
