"""CO2's outer loop at 2 nodes x 2 ranks: loss at equal steps for each tau and outer momentum,
beside plain DDP on the same seed.

    python -m benchmarks.accuracy.co2_outer [--quick] [--workloads resnet,lm] [--taus 2,4]
        [--momenta 0,0.5] [--json PATH]

Why it exists: CO2 applies the average one round late on top of an inner optimizer that has
its own momentum (momentum SGD, AdamW), so the outer momentum and tau decide whether it keeps
up with all-reduce. Loss at equal steps does not depend on the link (a round is applied one
round late whatever its transfer time), so the 4 ranks run on the loopback, one thread each,
CO2 across the two "nodes" (gradients averaged inside a node every step, the pseudo-gradient
in bf16 between nodes, as netbench's ``co2_bf16`` arm). The figure is the ratio of smoothed
losses (mean of the last steps/10) at the last step. Writes JSON, prints one line.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import shlex
import sys
import tempfile
from pathlib import Path

import torch

from benchmarks.common import environment, free_port, spawn_ranks, write_json
from benchmarks.metrics import smooth_for, smoothed
from distcomp.workloads import WORKLOADS, prepare

REPO = Path(__file__).resolve().parents[2]
STEPS = {"full": {"resnet": 300, "lm": 150}, "quick": {"resnet": 4, "lm": 4}}
WORLD, PER_NODE = 4, 2


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--workloads", default="resnet,lm")
    p.add_argument("--taus", default="2,4", help="comma list of local steps per round")
    p.add_argument("--momenta", default="0,0.5", help="comma list of outer momenta")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--quick", action="store_true", help="a few steps: does it run at all")
    p.add_argument("--data", default=str(REPO / "bench-results" / "data"))
    p.add_argument("--json", default=str(REPO / "bench-results" / "co2-outer.json"))
    args = p.parse_args(argv)
    args.workloads = [w for w in args.workloads.split(",") if w]
    bad = [w for w in args.workloads if w not in WORKLOADS]
    if bad:
        p.error(f"unknown workload(s) {bad}; choose from {sorted(WORKLOADS)}")
    try:
        args.taus = [int(t) for t in args.taus.split(",")]
        args.momenta = [float(m) for m in args.momenta.split(",")]
    except ValueError:
        p.error("--taus takes whole numbers and --momenta numbers, comma separated")
    if min(args.taus) < 1 or not all(0 <= m < 1 for m in args.momenta):
        p.error("every tau must be >= 1 and every outer momentum in [0, 1)")
    return args


def _rank(rank: int, port: int, spec: dict, out: str) -> None:
    """One rank: every arm in turn from the same seed; rank 0 writes ``{out}.{i}``."""
    import torch.distributed as dist

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=WORLD,
                            timeout=datetime.timedelta(seconds=300))
    for i, arm in enumerate(spec["arms"]):
        curve = _train(rank, spec, arm)
        if rank == 0:
            Path(f"{out}.{i}").write_text(json.dumps(curve))
    dist.barrier()
    dist.destroy_process_group()


def _train(rank: int, spec: dict, arm: dict | None) -> list[float]:
    """Plain DDP (``arm`` None) or CO2 at ``arm``'s tau and outer momentum; the loss curve
    averaged over the ranks."""
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel as DDP

    from distcomp.co2 import CO2
    from distcomp.hooks import local_hook

    workload = WORKLOADS[spec["workload"]](spec["data"], seed=spec["seed"])
    torch.manual_seed(spec["seed"])
    model = DDP(workload.model())
    opt = workload.optimizer(model.parameters())
    if arm is not None:
        model.register_comm_hook(None, local_hook)
        opt = CO2(opt, model, tau=arm["tau"], outer_momentum=arm["outer_momentum"],
                  wire_dtype="bfloat16", ranks_per_node=PER_NODE, timeout_s=300)
    losses = [workload.train_step(model, opt, step, rank) for step in range(spec["steps"])]
    if arm is not None:
        opt.close()
    curve = torch.tensor(losses, dtype=torch.float64)
    dist.all_reduce(curve)
    return (curve / WORLD).tolist()


def run(spec: dict, tmp: Path) -> list[list[float]]:
    """``spec["arms"]`` on 4 spawned ranks; a loss curve per arm."""
    out = str(tmp / "rank0.json")
    codes = spawn_ranks(_rank, WORLD, (free_port(), spec, out), timeout_s=3600)
    files = [Path(f"{out}.{i}") for i in range(len(spec["arms"]))]
    if codes != [0] * WORLD or not all(f.exists() for f in files):
        raise RuntimeError(f"{spec['workload']}: ranks exited with {codes}")
    return [json.loads(f.read_text()) for f in files]


def main(argv=None) -> int:
    args = parse_args(argv)
    prepare(args.data)
    steps = STEPS["quick" if args.quick else "full"]
    arms = [None] + [{"tau": t, "outer_momentum": m} for t in args.taus for m in args.momenta]
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for w in args.workloads:
            spec = {"workload": w, "seed": args.seed, "steps": steps[w], "data": args.data,
                    "arms": arms}
            curves = run(spec, Path(tmp))
            k = smooth_for(steps[w])
            base = smoothed(curves[0], k)[-1]
            for arm, curve in zip(arms, curves):
                loss = smoothed(curve, k)[-1]
                rows.append({"workload": w, "arm": "allreduce" if arm is None else "co2_bf16",
                             **(arm or {}), "loss": loss, "loss_over_allreduce": loss / base,
                             "losses": curve})
    payload = {"benchmark": "co2_outer", "config": {
        "world": WORLD, "ranks_per_node": PER_NODE, "seed": args.seed,
        "steps": {w: steps[w] for w in args.workloads}, "quick": args.quick,
        "command": "python -m benchmarks.accuracy.co2_outer " + shlex.join(argv or sys.argv[1:]),
        "env": environment()}, "rows": rows}
    write_json(args.json, payload)
    print("co2_outer: " + ", ".join(
        f"{r['workload']}/tau {r['tau']} momentum {r['outer_momentum']} "
        f"{r['loss_over_allreduce']:.3f}x" for r in rows if r["arm"] != "allreduce")
        + f" (loss over allreduce's) -> {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
