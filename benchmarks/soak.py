"""Soak: the same short 2-rank job, many times per arm, counting hangs and crashes.

    python -m benchmarks.soak --json benchmarks/results/soak.json           # 100 runs per arm
    python -m benchmarks.soak --quick --json benchmarks/results/soak.json   # 10 runs per arm

Every run starts two fresh processes (``OMP_NUM_THREADS=1``, gloo, ``env://`` rendezvous on a
free port) running one arm: the gradient arms of ``benchmarks.netbench_worker`` on its CNN
workload (DDP's all-reduce, distcomp's PowerSGD / top-k / QSGD hooks, the L-GreCo arms, CO2, and
torch's own ``powerSGD_hook`` and ``fp16_compress_hook`` as reference arms) and the GNN
pipeline of ``benchmarks.gnnpipe_worker``. Each run has a wall-clock limit; a run past it is
killed (whole process group) and counted as a hang, a non-zero exit as a crash. The run's seed
is its index, so the final losses spread like seed-to-seed noise.

The lossy pass repeats it over the two-host link of ``benchmarks.netns`` with ``tc netem``
1% loss and 20 ms +- 10 ms delay (collective timeouts unchanged): runs must finish and end at
the loopback run's loss within its seed-to-seed spread. A kernel without sch_netem cannot
emulate that link; the pass is then recorded as skipped with that reason.

Records, flat, under ``results``: arm, network, runs, ok, hangs, crashes, max_seconds, the final
loss's mean and std over finished runs, and the first errors seen.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchmarks.common import environment, reap, replace_block, write_json

REPO = Path(__file__).resolve().parents[1]
TORCH_ARMS = ["torch_powersgd", "torch_fp16"]
ARMS = ["allreduce", "powersgd", "topk", "qsgd", "lgreco_powersgd", "lgreco_topk",
        "lgreco_qsgd", "co2", "gnnpipe", *TORCH_ARMS]
LOSSY = {"delay": "20ms 10ms", "loss": "1%"}


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--json", required=True)
    p.add_argument("--quick", action="store_true", help="10 runs per arm instead of 100")
    p.add_argument("--runs", type=int, default=None, help="runs per arm (overrides --quick)")
    p.add_argument("--arms", default=",".join(ARMS))
    p.add_argument("--networks", default="loopback,lossy")
    p.add_argument("--steps", type=int, default=16, help="training steps per run")
    p.add_argument("--run-timeout", type=float, default=120.0,
                   help="wall-clock seconds a run may take before it counts as a hang")
    p.add_argument("--collective-timeout", type=float, default=60.0,
                   help="seconds any one collective may take inside a run")
    p.add_argument("--data", default=str(REPO / "bench-results" / "data"))
    p.add_argument("--readme", help="regenerate this README's soak table from --json")
    args = p.parse_args(argv)
    args.runs = args.runs or (10 if args.quick else 100)
    unknown = set(args.arms.split(",")) - set(ARMS)
    if unknown:
        p.error(f"--arms: unknown {sorted(unknown)}; choose from {', '.join(ARMS)}")
    if set(args.networks.split(",")) - {"loopback", "lossy"}:
        p.error(f"--networks must be loopback and/or lossy, got {args.networks!r}")
    return args


def worker_argv(arm: str, seed: int, out: Path, args) -> list[str]:
    timeout = str(args.collective_timeout)
    if arm == "gnnpipe":
        return [sys.executable, "-m", "benchmarks.gnnpipe_worker", "--mode", "pipeline",
                "--layers", "4", "--nodes", "2000", "--epochs", str(max(2, args.steps // 4)),
                "--warmup-epochs", "1", "--chunks", "4", "--seed", str(seed),
                "--timeout", timeout, "--out", str(out)]
    return [sys.executable, "-m", "benchmarks.netbench_worker", "--workload", "cnn",
            "--arm", arm, "--data", args.data, "--out", str(out), "--steps", str(args.steps),
            "--warmup-steps", "2", "--seed", str(seed), "--timeout", timeout,
            "--lgreco-warmup", "4", "--lgreco-period", "6", "--lgreco-window", "2",
            "--tau", "4"]


def final_loss(arm: str, out: Path) -> float:
    if arm == "gnnpipe":
        return json.loads(next(out.glob("pipeline-*.json")).read_text())["final_loss"]
    losses = json.loads((out / f"cnn-{arm}-rank0.json").read_text())["losses"]
    return statistics.fmean(losses[-4:])


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def one_run(arm: str, seed: int, root: Path, args, net=None) -> dict:
    """Start both ranks (inside ``net``'s namespaces when given), wait up to --run-timeout;
    {"status": "ok" | "hang" | "crash", "seconds", "loss" | "error"}."""
    out = Path(tempfile.mkdtemp(prefix=f"{arm}-{seed}-", dir=root))
    argv = worker_argv(arm, seed, out, args)
    master = net.addr["a"] if net else "127.0.0.1"
    port = 29600 + seed % 300 if net else free_port()
    procs, logs = {}, {}
    start = time.monotonic()
    for rank in range(2):
        env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(REPO), RANK=str(rank),
                   LOCAL_RANK="0", WORLD_SIZE="2", MASTER_ADDR=master, MASTER_PORT=str(port))
        logs[rank] = open(out / f"rank{rank}.log", "w+")
        kw = dict(env=env, cwd=REPO, stdout=logs[rank], stderr=subprocess.STDOUT)
        if net is None:
            procs[rank] = subprocess.Popen(argv, start_new_session=True, **kw)
        else:
            host = "ab"[rank]
            kw["env"]["GLOO_SOCKET_IFNAME"] = net.iface[host]
            procs[rank] = net.popen(host, argv, **kw)
    while any(p.poll() is None for p in procs.values()) and \
            time.monotonic() - start < args.run_timeout:
        time.sleep(0.05)
    seconds = time.monotonic() - start
    hung = any(p.poll() is None for p in procs.values())
    texts = reap(procs, logs)  # kills what is left, whole process groups
    codes = [p.returncode for p in procs.values()]
    if hung or any(codes):
        tail = " | ".join(t.strip().splitlines()[-1][:200] for t in texts.values() if t.strip())
        return {"status": "hang" if hung else "crash", "seconds": seconds,
                "error": f"exit codes {codes}: {tail}"}
    return {"status": "ok", "seconds": seconds, "loss": final_loss(arm, out)}


def soak_arm(arm: str, network: str, args, root: Path, net=None) -> dict:
    runs = [one_run(arm, seed, root, args, net) for seed in range(args.runs)]
    losses = [r["loss"] for r in runs if r["status"] == "ok"]
    return {"arm": arm, "network": network, "runs": len(runs),
            "ok": sum(r["status"] == "ok" for r in runs),
            "hangs": sum(r["status"] == "hang" for r in runs),
            "crashes": sum(r["status"] == "crash" for r in runs),
            "max_seconds": round(max(r["seconds"] for r in runs), 2),
            "loss_mean": statistics.fmean(losses) if losses else None,
            "loss_std": statistics.stdev(losses) if len(losses) > 1 else None,
            "errors": [r["error"] for r in runs if "error" in r][:3]}


def lossy_pass(arms: list[str], args, root: Path) -> list[dict]:
    from benchmarks.netns import NetnsError, TwoHosts

    try:
        with TwoHosts(bandwidth=None, **LOSSY) as net:
            return [soak_arm(arm, "lossy", args, root, net) for arm in arms]
    except NetnsError as err:
        why = str(err).split("; run without")[0]
        return [{"arm": arm, "network": "lossy", "runs": 0, "ok": 0, "hangs": 0,
                 "crashes": 0, "max_seconds": None, "skipped": why} for arm in arms]


def compare(records: list[dict]) -> None:
    """Mark each lossy record: does its mean final loss sit within the loopback runs'
    seed-to-seed spread (2 standard deviations of the loopback mean's difference)?"""
    clean = {r["arm"]: r for r in records if r["network"] == "loopback"}
    for r in records:
        c = clean.get(r["arm"])
        if r["network"] != "lossy" or not c or r.get("loss_mean") is None \
                or c.get("loss_std") is None:
            continue
        spread = 2 * c["loss_std"] * (2 / min(r["ok"], c["ok"])) ** 0.5
        r["loss_matches_loopback"] = abs(r["loss_mean"] - c["loss_mean"]) <= spread


def table(records: list[dict]) -> str:
    lines = ["| arm | network | runs | ok | hangs | crashes | slowest run (s) |",
             "|---|---|---|---|---|---|---|"]
    for r in records:
        if "skipped" in r:
            lines.append(f"| {r['arm']} | {r['network']} | not run: {r['skipped']} |||||")
            continue
        lines.append(f"| {r['arm']} | {r['network']} | {r['runs']} | {r['ok']} | {r['hangs']} "
                     f"| {r['crashes']} | {r['max_seconds']} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.readme:
        body = table(json.loads(Path(args.json).read_text())["results"])
        replace_block(args.readme, "<!-- soak:start -->", "<!-- soak:end -->", body)
        return 0
    from benchmarks.workloads import prepare

    prepare(args.data)
    arms, networks = args.arms.split(","), args.networks.split(",")
    records = []
    with tempfile.TemporaryDirectory() as tmp:
        if "loopback" in networks:
            for arm in arms:
                records.append(soak_arm(arm, "loopback", args, Path(tmp)))
                r = records[-1]
                print(f"  {arm:16s} loopback {r['ok']}/{r['runs']} ok, {r['hangs']} hangs, "
                      f"{r['crashes']} crashes, slowest {r['max_seconds']} s", flush=True)
        if "lossy" in networks:
            records += lossy_pass(arms, args, Path(tmp))
    compare(records)
    write_json(args.json, {"benchmark": "soak", "environment": environment(),
                           "config": vars(args), "results": records})
    ours = [r for r in records if r["arm"] not in TORCH_ARMS and "skipped" not in r]
    theirs = [r for r in records if r["arm"] in TORCH_ARMS and "skipped" not in r]
    print(f"soak: distcomp arms {sum(r['ok'] for r in ours)}/{sum(r['runs'] for r in ours)} "
          f"ok, {sum(r['hangs'] for r in ours)} hangs, {sum(r['crashes'] for r in ours)} "
          f"crashes; torch's arms {sum(r['ok'] for r in theirs)}/"
          f"{sum(r['runs'] for r in theirs)} ok, {sum(r['hangs'] for r in theirs)} hangs; "
          f"{sum('skipped' in r for r in records)} records skipped")
    return 0 if all(r["hangs"] == r["crashes"] == 0 for r in ours) else 1


if __name__ == "__main__":
    raise SystemExit(main())
