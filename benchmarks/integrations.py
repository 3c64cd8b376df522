"""The same training job through DDP, DeepSpeed (ZeRO-0) and Horovod, each with its own
gradient all-reduce and with distcomp's compression, side by side in one run.

    python -m benchmarks.integrations --json benchmarks/results/integrations.json

Every arm is a real 2-rank job on this machine's loopback (torchrun for DDP and DeepSpeed,
``horovodrun --gloo`` for Horovod) running the launch scripts on the built-in teacher workload
with the same seed, model, data and optimizer. Per arm: the mean loss of the last 20 steps,
payload bytes per optimizer step (distcomp: the ledger; DDP and Horovod baselines: the dense
gradient, which is what their all-reduce carries; DeepSpeed: also what its own comms logger
counted), mean step time and whether the per-step losses equal the DDP arm with the same
``--comm`` (they should: same hook arithmetic). An integration that is not installed is
recorded as skipped with the reason. One summary line per framework: bytes and loss of the
compressed arm relative to that framework's own all-reduce.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchmarks.common import environment, replace_block, write_json

REPO = Path(__file__).resolve().parents[1]
SCRIPTS = {"ddp": "train.py", "deepspeed": "train_deepspeed.py", "horovod": "train_horovod.py"}
BASELINES = {"ddp": "none", "deepspeed": "none", "horovod": "none"}


def missing(framework: str) -> str | None:
    """Why this framework cannot run here, or None."""
    if framework == "deepspeed" and importlib.util.find_spec("deepspeed") is None:
        return "deepspeed is not installed (make deepspeed)"
    if framework == "horovod":
        if importlib.util.find_spec("horovod") is None:
            return "horovod is not installed (make horovod)"
        if not (Path(sys.executable).parent / "horovodrun").exists():
            return "horovodrun is not next to this python"
    return None


def run_arm(framework: str, comm: str, args: argparse.Namespace, tmp: Path) -> dict:
    script = str(REPO / "launch" / SCRIPTS[framework])
    log = tmp / f"{framework}-{comm}.json"
    train = ["--comm", comm, "--epochs", "1", "--steps-per-epoch", str(args.steps),
             "--width", str(args.width), "--rank", str(args.rank), "--log-json", str(log),
             # the method alone, from the first step (the defaults' warm-up and schedule are
             # measured by benchmarks.accuracy.defaults): bytes that are each method's own
             "--warmup-steps", "0", "--fixed-setting"]
    if framework == "horovod":
        cmd = [str(Path(sys.executable).parent / "horovodrun"), "-np", "2", "--gloo", "-H",
               "localhost:2", sys.executable, script, *train]
    else:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone",
               "--nproc_per_node=2", "--max_restarts=0", script, *train]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    start = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=args.timeout)
    seconds = time.perf_counter() - start
    if proc.returncode != 0:
        raise SystemExit(f"{framework} {comm} failed:\n{(proc.stdout + proc.stderr)[-3000:]}")
    line = [ln for ln in proc.stdout.splitlines() if "epoch 1/1" in ln][-1]
    saved = json.loads(log.read_text())
    losses = [r["loss"] for r in (saved if isinstance(saved, list) else saved["losses"])]
    record = {
        "framework": framework, "comm": comm, "steps": len(losses),
        "first_loss": sum(losses[:5]) / len(losses[:5]),
        "final_loss": sum(losses[-20:]) / len(losses[-20:]),
        "bytes_per_step": float(line.split("bytes/step ")[1].split()[0].replace(",", "")),
        "step_ms": float(line.split(" step ")[-1].split()[0]),
        "seconds": round(seconds, 1), "losses": losses,
    }
    if isinstance(saved, dict) and "deepspeed_comms" in saved:
        record["deepspeed_logged_allreduce_bytes_per_step"] = (
            saved["deepspeed_comms"].get("all_reduce", 0) / len(losses))
    return record


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", required=True)
    parser.add_argument("--comms", default="powersgd,topk,qsgd",
                        help="compressed arms, comma-separated (each framework also runs none)")
    parser.add_argument("--frameworks", default="ddp,deepspeed,horovod")
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--width", type=int, default=512)
    parser.add_argument("--rank", type=int, default=4)
    parser.add_argument("--timeout", type=float, default=600)
    parser.add_argument("--readme", help="regenerate this README's integrations table from "
                        "--json (nothing is run)")
    args = parser.parse_args(argv)
    if args.readme:
        body = table(json.loads(Path(args.json).read_text()))
        replace_block(args.readme, "<!-- integrations:start -->", "<!-- integrations:end -->",
                      body)
        return
    comms = ["none"] + [c for c in args.comms.split(",") if c]
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        for framework in args.frameworks.split(","):
            if framework not in SCRIPTS:
                raise SystemExit(f"--frameworks: unknown {framework!r}; choose from "
                                 f"{', '.join(SCRIPTS)}")
            why = missing(framework)
            for comm in comms:
                if why is not None:
                    results.append({"framework": framework, "comm": comm, "skipped": why})
                    continue
                results.append(run_arm(framework, comm, args, Path(tmp)))
                print(f"  {framework:9s} {comm:9s} loss {results[-1]['final_loss']:.4f} "
                      f"bytes/step {results[-1]['bytes_per_step']:,.0f} "
                      f"step {results[-1]['step_ms']:.1f} ms", flush=True)
    ddp = {r["comm"]: r["losses"] for r in results if r["framework"] == "ddp"}
    for r in results:
        if "losses" in r:
            r["same_losses_as_ddp"] = r["losses"] == ddp.get(r["comm"])
            del r["losses"]
    write_json(args.json, {"benchmark": "integrations", "environment": environment(),
                           "config": vars(args), "results": results})
    for framework in args.frameworks.split(","):
        arms = {r["comm"]: r for r in results if r["framework"] == framework and "skipped" not in r}
        base = arms.get(BASELINES[framework])
        if base is None:
            print(f"integrations: {framework} skipped", flush=True)
            continue
        parts = [f"{c} {base['bytes_per_step'] / r['bytes_per_step']:.0f}x fewer bytes, loss "
                 f"{r['final_loss'] / base['final_loss']:.3f}x" for c, r in arms.items()
                 if c != BASELINES[framework]]
        print(f"integrations: {framework}: " + "; ".join(parts), flush=True)


def table(payload: dict) -> str:
    """Markdown rows for README: one line per framework and --comm."""
    cfg = payload["config"]
    rows = ["| framework | `--comm` | bytes / step | vs its own all-reduce | loss (last 20 steps) "
            "| step (ms) | same losses as DDP |", "|---|---|---|---|---|---|---|"]
    base = {r["framework"]: r for r in payload["results"] if r["comm"] == "none"}
    for r in payload["results"]:
        if "skipped" in r:
            rows.append(f"| {r['framework']} | {r['comm']} | skipped: {r['skipped']} |||||")
            continue
        b = base[r["framework"]]
        rows.append(f"| {r['framework']} | {r['comm']} | {r['bytes_per_step']:,.0f} | "
                    + ("own all-reduce | " if r is b else
                       f"{b['bytes_per_step'] / r['bytes_per_step']:.1f}x fewer | ")
                    + f"{r['final_loss']:.4f} | {r['step_ms']:.1f} | "
                    f"{'yes' if r['same_losses_as_ddp'] else 'no'} |")
    return (f"2 ranks on one host (loopback, gloo), teacher MLP width {cfg['width']}, "
            f"{cfg['steps']} steps, PowerSGD rank {cfg['rank']}, top-k 1%, QSGD 4 bits. Step times "
            "on loopback show compute overhead only (the bandwidth-limited figures are "
            "netbench's):\n\n"
            + "\n".join(rows) + "\n")


if __name__ == "__main__":
    main()
