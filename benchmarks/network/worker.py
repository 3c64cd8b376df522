"""One training rank of ``benchmarks.network.netbench`` (started by torchrun inside a namespace).

Trains one workload with one arm for a fixed number of steps, reads its own veth counters around
the timed steps and writes ``{out}/{workload}-{arm}-rank{R}.json``.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import statistics
import time
from pathlib import Path

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel as DDP

from distcomp.workloads import WORKLOADS, dense_grad_bytes, parameter_count

OUR_ARMS = {"powersgd", "topk", "qsgd"}
# ours with a fixed setting (no Accordion schedule) and torch's dense warm-up: powersgd_fixed is
# the arm to set beside torch's powerSGD_hook at the same rank; qsgd_fixed shows what the
# schedule's gentle bits cost in time
FIXED_ARMS = {"powersgd_fixed": "powersgd", "qsgd_fixed": "qsgd"}
# L-GreCo arms: family and the LGreCoConfig options that differ from the defaults
LGRECO_ARMS = {
    "lgreco_powersgd": ("powersgd", {}),
    "lgreco_powersgd_wide": ("powersgd", {"gamma": 0.25, "beta": 4.0}),
    "lgreco_powersgd_layersum": ("powersgd", {"error_measure": "layer_sum"}),
    "lgreco_topk": ("topk", {}),
    "lgreco_qsgd": ("qsgd", {}),
}
# local-updating arms (no gradient all-reduce): CO2 overlaps its outer all-reduce, DiLoCo blocks
# (co2_qsgd: the pseudo-gradient travels as 8-bit QSGD with error feedback, from the first
# round and at one setting; co2_bf16: as bf16)
CO2_ARMS = {
    "co2": {"overlap": True},
    "diloco": {"overlap": False},
    "co2_qsgd": {"overlap": True, "compression": {"method": "qsgd", "bits": 8, "warmup_steps": 0,
                                                  "accordion": False}},
    "co2_bf16": {"overlap": True, "wire_dtype": "bfloat16"},
    # several ranks per host: the outer round flat over every rank (the default shares it)
    "co2_bf16_flat": {"overlap": True, "wire_dtype": "bfloat16", "hierarchical": False},
}
# ours averaged flat over every rank where several ranks share a host (without them the
# default, topology-aware reduction compresses only across hosts): the comparison it wins
FLAT_ARMS = {"powersgd_flat": "powersgd", "topk_flat": "topk", "qsgd_flat": "qsgd"}
# local_node: gradients averaged inside each host only, nothing between hosts: the floor of CO2
# across hosts, which averages inside the host every step too (compute plus the fast link)
ARMS = ["local", "local_node", "allreduce", "torch_fp16", "torch_powersgd", "powersgd",
        "powersgd_fixed", "topk", "qsgd", "qsgd_fixed", *LGRECO_ARMS, *CO2_ARMS, *FLAT_ARMS]
FAMILY_KNOB = {"powersgd": "rank", "topk": "density", "qsgd": "bits"}


def split_arm(arm: str) -> tuple[str, float | None]:
    """"lgreco_topk@0.003" -> ("lgreco_topk", 0.003): an arm at another setting of its
    family's knob (rank, density or bits; a CO2 arm's is tau, "co2_bf16@2"), for sweeps;
    ValueError for what is not."""
    name, at, setting = arm.partition("@")
    if name not in ARMS:
        raise ValueError(f"unknown arm {name!r}; choose from {ARMS}")
    if not at:
        return name, None
    knob = "tau" if name in CO2_ARMS else FAMILY_KNOB.get(family(name) or "")
    return name, setting_value(arm, knob, setting)


def setting_value(arm: str, knob: str | None, setting: str) -> float:
    """The number after ``@`` in ``arm``, checked for ``knob``: a rank or bit width is a whole
    number >= 1 (returned as int), a density lies in (0, 1]; ValueError naming the arm else."""
    if knob is None:
        raise ValueError(f"arm {arm!r} has no compression setting to give with @")
    try:
        value = float(setting)
    except ValueError:
        raise ValueError(f"arm {arm!r}: the setting after @ must be a number") from None
    if knob == "density":
        if not 0 < value <= 1:
            raise ValueError(f"arm {arm!r}: density must be in (0, 1]")
        return value
    if not value.is_integer() or value < 1:
        raise ValueError(f"arm {arm!r}: {knob} must be a whole number >= 1")
    return int(value)


def family(name: str) -> str | None:
    """The compression method an arm of ours uses (None: not one of ours)."""
    if name in OUR_ARMS:
        return name
    if name in FIXED_ARMS:
        return FIXED_ARMS[name]
    if name in FLAT_ARMS:
        return FLAT_ARMS[name]
    return LGRECO_ARMS[name][0] if name in LGRECO_ARMS else None


def arm_options(arm: str, args, workload) -> dict:
    """Our hook's options for an arm: the library's defaults, but for the knob the command
    line or the arm's @setting names, the timeout, and top-k's momentum correction where the
    workload trains with momentum SGD (the documented setting for such a user)."""
    name, setting = split_arm(arm)
    method = family(name)
    opts = {"timeout_s": args.timeout}
    knob = FAMILY_KNOB[method]
    value = setting if setting is not None else getattr(args, knob)
    if value is not None:
        opts[knob] = value
    if method == "topk":
        opts["momentum"] = getattr(workload, "momentum", 0.0)
    if getattr(args, "dense_warmup", None) is not None:
        opts["warmup_steps"] = args.dense_warmup
    if name in FIXED_ARMS:
        opts.update(accordion=False, warmup_steps=torch_start_iter(opts.get("warmup_steps")))
    if name in FLAT_ARMS:
        opts["hierarchical"] = False
    return opts


def torch_start_iter(dense: int | None = None) -> int:
    """torch's start_powerSGD_iter for the comparison: ``dense`` steps (default: our default
    dense warm-up), but at least 2, the least torch accepts with error feedback and warm start."""
    from distcomp.compression.config import CompressionConfig

    return max(2, CompressionConfig().warmup_steps if dense is None else dense)


TORCH_HOOKS = ("torch_fp16", "torch_powersgd")


def register_torch_hook(model: DDP, name: str, rank: int | None = None,
                        dense: int | None = None) -> None:
    """Attach one of torch's own hooks (``TORCH_HOOKS``), the anchors beside ours:
    fp16_compress_hook, or powerSGD_hook at ``rank`` (our default when None) with our dense
    warm-up as its start_powerSGD_iter. powerSGD_hook needs one DDP bucket on gloo
    (:func:`bucket_cap_mb`)."""
    if name == "torch_fp16":
        from torch.distributed.algorithms.ddp_comm_hooks import default_hooks

        model.register_comm_hook(None, default_hooks.fp16_compress_hook)
        return
    if name != "torch_powersgd":
        raise ValueError(f"{name!r} is not one of torch's hooks {TORCH_HOOKS}")
    from torch.distributed.algorithms.ddp_comm_hooks import powerSGD_hook as ps

    from distcomp.compression.config import CompressionConfig

    state = ps.PowerSGDState(None, matrix_approximation_rank=rank or CompressionConfig().rank,
                             start_powerSGD_iter=torch_start_iter(dense))
    model.register_comm_hook(state, ps.powerSGD_hook)


def register_arm(model: DDP, arm: str, args, workload) -> object | None:
    """Attach the arm's communication hook; returns our CompressionState where there is one."""
    name, _ = split_arm(arm)
    if name == "allreduce":
        return None
    if name == "local" or name in CO2_ARMS:
        from distcomp.hooks import local_hook

        model.register_comm_hook(None, local_hook)
        return None
    if name == "local_node":
        return NodeAverage(model)
    if name in TORCH_HOOKS:
        register_torch_hook(model, name, args.rank, getattr(args, "dense_warmup", None))
        return None
    from distcomp.hooks import CompressionState, LGreCoState, compression_hook

    opts = arm_options(arm, args, workload)
    if name in LGRECO_ARMS:  # the first plan comes no earlier than the dense warm-up's end
        method, options = LGRECO_ARMS[name]
        plan = {"warmup_steps": args.lgreco_warmup, "period": args.lgreco_period,
                "window": args.lgreco_window, **options}
        state = LGreCoState(model, method, lgreco=plan, **opts)
    else:
        state = CompressionState(model, family(name), **opts)
    model.register_comm_hook(state, compression_hook)
    return state


