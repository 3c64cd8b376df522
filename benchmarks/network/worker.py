"""One training rank of ``benchmarks.network.netbench`` (started by torchrun inside a namespace).

Trains one workload with one arm (:mod:`benchmarks.arms`) for a fixed number of steps, reads its
own veth counters around the timed steps and writes ``{out}/{workload}-{arm}-rank{R}.json``.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import statistics
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

from benchmarks.arms import Arm, RunSettings
from benchmarks.sharded import memory
from distcomp.compression.flags import add_method_flags
from distcomp.workloads import WORKLOADS, dense_grad_bytes, parameter_count


@dataclass
class Trial:
    """One arm, set up: the DDP (or FSDP2) model, the optimizer it steps (CO2's wrapper for
    local updating), the state to close (None for DDP's, torch's and FSDP2's own)."""

    arm: Arm
    workload: Any
    model: torch.nn.Module
    optimizer: torch.optim.Optimizer
    state: Any


@dataclass
class Timed:
    """What the loop measured on this rank: per-step losses, wall clock since the start and
    duration of each timed step; interface counters before and after; timed seconds."""

    losses: list[float] = field(default_factory=list)
    clock: list[float] = field(default_factory=list)
    times: list[float] = field(default_factory=list)
    counters: dict = field(default_factory=dict)
    elapsed_s: float = 0.0


def run_settings(args: argparse.Namespace) -> RunSettings:
    return RunSettings(
        timeout_s=args.timeout, knobs={k: getattr(args, k) for k in args.method_knobs
                                       if getattr(args, k) is not None},
        dense_warmup=args.dense_warmup, tau=args.tau, outer_momentum=args.outer_momentum,
        lgreco={"warmup_steps": args.lgreco_warmup, "period": args.lgreco_period,
                "window": args.lgreco_window})


def set_up(args: argparse.Namespace, arm: Arm) -> Trial:
    """A fresh model and optimizer from the seed, the arm attached."""
    torch.manual_seed(args.seed)
    workload = WORKLOADS[args.workload](args.data, seed=args.seed)
    model = arm.wrap(workload.model(), args.torch_ddp_buckets)
    optimizer, state = arm.setup(model, workload.optimizer(model.parameters()),
                                 run_settings(args))
    return Trial(arm, workload, model, optimizer, state)


def run_steps(args: argparse.Namespace, trial: Trial) -> Timed:
    """``--steps`` steps, or on to ``--max-steps`` until the target is reached; the first
    ``--warmup-steps`` untimed. Every step writes a heartbeat the parent watches."""
    rank, world = dist.get_rank(), dist.get_world_size()
    iface = os.environ.get("NETBENCH_IFACE")
    ifaces = {"wire": iface, "lo": "lo" if iface else None}  # lo: the host's own ranks
    heartbeat = Path(args.out) / f"{args.workload}-{trial.arm.text}-rank{rank}.progress"
    out, t0 = Timed(), time.perf_counter()
    for step in range(max(args.steps, args.max_steps or args.steps)):
        heartbeat.write_text(str(step))  # the parent treats a silent heartbeat as a hang
        if step == args.warmup_steps:
            dist.barrier()
            out.counters["before"] = {k: iface_counters(v) for k, v in ifaces.items()}
            timed_from = time.perf_counter()
        start = time.perf_counter()
        out.losses.append(trial.workload.train_step(trial.model, trial.optimizer, step, rank))
        out.clock.append(time.perf_counter() - t0)
        if step >= args.warmup_steps:
            out.times.append(time.perf_counter() - start)
        if reached(out.losses, args, world):
            break
    out.elapsed_s = time.perf_counter() - timed_from
    dist.barrier()
    out.counters["after"] = {k: iface_counters(v) for k, v in ifaces.items()}
    return out


def record(args: argparse.Namespace, trial: Trial, timed: Timed) -> dict:
    """This rank's record: the slowest rank's step times, the mean loss curve over ranks (both
    agreed after the timed steps), bytes on the wire and in the ledger."""
    rank, world, arm, state = dist.get_rank(), dist.get_world_size(), trial.arm, trial.state
    steps_run = len(timed.losses)
    n_timed = steps_run - args.warmup_steps
    elapsed = torch.tensor([timed.elapsed_s], dtype=torch.float64)
    dist.all_reduce(elapsed, op=dist.ReduceOp.MAX)  # the job ends when its slowest rank does
    t = torch.tensor(timed.times, dtype=torch.float64)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    curve = torch.tensor(timed.losses, dtype=torch.float64)
    dist.all_reduce(curve)
    curve /= world
    (tx0, rx0), (lo0, _) = timed.counters["before"]["wire"], timed.counters["before"]["lo"]
    (tx1, rx1), (lo1, _) = timed.counters["after"]["wire"], timed.counters["after"]["lo"]
    rec = {
        "rank": rank, "host": os.environ.get("NETBENCH_HOST"),
        "tx_bytes": tx1 - tx0, "rx_bytes": rx1 - rx0, "lo_bytes": lo1 - lo0,
        "local_rank": int(os.environ.get("LOCAL_RANK", 0)),
        "timed_steps": n_timed, "steps_run": steps_run,
        "step_time_s": statistics.median(t.tolist()),
        "mean_step_time_s": statistics.fmean(t.tolist()),
        "wall_step_time_s": float(elapsed) / n_timed,
        "clock_s": timed.clock, "losses": curve.tolist(),
        "ledger_bytes_per_step": ledger_bytes(args, trial, steps_run, n_timed),
        "params": parameter_count(trial.model), "dense_bytes": dense_grad_bytes(trial.model),
        **memory(trial.model, trial.optimizer, state),
    }
    if arm.kind == "co2":  # per round, the slower rank's: blocked on the average / in total
        rec["outer_state_bytes"] = state.outer_state_bytes()
        for key, values in (("round_wait_s", state.wait_s), ("round_s", state.round_s)):
            v = torch.tensor(values, dtype=torch.float64)
            dist.all_reduce(v, op=dist.ReduceOp.MAX)
            rec[key] = v.tolist()
    lgreco = getattr(getattr(state, "reducer", None), "lgreco", None)
    if lgreco is not None:
        rec["error_ratio"] = lgreco.error_ratio
        rec["error_ratios"] = lgreco.plans[-1]["ratios"] if lgreco.plans else None
        rec["plans"] = [{"step": p["step"], "settings": p["settings"]} for p in lgreco.plans]
    return rec


def ledger_bytes(args: argparse.Namespace, trial: Trial, steps_run: int,
                 n_timed: int) -> float | None:
    """Payload bytes per timed step this rank handed to collectives: our ledger's, CO2's per
    round (rounds end every tau steps), what DDP and torch's fp16 hook hand over; None for
    torch's PowerSGD hook, which counts nothing."""
    arm, state = trial.arm, trial.state
    if arm.kind == "co2":
        tau = state.config.tau
        return sum(state.ledger.step_bytes(r) for r in range(steps_run // tau)
                   if (r + 1) * tau - 1 >= args.warmup_steps) / n_timed
    if arm.kind in ("local", "local_node"):  # nothing crosses between hosts
        return 0.0
    if arm.kind == "sharded":  # FSDP2's own collectives: its wire counters tell
        return None
    if arm.kind == "ours":
        book = state.ledger  # drains the hook's worker once, not once per step
        return sum(book.step_bytes(s) for s in range(args.warmup_steps, steps_run)) / n_timed
    dense = dense_grad_bytes(trial.model)  # DDP hands every gradient byte to all-reduce
    return {"allreduce": dense, "torch_fp16": dense / 2}.get(arm.name)


def reached(losses: list[float], args, world: int) -> bool:
    """Past the equal-steps point, every 5 steps: has the smoothed loss (mean over ranks of the
    last ``--smooth`` steps) reached ``--target-loss``? One 8-byte all-reduce, the same answer
    on every rank, so all stop at the same step."""
    done = len(losses)
    if args.target_loss is None or done < args.steps or (done - args.steps) % 5:
        return False
    window = torch.tensor([sum(losses[-args.smooth:]) / min(args.smooth, done)],
                          dtype=torch.float64)
    dist.all_reduce(window)
    return float(window) / world <= args.target_loss


def iface_counters(iface: str | None) -> tuple[int, int]:
    if not iface:
        return 0, 0
    base = Path("/sys/class/net") / iface / "statistics"
    return int((base / "tx_bytes").read_text()), int((base / "rx_bytes").read_text())


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser()
    p.add_argument("--workload", required=True, choices=sorted(WORKLOADS))
    p.add_argument("--arm", required=True,
                   help="an arm, optionally ARM@SETTING; a comma list runs each in turn")
    p.add_argument("--data", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--steps", type=int, required=True, help="the equal-steps point")
    p.add_argument("--max-steps", type=int, default=None,
                   help="run past --steps until the target is reached, at most this many")
    p.add_argument("--target-loss", type=float, default=None)
    p.add_argument("--smooth", type=int, default=10, help="steps in the smoothed loss")
    p.add_argument("--warmup-steps", type=int, default=3)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--timeout", type=float, default=300.0)
    p.add_argument("--lgreco-warmup", type=int, default=3)
    p.add_argument("--lgreco-period", type=int, default=20)
    p.add_argument("--lgreco-window", type=int, default=2)
    p.add_argument("--tau", type=int, default=4, help="local steps per CO2 / DiLoCo round")
    p.add_argument("--outer-momentum", type=float, default=None)
    p.add_argument("--dense-warmup", type=int, default=None,
                   help="our hooks' and torch's dense warm-up steps (default: the library's)")
    p.add_argument("--torch-ddp-buckets", action="store_true",
                   help="torch's powerSGD_hook keeps DDP's default buckets (see bucket_cap_mb)")
    knobs = add_method_flags(p)
    args = p.parse_args(argv)
    args.method_knobs = knobs
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    arms = [Arm.parse(a) for a in args.arm.split(",")]
    torch.set_num_threads(1)
    dist.init_process_group("gloo", timeout=datetime.timedelta(seconds=args.timeout))
    for arm in arms:
        trial = set_up(args, arm)
        rec = record(args, trial, run_steps(args, trial))
        out = Path(args.out) / f"{args.workload}-{arm.text}-rank{dist.get_rank()}.json"
        tmp = out.with_suffix(".tmp")
        tmp.write_text(json.dumps(rec))
        tmp.replace(out)
        # distcomp's states own a thread and a process group: closed here, while the default
        # group is alive (left to the interpreter's exit, a gloo destructor ran during
        # finalisation and aborted, "terminate called without an active exception")
        if hasattr(trial.state, "close"):
            trial.state.close()
    dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
