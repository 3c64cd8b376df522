"""One training rank of ``benchmarks.netbench`` (started by torchrun inside a namespace).

Trains one workload with one arm for a fixed number of steps, reads its own veth counters around
the timed steps and writes ``{out}/{workload}-{arm}-rank{R}.json``.
"""

from __future__ import annotations

import argparse
import datetime
import gc
import json
import os
import statistics
import time
from pathlib import Path

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel as DDP

from benchmarks.workloads import WORKLOADS, dense_grad_bytes, parameter_count

OUR_ARMS = {"powersgd", "topk", "qsgd"}
# L-GreCo arms: family and the LGreCoConfig options that differ from the defaults
LGRECO_ARMS = {
    "lgreco_powersgd": ("powersgd", {}),
    "lgreco_powersgd_wide": ("powersgd", {"gamma": 0.25, "beta": 4.0}),
    "lgreco_powersgd_layersum": ("powersgd", {"error_measure": "layer_sum"}),
    "lgreco_topk": ("topk", {}),
    "lgreco_qsgd": ("qsgd", {}),
}
# local-updating arms (no gradient all-reduce): CO2 overlaps its outer all-reduce, DiLoCo blocks
# (co2_qsgd: the pseudo-gradient travels as 8-bit QSGD with error feedback; co2_bf16: as bf16)
CO2_ARMS = {
    "co2": {"overlap": True},
    "diloco": {"overlap": False},
    "co2_qsgd": {"overlap": True, "compression": {"method": "qsgd", "bits": 8}},
    "co2_bf16": {"overlap": True, "wire_dtype": "bfloat16"},
}
ARMS = ["local", "allreduce", "torch_fp16", "torch_powersgd", "powersgd", "topk", "qsgd",
        *LGRECO_ARMS, *CO2_ARMS]
LR = {"lm": 1e-3, "cnn": 3e-3}


def register_arm(model: DDP, arm: str, args) -> object | None:
    """Attach the arm's communication hook; returns our CompressionState where there is one."""
    if arm == "allreduce":
        return None
    if arm == "local" or arm in CO2_ARMS:
        from hooks import local_hook

        model.register_comm_hook(None, local_hook)
        return None
    if arm == "torch_fp16":
        from torch.distributed.algorithms.ddp_comm_hooks import default_hooks

        model.register_comm_hook(None, default_hooks.fp16_compress_hook)
        return None
    if arm == "torch_powersgd":
        from torch.distributed.algorithms.ddp_comm_hooks import powerSGD_hook as ps

        # start_powerSGD_iter=2 is the smallest torch accepts with error feedback + warm start
        state = ps.PowerSGDState(None, matrix_approximation_rank=args.rank, start_powerSGD_iter=2)
        model.register_comm_hook(state, ps.powerSGD_hook)
        return None
    if arm in OUR_ARMS:
        from hooks import CompressionState, compression_hook

        state = CompressionState(model, arm, rank=args.rank, density=args.density,
                                 bits=args.bits, timeout_s=args.timeout)
        model.register_comm_hook(state, compression_hook)
        return state
    if arm in LGRECO_ARMS:
        from hooks import LGreCoState, lgreco_hook

        family, options = LGRECO_ARMS[arm]
        plan = {"warmup_steps": args.lgreco_warmup, "period": args.lgreco_period,
                "window": args.lgreco_window, **options}
        state = LGreCoState(model, family, rank=args.rank, density=args.density, bits=args.bits,
                            timeout_s=args.timeout, lgreco=plan)
        model.register_comm_hook(state, lgreco_hook)
        return state
    raise ValueError(f"unknown arm {arm!r}; choose from {ARMS}")