class NodeAverage:
    """The ``local_node`` arm: DDP's buckets all-reduced (averaged) over this host's ranks only,
    as the launcher's LOCAL_WORLD_SIZE places them; ``close()`` destroys the groups."""

    def __init__(self, model: DDP):
        from torch.distributed.algorithms.ddp_comm_hooks.default_hooks import allreduce_hook

        from distcomp.compression.hierarchical import node_groups
        from distcomp.compression.topology import resolve

        topo, _ = resolve(dist.get_rank(), dist.get_world_size())
        self.group, _, self.groups = node_groups(topo)
        model.register_comm_hook(self.group, allreduce_hook)  # DDP's own average, on the group

    def close(self) -> None:
        for group in self.groups:
            dist.destroy_process_group(group)


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


def bucket_cap_mb(arm: str, model: torch.nn.Module, ddp_buckets: bool) -> float:
    """DDP's bucket size: its default (25 MB), except for torch's powerSGD_hook, which gets one
    bucket holding every gradient: with several, its second all-reduce (launched from a future
    callback) races the next bucket's first, and on gloo that aborts or hangs (README). The
    soak keeps DDP's buckets (``ddp_buckets``) to count exactly that."""
    if not ddp_buckets and split_arm(arm)[0] == "torch_powersgd":
        return dense_grad_bytes(model) / 2**20 + 1
    return 25.0


