"""What each default of the compression hook costs and buys: loss at equal steps and bytes,
one default switched off at a time, paired with plain DDP on the same seeds.

    python -m benchmarks.accuracy.defaults [--quick] [--workloads resnet,cnn,lm] [--seeds 0,1]
        [--arms NAME[@SETTING],...] [--json PATH] [--readme README.md]

Loss at equal steps does not depend on the link, so the ranks run on the loopback (2 gloo
ranks, one thread each), far faster than ``benchmarks.network.netbench``; bytes are the ledger's
payload per step. Every arm runs on every seed with the same data and initial weights as the
``allreduce`` arm of that seed; its figure is the ratio of the two smoothed losses (mean of the
last steps/10 steps at the last step), averaged over seeds, with the per-seed ratios beside it.
Writes JSON and prints one line; ``--readme`` regenerates README's table from the JSON.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import shlex
import statistics
import sys
import tempfile
from pathlib import Path

import torch

from benchmarks.accuracy.frontier import frontier_rows, frontier_table
from benchmarks.accuracy.frontier import plot as plot_frontier
from benchmarks.arms import Arm, RunSettings, method_arms
from benchmarks.common import (
    ci95,
    environment,
    free_port,
    replace_block,
    spawn_ranks,
    write_json,
)
from benchmarks.metrics import smooth_for, smoothed
from distcomp import method_class
from distcomp.workloads import WORKLOADS, prepare

REPO = Path(__file__).resolve().parents[2]


def markers(json_path: str) -> tuple[str, str]:
    """README markers of the block a result file fills: ``defaults.json`` fills
    ``<!-- defaults:start -->``, ``defaults-seeds.json`` fills ``<!-- defaults-seeds:start -->``,
    so several runs (more seeds, other arms) each keep their own generated table."""
    stem = Path(json_path).stem
    return f"<!-- {stem}:start -->", f"<!-- {stem}:end -->"


# quick: past the 10 dense warm-up steps where it is cheap, so the compressed steps run too
STEPS = {"full": {"lm": 150, "cnn": 300, "resnet": 600},
         "quick": {"lm": 3, "cnn": 14, "resnet": 14},
         # smoke: a 1-step dense warm-up where the arm sets none (torch's least: 2)
         "smoke": {"lm": 3, "cnn": 4, "resnet": 4}}
OLD = {"rank": 4, "warmup_steps": 0, "accordion": False, "min_compression_rate": 1.0}
# named variants: name -> (arm, hook options that change); every other arm of benchmarks.arms
# (each method, "lgreco_topk", ...) runs under its own name. The defaults, each with one undone:
ARMS = {
    "allreduce": ("allreduce", {}),
    # torch's fp16_compress_hook: nearly exact, so its ratio is how far any perturbation of the
    # trajectory moves the loss at equal steps, the floor under every compressed arm's ratio
    "torch fp16 (noise floor)": ("torch_fp16", {}),
    "powersgd no warm-up": ("powersgd", {"warmup_steps": 0}),
    "powersgd no accordion": ("powersgd", {"accordion": False}),
    "powersgd rank 4": ("powersgd", {"rank": 4}),
    "powersgd min rate 1": ("powersgd", {"min_compression_rate": 1.0}),
    "powersgd before (#24)": ("powersgd", OLD),
    # candidates for the ResNet's remaining gap (not defaults): more rank, or more of the
    # gentle setting (a layer is critical at a 20% change of its gradient norm, not 50%)
    "powersgd rank 16": ("powersgd", {"rank": 16}),
    "powersgd accordion threshold 0.2": ("powersgd", {"accordion_threshold": 0.2}),
    # L-GreCo with the library's planner defaults, budgeted on uniform rank 8 and rank 16:
    # does per-layer rank buy rank 16's accuracy for fewer bytes than uniform rank 16?
    "lgreco powersgd rank 16": ("lgreco_powersgd", {"rank": 16}),
    # ... planned on each layer's error relative to its gradient (Adam rescales every layer)
    "lgreco powersgd relative rank 16": ("lgreco_powersgd_relative", {"rank": 16}),
    # torch's powerSGD_hook at our rank and dense warm-up, one bucket (its several-bucket race
    # aborts gloo, see benchmarks.arms.Arm.bucket_cap_mb): the anchor for "powersgd no accordion"
    "torch powersgd (rank 8 warm-up 10)": ("torch_powersgd", {}),
    "topk no momentum correction": ("topk", {"momentum": 0.0}),
    "topk no accordion": ("topk", {"accordion": False}),
    "topk density warm-up 100": ("topk", {"density_warmup_steps": 100}),
    "topk before (#24)": ("topk", {"momentum": 0.0, "warmup_steps": 0, "accordion": False,
                                   "min_compression_rate": 1.0}),
    "qsgd no accordion": ("qsgd", {"accordion": False}),
}
# older names of arms that are now benchmarks.arms forms (the committed results use them)
ALIASES = {"lgreco powersgd": "lgreco_powersgd", "lgreco powersgd relative":
           "lgreco_powersgd_relative", "lgreco topk": "lgreco_topk", "lgreco qsgd": "lgreco_qsgd"}
# named only, not in "all": candidates for a default, and torch's hook as an anchor
NAMED_ONLY = {"powersgd rank 16", "powersgd accordion threshold 0.2", "lgreco powersgd rank 16",
              "lgreco powersgd relative rank 16", "torch powersgd (rank 8 warm-up 10)"}


def default_arms() -> list[str]:
    """'all': plain DDP, the noise floor, every method with the defaults, and each named
    variant not in NAMED_ONLY."""
    named = [a for a in ARMS if a not in NAMED_ONLY]
    return [*named[:2], *method_arms(), *named[2:]]


def arm_spec(arm: str) -> tuple[str, dict]:
    """An arm's (benchmarks.arms text, hook options that change): a named variant, an older
    name, or any arm of benchmarks.arms. ``NAME@SETTING`` is arm NAME with its method's knob
    (rank, density, bits, ...) at SETTING, everything else as NAME has it, so budget sweeps
    (``powersgd@2``, ``lgreco topk@0.003``) are measured over seeds like any arm; ValueError
    for an unknown name or a setting the knob does not take."""
    name, at, setting = arm.partition("@")
    text, options = ARMS.get(name, (ALIASES.get(name, name), {}))
    parsed = Arm.parse(text + at + setting)
    if parsed.setting is not None:  # the @SETTING wins over the variant's own knob
        options = {k: v for k, v in options.items() if k != method_class(parsed.method).knob}
    return parsed.text, options


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--workloads", default="resnet,cnn,lm")
    p.add_argument("--seeds", default="0,1", help="comma list of seeds (paired across arms)")
    p.add_argument("--arms", default="all",
                   help=f"comma list of the named variants ({', '.join(ARMS)}) and any arm of "
                        "benchmarks.arms (every method, lgreco_METHOD, ...), each optionally "
                        "NAME@SETTING (its method's knob); 'all' (the default): every method "
                        f"and every variant but {', '.join(sorted(NAMED_ONLY))}")
    p.add_argument("--lm-arms", default="allreduce,torch fp16 (noise floor),powersgd,"
                   "powersgd no warm-up,powersgd no accordion,powersgd before (#24),topk,qsgd",
                   help="the arms the (slow) lm workload runs, from --arms")
    p.add_argument("--quick", action="store_true",
                   help="a few steps, every arm of a seed in one pair of processes: does it run "
                        "at all, paired over seeds")
    p.add_argument("--smoke", action="store_true",
                   help="does every arm run (how CI runs make bench's lines): every arm of a "
                        "workload in one pair of processes, the first seed, 3-4 steps with a "
                        "1-step dense warm-up; its figures mean nothing")
    p.add_argument("--data", default=str(REPO / "bench-results" / "data"))
    p.add_argument("--json", default=str(REPO / "bench-results" / "defaults.json"))
    p.add_argument("--readme", default=None, help="regenerate README's table from --json")
    args = p.parse_args(argv)
    args.workloads = [w for w in args.workloads.split(",") if w]
    args.seeds = [int(s) for s in args.seeds.split(",") if s]
    args.arms = default_arms() if args.arms == "all" else args.arms.split(",")
    args.lm_arms = args.lm_arms.split(",")
    bad = [w for w in args.workloads if w not in WORKLOADS]
    if bad:
        p.error(f"unknown workloads {bad}; workloads: {sorted(WORKLOADS)}")
    for arm in args.arms + args.lm_arms:
        try:
            arm_spec(arm)
        except ValueError as e:
            p.error(f"{e}; named variants: {list(ARMS)}, each optionally NAME@SETTING")
    if "allreduce" not in args.arms:
        args.arms.insert(0, "allreduce")  # every ratio is to it
    return args


def _rank(rank: int, port: int, spec: dict, out: str) -> None:
    """One training rank: each of ``spec["arms"]`` in turn from the same seed (one arm, or a
    whole workload under ``--smoke``), writing ``{out}.{i}`` per arm on rank 0."""
    import torch.distributed as dist

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=2,
                            timeout=datetime.timedelta(seconds=300))
    for i, arm in enumerate(spec["arms"]):
        rec = _train(rank, {**spec, "arm": arm})
        if rank == 0:
            Path(f"{out}.{i}").write_text(json.dumps(rec))
    dist.barrier()
    dist.destroy_process_group()


def _train(rank: int, spec: dict) -> dict:
    """One arm: its hook (what the method reads from the workload's optimizer included: top-k's
    momentum correction with momentum SGD), fixed steps, then the mean loss curve over ranks,
    the ledger's bytes per step and L-GreCo's plans."""
    import torch.distributed as dist

    workload = WORKLOADS[spec["workload"]](spec["data"], seed=spec["seed"])
    torch.manual_seed(spec["seed"])
    text, options = arm_spec(spec["arm"])
    arm = Arm.parse(text)
    net = workload.model()
    model = arm.wrap(net)
    run = RunSettings(dense_warmup=1 if spec.get("smoke") else None, extra=options)
    opt, state = arm.setup(model, workload.optimizer(model.parameters()), run)
    losses = []
    for step in range(spec["steps"]):
        losses.append(workload.train_step(model, opt, step, rank))
    curve = torch.tensor(losses, dtype=torch.float64)
    dist.all_reduce(curve)
    sent = None
    if state is not None:
        book = state.ledger
        sent = sum(book.step_bytes(s) for s in range(spec["steps"])) / spec["steps"]
    dense = sum(p.numel() * p.element_size() for p in model.parameters())
    lgreco = getattr(getattr(state, "reducer", None), "lgreco", None)
    plans = None if lgreco is None else [
        {"step": p["step"], "settings": p["settings"], "ratios": p["ratios"]} for p in lgreco.plans]
    if state is not None:
        state.close()
    return {"losses": (curve / 2).tolist(), "bytes": sent, "dense_bytes": dense, "plans": plans}


def run(spec: dict, tmp: Path) -> list[dict]:
    """``spec["arms"]`` on two spawned ranks; a record per arm."""
    out = str(tmp / "rank0.json")
    codes = spawn_ranks(_rank, 2, (free_port(), spec, out), timeout_s=1800)
    files = [Path(f"{out}.{i}") for i in range(len(spec["arms"]))]
    if codes != [0, 0] or not all(f.exists() for f in files):
        raise RuntimeError(f"{spec['workload']}/{','.join(spec['arms'])} seed {spec['seed']}: "
                           f"ranks exited with {codes}")
    k = smooth_for(spec["steps"])
    recs = []
    for f in files:
        rec = json.loads(f.read_text())
        f.unlink()
        recs.append({"loss": smoothed(rec["losses"], k)[-1], "bytes_per_step": rec["bytes"],
                     "dense_bytes": rec["dense_bytes"],
                     **({"plans": rec["plans"]} if rec["plans"] else {})})
    return recs


def summarise(runs: list[dict]) -> list[dict]:
    """One row per workload and arm: mean loss ratio to allreduce over the seeds (paired),
    per-seed ratios, bytes per step and their ratio to dense."""
    base = {(r["workload"], r["seed"]): r["loss"] for r in runs if r["arm"] == "allreduce"}
    rows = []
    for w in dict.fromkeys(r["workload"] for r in runs):
        for arm in dict.fromkeys(r["arm"] for r in runs if r["workload"] == w):
            mine = [r for r in runs if r["workload"] == w and r["arm"] == arm]
            ratios = [r["loss"] / base[(w, r["seed"])] for r in mine]
            sent = mine[0]["bytes_per_step"]
            rows.append({
                "workload": w, "arm": arm, "seeds": [r["seed"] for r in mine],
                "loss": statistics.fmean(r["loss"] for r in mine),
                "loss_over_allreduce": statistics.fmean(ratios), "per_seed": ratios,
                "ci95": ci95(ratios),
                "bytes_per_step": sent,
                "dense_over_sent": None if not sent else mine[0]["dense_bytes"] / sent,
            })
    return rows


def table(payload: dict, json_path: str) -> str:
    cfg = payload["config"]
    lines = [f"Steps {cfg['steps']}, seeds {cfg['seeds']}, 2 gloo ranks on the loopback. "
             f"Command: `{cfg['command']}` → `{json_path}`", "",
             "| workload | arm | loss at equal steps × allreduce (± 95% interval from 3 "
             "seeds up; per seed) | payload MB/step "
             "| dense / sent |", "|---|---|---|---|---|"]
    for r in payload["rows"]:
        per = ", ".join(f"{x:.3f}" for x in r["per_seed"])
        if len(r["per_seed"]) > 2:
            per = f"± {r['ci95']:.3f}; {per}"
        mb = "" if r["bytes_per_step"] is None else f"{r['bytes_per_step'] / 1e6:.3f}"
        ratio = "" if r["dense_over_sent"] is None else f"{r['dense_over_sent']:.1f}"
        lines.append(f"| {r['workload']} | {r['arm']} | **{r['loss_over_allreduce']:.3f}** "
                     f"({per}) | {mb} | {ratio} |")
    frontier = frontier_rows(payload.get("runs", []))
    if frontier:
        lines += ["", f"L-GreCo against uniform at each budget, paired by seed (plot: "
                  f"`{Path(json_path).with_suffix('.png')}`):", "", frontier_table(frontier)]
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.readme:
        payload = json.loads(Path(args.json).read_text())
        replace_block(args.readme, *markers(args.json), table(payload, os.path.relpath(args.json)))
        return 0
    prepare(args.data)
    steps = STEPS["smoke" if args.smoke else "quick" if args.quick else "full"]
    runs = []
    with tempfile.TemporaryDirectory() as tmp:
        for w in args.workloads:
            arms = [a for a in args.arms if w != "lm" or a in args.lm_arms]
            seeds = args.seeds[:1] if w == "lm" else args.seeds
            # full runs start every arm afresh; quick and smoke ones share the processes
            launches = [arms] if args.smoke or args.quick else [[arm] for arm in arms]
            for seed in seeds[:1] if args.smoke else seeds:
                for some in launches:
                    spec = {"workload": w, "seed": seed, "steps": steps[w], "data": args.data,
                            **({"smoke": True} if args.smoke else {})}
                    for arm, rec in zip(some, run({**spec, "arms": some}, Path(tmp))):
                        runs.append({**spec, "arm": arm, **rec})
                        print(f"  {w}/{arm} seed {seed}: loss {rec['loss']:.4f}",
                              file=sys.stderr, flush=True)
    payload = {"benchmark": "defaults", "config": {
        "steps": {w: steps[w] for w in args.workloads}, "seeds": args.seeds,
        "smoke": args.smoke,
        "command": "python -m benchmarks.accuracy.defaults " + shlex.join(argv or sys.argv[1:]),
        "env": environment()}, "runs": runs, "rows": summarise(runs)}
    write_json(args.json, payload)
    frontier = frontier_rows(runs)
    if frontier:
        plot_frontier(frontier, str(Path(args.json).with_suffix(".png")))
    print("defaults: " + ", ".join(f"{r['workload']}/{r['arm']} {r['loss_over_allreduce']:.3f}x"
                                   for r in payload["rows"]) + f" -> {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
