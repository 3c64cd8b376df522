"""Two hosts, one slow link: every communication method measured by the same wire, and judged
by time to accuracy.

    sudo python -m benchmarks.network.netbench [--quick] [--bandwidth 100mbit|none] [--burst 1mbit]
        [--delay 20ms] [--arms local,allreduce,...] [--workloads lm,cnn,resnet] [--json PATH]

``--smoke`` only checks that a command's arms run (README's ``make bench`` lines do, in CI): one
launch per workload, a few steps, no shaping, figures that measure nothing.

Two network namespaces joined by a veth pair shaped with tc tbf (see benchmarks/network/netns.py)
each run one training rank under ``torchrun --nnodes=2`` (c10d rendezvous on host A's address, gloo
on the veth). For every workload and arm, same seed, data and steps: wire bytes per timed step from
host A's veth counters (tx + rx, headers included), the payload bytes our ledger counts, the
median step time (slowest rank) and the loss curve.

Accuracy: plain DDP (``allreduce``) runs first and sets the target, its smoothed loss (mean of
the last k = steps/10 steps) at the end of its run. Every arm reports its loss at equal steps
(the same mean at the same step) and ``time_to_target_s``, the wall-clock seconds until its
smoothed loss first reaches the target; arms may run on past the equal-steps point, up to twice
allreduce's steps, to get there (``null`` with the reason where they do not). An arm that
crashes or hangs is recorded with ``status: "error"`` and what it printed, never dropped.
An arm may carry its own setting, ``ARM@SETTING`` (``lgreco_topk@0.003``). Writes JSON, a PNG
plot (bytes, step time, loss against steps and against wall-clock) and one line.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

from benchmarks.arms import Arm, builtin_arms, method_arms
from benchmarks.common import NATIVE_ABORT, RETRY_PORT_OFFSET, environment, reap, write_json
from benchmarks.metrics import accuracy, smooth_for
from benchmarks.network.figures import figures, over_seeds
from benchmarks.network.launch import error_excerpt, launch, watch
from benchmarks.network.netns import NetnsError, TwoHosts, require_root
from benchmarks.sharded import MEMORY_KEYS
from distcomp.compression.flags import add_method_flags
from distcomp.workloads import WORKLOADS, prepare

REPO = Path(__file__).resolve().parents[2]
STEPS = {"full": {"lm": 150, "cnn": 300, "resnet": 600},
         "quick": {"lm": 7, "cnn": 16, "resnet": 16}}
PAST_TARGET = 2.0  # arms may run up to this many times allreduce's steps to reach its loss


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--arms", default=None,
                   help=f"comma list of arms (benchmarks.arms: {', '.join(builtin_arms())}, every "
                        "method and its variants, ARM@SETTING); 'all': every builtin arm, method "
                        "and L-GreCo form; default: DDP, local, torch's hooks and every method")
    p.add_argument("--workloads", default="lm,resnet")
    p.add_argument("--bandwidth", default="100mbit", help="tc rate, or 'none' for no shaping")
    p.add_argument("--burst", default=None,
                   help="tbf bucket, e.g. '1mbit' (default: the smallest that works for the rate)")
    p.add_argument("--delay", default=None, help="netem delay, e.g. '20ms' or '20ms 10ms'")
    p.add_argument("--quick", action="store_true", help="few steps: under 5 minutes")
    p.add_argument("--smoke", action="store_true",
                   help="does every arm run: all of a workload's arms in one launch, 3 steps "
                        "with a 1-step dense warm-up, planning and CO2 rounds every step, no "
                        "link shaping; its figures are not measurements")
    p.add_argument("--steps", type=int, default=None, help="override steps for every workload")
    p.add_argument("--warmup-steps", type=int, default=3, help="untimed steps at the start")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--seeds", default=None,
                   help="comma list: every arm runs once per seed (allreduce first, its loss that "
                        "seed's target); the table shows the first seed, the ratios get their "
                        "mean and 95%% interval over seeds (default: --seed alone)")
    p.add_argument("--ranks-per-host", type=int, default=1,
                   help="ranks in each namespace (world = 2 x this); between them traffic "
                        "takes the host's loopback, unshaped, counted apart from the wire")
    p.add_argument("--tau", type=int, default=4, help="local steps per co2 / diloco round")
    p.add_argument("--outer-momentum", type=float, default=None,
                   help="CO2 / DiLoCo outer momentum (default: the library's)")
    p.add_argument("--arm-timeout", type=float, default=None,
                   help="seconds an arm may take in all (default 300 quick, 1800 full)")
    p.add_argument("--stall-timeout", type=float, default=90.0,
                   help="seconds without a finished step (or without starting) = hung")
    p.add_argument("--data", default=str(REPO / "bench-results" / "data"))
    p.add_argument("--json", default=str(REPO / "bench-results" / "netbench.json"))
    p.add_argument("--plot", default=None, help="PNG path (default: next to the JSON)")
    knobs = add_method_flags(p)  # --rank (ours and torch's PowerSGD), --density, ...
    args = p.parse_args(argv)
    args.knobs = {k: getattr(args, k) for k in knobs if getattr(args, k) is not None}
    if args.arms == "all":
        args.arms = [*builtin_arms(), *method_arms(), *method_arms("lgreco_")]
    elif args.arms is None:
        args.arms = ["allreduce", "local", "torch_fp16", "torch_powersgd", *method_arms()]
    else:
        args.arms = [a for a in args.arms.split(",") if a]
    args.workloads = [w for w in args.workloads.split(",") if w]
    try:
        args.seeds = [int(s) for s in args.seeds.split(",") if s] if args.seeds else [args.seed]
    except ValueError:
        p.error(f"--seeds must be a comma list of integers, got {args.seeds!r}")
    if not args.seeds or len(set(args.seeds)) != len(args.seeds):
        p.error("--seeds must name at least one seed, each once")
    for arm in args.arms:
        try:
            Arm.parse(arm)
        except ValueError as err:
            p.error(str(err))
    bad = [w for w in args.workloads if w not in WORKLOADS]
    if bad:
        p.error(f"unknown workloads {bad}; choose from {sorted(WORKLOADS)}")
    # allreduce first: its loss is every other arm's target
    args.arms = sorted(args.arms, key=lambda a: a != "allreduce")
    if args.ranks_per_host < 1:
        p.error("--ranks-per-host must be >= 1")
    if args.outer_momentum is not None and not 0 <= args.outer_momentum < 1:
        p.error("--outer-momentum must be in [0, 1)")
    if args.steps is not None and args.steps <= args.warmup_steps:
        p.error("--steps must exceed --warmup-steps")
    args.bandwidth = None if args.bandwidth.lower() == "none" or args.smoke else args.bandwidth
    if args.arm_timeout is None:
        args.arm_timeout = 300.0 if args.quick else 1800.0
    args.plot = args.plot or str(Path(args.json).with_suffix(".png"))
    return args


def steps_for(args, workload: str) -> int:
    return args.steps or STEPS["quick" if args.quick else "full"][workload]


SMOKE_STEPS = 3  # past torch's 2 dense steps; CO2 / DiLoCo average every step (tau 1)


def run_arms(net: TwoHosts, args, workload: str, arms: list[str], index: int, out_dir: Path,
             target: float | None, seed: int) -> list[dict]:
    """``arms`` in one launch of both ranks (one arm, or every arm under ``--smoke``), a record
    each. Arms whose launch died in a native abort (``benchmarks.common.NATIVE_ABORT``) run once
    more on a fresh port; their records keep ``first_attempt_error``."""
    recs = attempt_arms(net, args, workload, arms, index, out_dir, target, seed)
    again = [r["arm"] for r in recs if r["status"] == "error" and NATIVE_ABORT in r["error"]]
    if not again:
        return recs
    retried = iter(attempt_arms(net, args, workload, again, index + RETRY_PORT_OFFSET, out_dir,
                                target, seed))
    return [{**next(retried), "first_attempt_error": r["error"]} if r["arm"] in again else r
            for r in recs]


def attempt_arms(net: TwoHosts, args, workload: str, arms: list[str], index: int, out_dir: Path,
                 target: float | None, seed: int) -> list[dict]:
    """Start both ranks in their namespaces, wait (bounded), and merge what they wrote.
    ``target``: allreduce's smoothed loss; an arm may run on until it reaches it. An arm both
    ranks finished is ``ok`` even if the launch failed later (the failure is kept in
    ``teardown_error``); the others are errors with what the ranks printed."""
    for arm in arms:  # a first attempt's heartbeats and records
        for stale in out_dir.glob(f"{workload}-{arm}-rank*.*"):
            stale.unlink()
    steps = SMOKE_STEPS if args.smoke else steps_for(args, workload)
    chase = target is not None and set(arms).isdisjoint({"local", "local_node", "allreduce"})
    extra = [f"--max-steps={int(PAST_TARGET * steps)}", f"--target-loss={target}"] if chase \
        else []
    knobs = [f"--{k.replace('_', '-')}={v}" for k, v in args.knobs.items()]
    warmup = 1 if args.smoke else args.warmup_steps
    lgreco = ([f"--lgreco-warmup={warmup}", "--lgreco-period=1", "--lgreco-window=1",
               f"--dense-warmup={warmup}"] if args.smoke else
              [f"--lgreco-warmup={max(4, warmup)}",
               f"--lgreco-period={max(4, (steps - warmup) // 3)}", "--lgreco-window=4"])
    label = arms[0] if len(arms) == 1 else "smoke"
    worker = [
        "benchmarks.network.worker", f"--workload={workload}", f"--arm={','.join(arms)}",
        f"--data={args.data}", f"--out={out_dir}", f"--steps={steps}",
        f"--warmup-steps={warmup}", f"--smooth={smooth_for(steps)}", *extra, *knobs,
        f"--seed={seed}", f"--timeout={args.arm_timeout}", *lgreco,
        f"--tau={1 if args.smoke else args.tau}",
        *([f"--outer-momentum={args.outer_momentum}"] if args.outer_momentum is not None else []),
    ]
    procs, logs = launch(net, worker, 29400 + index, out_dir / f"{workload}-{label}",
                         args.ranks_per_host)
    beats = f"{workload}-{label if len(arms) == 1 else '*'}-rank*.progress"
    hung = watch(procs, out_dir, beats, args)
    texts = reap(procs, logs)
    codes = {h: p.returncode for h, p in procs.items()}
    why = f"hang: {hung}, killed. " if hung else \
        f"exit codes {codes}: " if any(codes.values()) else None
    recs = []
    for arm in arms:
        base = {"workload": workload, "arm": arm, "steps": steps, "seed": seed}
        if len(list(out_dir.glob(f"{workload}-{arm}-rank*.json"))) == 2 * args.ranks_per_host:
            rec = {**base, **merge(out_dir, workload, arm, steps, target)}
            recs.append({**rec, "teardown_error": why + error_excerpt(texts)} if why else rec)
        else:
            recs.append({**base, "status": "error", "error": (why or "") + error_excerpt(texts),
                         "log_tail": {h: t.splitlines()[-40:] for h, t in texts.items()}})
    return recs


def merge(out_dir: Path, workload: str, arm: str, steps: int, target: float | None) -> dict:
    """One arm's record from its ranks' files: host a's first rank for times and the curve
    (already the slowest rank's and the mean over ranks), host a's veth and loopback counters
    (shared by its ranks), and the payload host a's ranks handed to collectives, summed."""
    recs = [json.loads(p.read_text()) for p in sorted(out_dir.glob(f"{workload}-{arm}-rank*.json"))]
    on_a = sorted((r for r in recs if r["host"] == "a"), key=lambda r: r["rank"])
    host_a = on_a[0]
    timed = host_a["timed_steps"]
    curve = host_a["losses"]
    wire = (host_a["tx_bytes"] + host_a["rx_bytes"]) / timed
    mine = [r["ledger_bytes_per_step"] for r in on_a]
    ledger = None if None in mine else sum(mine)
    return {
        "status": "ok", "error": None,
        "wire_bytes_per_step": wire,
        "ledger_bytes_per_step": ledger,
        "loopback_bytes_per_step": host_a.get("lo_bytes", 0) / timed,
        "wire_over_ledger": wire / ledger if ledger else None,
        "step_time_s": host_a["step_time_s"],
        "mean_step_time_s": host_a["mean_step_time_s"],
        "wall_step_time_s": host_a.get("wall_step_time_s"),
        **accuracy(curve, host_a["clock_s"], steps, target),
        "timed_steps": timed,
        "params": host_a["params"],
        "dense_bytes": host_a["dense_bytes"],
        "error_ratio": host_a.get("error_ratio"),
        "error_ratios": host_a.get("error_ratios"),
        "losses": curve,
        "clock": host_a["clock_s"],
        "plans": host_a.get("plans"),
        "mean_round_wait_s": _mean(host_a.get("round_wait_s")),
        "mean_round_s": _mean(host_a.get("round_s")),
        "outer_state_bytes": host_a.get("outer_state_bytes"),
        **{k: host_a.get(k) for k in MEMORY_KEYS},
    }



def _mean(values: list[float] | None) -> float | None:
    return sum(values) / len(values) if values else None


def summary_line(payload: dict, path: str) -> str:
    cfg = payload["config"]
    parts = []
    for r in payload["results"]:
        if r["status"] == "ok":
            tta = r.get("time_to_target_s")
            parts.append(f"{r['workload']}/{r['arm']} {r['step_time_s']:.2f}s "
                         f"{r['wire_bytes_per_step'] / 1e6:.2f}MB "
                         f"loss {r['loss_at_equal_steps']:.3f} "
                         f"target {'never' if tta is None else f'{tta:.0f}s'}")
        else:
            parts.append(f"{r['workload']}/{r['arm']} ERROR")
    seeds = cfg.get("seeds") or [cfg["seed"]]
    tail = f" (seed {seeds[0]}; {len(seeds)} seeds: over_seeds)" if len(seeds) > 1 else ""
    return (f"netbench {cfg['bandwidth'] or 'unshaped'}: " + ", ".join(parts) + tail
            + f" -> {path}")


def main(argv=None) -> int:
    args = parse_args(argv)
    try:
        require_root()
    except NetnsError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    prepare(args.data)
    by_seed: dict[int, list[dict]] = {s: [] for s in args.seeds}
    net = TwoHosts(args.bandwidth, args.delay, args.burst)
    with net, tempfile.TemporaryDirectory() as tmp:
        index = 0
        for workload, seed in ((w, s) for w in args.workloads for s in args.seeds):
            target = None
            launches = [args.arms] if args.smoke else [[arm] for arm in args.arms]
            for rec in (r for arms in launches for r in
                        run_arms(net, args, workload, arms, index, Path(tmp), target, seed)):
                index += 1
                arm = rec["arm"]
                by_seed[seed].append(rec)
                if arm == "allreduce" and rec["status"] == "ok":
                    target, ref = rec["loss_at_equal_steps"], rec["time_to_target_s"]
                if target is not None and rec["status"] == "ok" and not args.smoke:
                    tta = rec["time_to_target_s"]
                    rec["time_to_target_over_allreduce"] = None if tta is None else tta / ref
                status = "ok" if rec["status"] == "ok" else rec["error"][:200]
                print(f"  {workload}/{arm} seed {seed}: {status}", file=sys.stderr, flush=True)
    results = by_seed[args.seeds[0]]
    payload = {
        "benchmark": "netbench",
        "config": {
            "bandwidth": args.bandwidth, "burst": net.burst, "delay": args.delay,
            "quick": args.quick, "smoke": args.smoke,
            "arms": args.arms, "workloads": args.workloads,
            "steps": {w: SMOKE_STEPS if args.smoke else steps_for(args, w)
                      for w in args.workloads},
            "warmup_steps": args.warmup_steps, **args.knobs, "seed": args.seeds[0],
            "seeds": args.seeds, "tau": args.tau,
            "outer_momentum": args.outer_momentum,
            "ranks_per_host": args.ranks_per_host,
            "command": "python -m benchmarks.network.netbench " + " ".join(argv or sys.argv[1:]),
            "env": environment(),
        },
        "results": [{k: v for k, v in r.items() if k not in ("losses", "plans", "clock")}
                    for r in results],
        "curves": {f"{r['workload']}/{r['arm']}": r["losses"] for r in results if "losses" in r},
        "clocks": {f"{r['workload']}/{r['arm']}": r["clock"] for r in results if "clock" in r},
        "plans": {f"{r['workload']}/{r['arm']}": r["plans"] for r in results if r.get("plans")},
    }
    payload["figures"] = figures(payload["results"])
    if len(args.seeds) > 1:
        strip = ("losses", "plans", "clock")
        payload["seed_results"] = {str(s): [{k: v for k, v in r.items() if k not in strip}
                                            for r in recs] for s, recs in by_seed.items()}
        payload["seed_curves"] = {str(s): {f"{r['workload']}/{r['arm']}": r["losses"]
                                           for r in recs if "losses" in r}
                                  for s, recs in by_seed.items()}
        payload["over_seeds"] = over_seeds([figures(recs) for recs in by_seed.values()])
    write_json(args.json, payload)
    from benchmarks.network.report import plot

    plot(payload, args.plot)
    print(summary_line(payload, args.json))
    return 0


if __name__ == "__main__":
    sys.exit(main())