def iface_counters(iface: str | None) -> tuple[int, int]:
    if not iface:
        return 0, 0
    base = Path("/sys/class/net") / iface / "statistics"
    return int((base / "tx_bytes").read_text()), int((base / "rx_bytes").read_text())


def main(argv: list[str] | None = None) -> None:
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
    p.add_argument("--rank", type=int, default=None)
    p.add_argument("--density", type=float, default=None)
    p.add_argument("--bits", type=int, default=None)
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
    args = p.parse_args(argv)

    torch.set_num_threads(1)
    dist.init_process_group("gloo", timeout=datetime.timedelta(seconds=args.timeout))
    for arm in args.arm.split(","):
        train(args, arm)
    dist.barrier()
    dist.destroy_process_group()


def train(args: argparse.Namespace, arm: str) -> None:
    """One arm from a fresh model and seed; writes ``{out}/{workload}-{arm}-rank{R}.json``."""
    rank, world = dist.get_rank(), dist.get_world_size()
    torch.manual_seed(args.seed)
    workload = WORKLOADS[args.workload](args.data, seed=args.seed)
    net = workload.model()
    model = DDP(net, bucket_cap_mb=bucket_cap_mb(arm, net, args.torch_ddp_buckets))
    state = register_arm(model, arm, args, workload)
    opt = workload.optimizer(model.parameters())
    name, setting = split_arm(arm)
    tau = int(setting) if name in CO2_ARMS and setting is not None else args.tau
    if name in CO2_ARMS:
        from distcomp.co2 import CO2

        outer = {} if args.outer_momentum is None else {"outer_momentum": args.outer_momentum}
        opt = state = CO2(opt, model, tau=tau, timeout_s=args.timeout, **outer,
                          **CO2_ARMS[name])
    iface = os.environ.get("NETBENCH_IFACE")
    loopback = "lo" if iface else None  # the host's own traffic between its ranks
    max_steps = max(args.steps, args.max_steps or args.steps)

    times, losses, clock = [], [], []
    t0 = time.perf_counter()
    heartbeat = Path(args.out) / f"{args.workload}-{arm}-rank{rank}.progress"
    for step in range(max_steps):
        heartbeat.write_text(str(step))  # the parent treats a silent heartbeat as a hang
        if step == args.warmup_steps:
            dist.barrier()
            before, lo_before = iface_counters(iface), iface_counters(loopback)
            timed_from = time.perf_counter()
        start = time.perf_counter()
        losses.append(workload.train_step(model, opt, step, rank))
        clock.append(time.perf_counter() - t0)
        if step >= args.warmup_steps:
            times.append(time.perf_counter() - start)
        if reached(losses, args, world):
            break
    steps_run = len(losses)
    elapsed = torch.tensor([time.perf_counter() - timed_from], dtype=torch.float64)
    dist.barrier()
    after, lo_after = iface_counters(iface), iface_counters(loopback)
    timed = steps_run - args.warmup_steps
    dist.all_reduce(elapsed, op=dist.ReduceOp.MAX)  # the job ends when its slowest rank does

    # slowest rank per step is the step time; mean loss over ranks (both after timing)
    t = torch.tensor(times, dtype=torch.float64)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    curve = torch.tensor(losses, dtype=torch.float64)
    dist.all_reduce(curve)
    curve /= world

    ledger = None
    if name in CO2_ARMS:  # bytes per round, keyed by round; rounds end every tau steps
        ends = {r: (r + 1) * tau - 1 for r in range(steps_run // tau)}
        ledger = sum(state.ledger.step_bytes(r) for r, end in ends.items()
                     if end >= args.warmup_steps) / timed
    elif name in ("local", "local_node"):  # nothing crosses between hosts
        ledger = 0.0
    elif state is not None:
        steps = range(args.warmup_steps, steps_run)
        book = state.ledger  # drains the hook's worker once, not once per step
        ledger = sum(book.step_bytes(s) for s in steps) / timed
    elif name == "allreduce":
        ledger = dense_grad_bytes(model)  # DDP hands every gradient byte to all-reduce
    elif name == "torch_fp16":
        ledger = dense_grad_bytes(model) / 2
    record = {
        "rank": rank,
        "host": os.environ.get("NETBENCH_HOST"),
        "tx_bytes": after[0] - before[0],
        "rx_bytes": after[1] - before[1],
        "lo_bytes": lo_after[0] - lo_before[0],
        "local_rank": int(os.environ.get("LOCAL_RANK", 0)),
        "timed_steps": timed,
        "steps_run": steps_run,
        "step_time_s": statistics.median(t.tolist()),
        "mean_step_time_s": statistics.fmean(t.tolist()),
        "wall_step_time_s": float(elapsed) / timed,
        "clock_s": clock,
        "losses": curve.tolist(),
        "ledger_bytes_per_step": ledger,
        "params": parameter_count(model),
        "dense_bytes": dense_grad_bytes(model),
    }
    if name in CO2_ARMS:
        record["outer_state_bytes"] = state.outer_state_bytes()
    if name in CO2_ARMS:  # per round, the slower rank's: blocked on the average / in total
        for key, values in (("round_wait_s", state.wait_s), ("round_s", state.round_s)):
            v = torch.tensor(values, dtype=torch.float64)
            dist.all_reduce(v, op=dist.ReduceOp.MAX)
            record[key] = v.tolist()
    lgreco = getattr(getattr(state, "reducer", None), "lgreco", None)
    if lgreco is not None:
        record["error_ratio"] = lgreco.error_ratio
        record["error_ratios"] = lgreco.plans[-1]["ratios"] if lgreco.plans else None
        record["plans"] = [{"step": p["step"], "settings": p["settings"]} for p in lgreco.plans]
    out = Path(args.out) / f"{args.workload}-{arm}-rank{rank}.json"
    tmp = out.with_suffix(".tmp")
    tmp.write_text(json.dumps(record))
    tmp.replace(out)
    # distcomp's states own a thread and a process group: closed here, while the default group
    # is alive (left to the interpreter's exit, a gloo destructor ran during finalisation and
    # aborted, "terminate called without an active exception", ~1 run in 12 under load)
    if hasattr(state, "close"):
        state.close()


if __name__ == "__main__":
    main()