def iface_counters(iface: str | None) -> tuple[int, int]:
    if not iface:
        return 0, 0
    base = Path("/sys/class/net") / iface / "statistics"
    return int((base / "tx_bytes").read_text()), int((base / "rx_bytes").read_text())


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--workload", required=True, choices=sorted(WORKLOADS))
    p.add_argument("--arm", required=True, choices=ARMS)
    p.add_argument("--data", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--steps", type=int, required=True)
    p.add_argument("--warmup-steps", type=int, default=3)
    p.add_argument("--rank", type=int, default=4)
    p.add_argument("--density", type=float, default=0.01)
    p.add_argument("--bits", type=int, default=4)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--timeout", type=float, default=300.0)
    p.add_argument("--lgreco-warmup", type=int, default=3)
    p.add_argument("--lgreco-period", type=int, default=20)
    p.add_argument("--lgreco-window", type=int, default=2)
    p.add_argument("--tau", type=int, default=4, help="local steps per CO2 / DiLoCo round")
    args = p.parse_args(argv)

    torch.set_num_threads(1)
    dist.init_process_group("gloo", timeout=datetime.timedelta(seconds=args.timeout))
    rank, world = dist.get_rank(), dist.get_world_size()
    torch.manual_seed(args.seed)
    workload = WORKLOADS[args.workload](args.data, seed=args.seed)
    model = DDP(workload.model())
    state = register_arm(model, args.arm, args)
    opt = torch.optim.Adam(model.parameters(), lr=LR[args.workload])
    if args.arm in CO2_ARMS:
        from distcomp.co2 import CO2

        opt = state = CO2(opt, model, tau=args.tau, timeout_s=args.timeout,
                          **CO2_ARMS[args.arm])
    iface = os.environ.get("NETBENCH_IFACE")

    times, losses, clock = [], [], []
    t0 = time.perf_counter()
    heartbeat = Path(args.out) / f"{args.workload}-{args.arm}-rank{rank}.progress"
    for step in range(args.steps):
        heartbeat.write_text(str(step))  # the parent treats a silent heartbeat as a hang
        if step == args.warmup_steps:
            dist.barrier()
            before = iface_counters(iface)
            timed_from = time.perf_counter()
        start = time.perf_counter()
        x, y = workload.batch(step, rank)
        loss = workload.loss(model(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        losses.append(loss.item())
        clock.append(time.perf_counter() - t0)
        if step >= args.warmup_steps:
            times.append(time.perf_counter() - start)
    elapsed = torch.tensor([time.perf_counter() - timed_from], dtype=torch.float64)
    dist.barrier()
    after = iface_counters(iface)
    timed = args.steps - args.warmup_steps
    dist.all_reduce(elapsed, op=dist.ReduceOp.MAX)  # the job ends when its slowest rank does

    # slowest rank per step is the step time; mean loss over ranks (both after timing)
    t = torch.tensor(times, dtype=torch.float64)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    curve = torch.tensor(losses, dtype=torch.float64)
    dist.all_reduce(curve)
    curve /= world

    ledger = None
    if args.arm in CO2_ARMS:  # bytes per round, keyed by round; rounds end every tau steps
        ends = {r: (r + 1) * args.tau - 1 for r in range(args.steps // args.tau)}
        ledger = sum(state.ledger.step_bytes(r) for r, end in ends.items()
                     if end >= args.warmup_steps) / timed
    elif state is not None:
        steps = range(args.warmup_steps, args.steps)
        book = state.ledger  # drains the hook's worker once, not once per step
        ledger = sum(book.step_bytes(s) for s in steps) / timed
    elif args.arm == "allreduce":
        ledger = dense_grad_bytes(model)  # DDP hands every gradient byte to all-reduce
    elif args.arm == "torch_fp16":
        ledger = dense_grad_bytes(model) / 2
    elif args.arm == "local":
        ledger = 0.0
    record = {
        "rank": rank,
        "host": os.environ.get("NETBENCH_HOST"),
        "tx_bytes": after[0] - before[0],
        "rx_bytes": after[1] - before[1],
        "timed_steps": timed,
        "step_time_s": statistics.median(t.tolist()),
        "mean_step_time_s": statistics.fmean(t.tolist()),
        "wall_step_time_s": float(elapsed) / timed,
        "clock_s": clock,
        "losses": curve.tolist(),
        "ledger_bytes_per_step": ledger,
        "params": parameter_count(model),
        "dense_bytes": dense_grad_bytes(model),
    }
    if args.arm in CO2_ARMS:  # per round, the slower rank's: blocked on the average / in total
        for key, values in (("round_wait_s", state.wait_s), ("round_s", state.round_s)):
            v = torch.tensor(values, dtype=torch.float64)
            dist.all_reduce(v, op=dist.ReduceOp.MAX)
            record[key] = v.tolist()
    lgreco = getattr(getattr(state, "reducer", None), "lgreco", None)
    if lgreco is not None:
        record["error_ratio"] = lgreco.error_ratio
        record["error_ratios"] = lgreco.plans[-1]["ratios"] if lgreco.plans else None
        record["plans"] = [{"step": p["step"], "settings": p["settings"]} for p in lgreco.plans]
    out = Path(args.out) / f"{args.workload}-{args.arm}-rank{rank}.json"
    tmp = out.with_suffix(".tmp")
    tmp.write_text(json.dumps(record))
    tmp.replace(out)
    # DDP, the optimizer and the hook's state hold the process group (through reference
    # cycles): left to the interpreter's exit, gloo's destructor ran during finalisation and
    # aborted ("terminate called without an active exception") in ~1 of 12 runs under load,
    # and the peer, mid-read, hung. Released and collected here, it is destroyed while alive.
    del model, opt, state
    gc.collect()
    dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
