"""Soak: the same short 2-rank job, many times per arm, counting hangs and crashes.

    python -m benchmarks.reliability.soak --json benchmarks/results/soak.json     # 100 per arm
    python -m benchmarks.reliability.soak --quick --json benchmarks/results/soak.json   # 10

Every run starts two new processes (``OMP_NUM_THREADS=1``, gloo, ``env://`` rendezvous on a
free port; forked from a server that imported torch once) running one arm: the gradient arms
of ``benchmarks.network.worker`` on its CNN workload (DDP's all-reduce, distcomp's PowerSGD /
top-k / QSGD hooks, the L-GreCo arms, CO2, and torch's own ``powerSGD_hook`` and
``fp16_compress_hook`` as reference arms) and the GNN pipeline of
``benchmarks.gnn.worker``. Each run has a wall-clock limit; a run past it is killed (whole
process group) and counted as a hang, a non-zero exit as a crash. The run's seed is its index,
so the final losses spread like seed-to-seed noise.

The lossy pass repeats it over the two-host link of ``benchmarks.network.netns`` with ``tc netem``
1% loss and 20 ms +- 10 ms delay (collective timeouts unchanged): runs must finish and end at
the loopback run's loss within its seed-to-seed spread. A kernel without sch_netem cannot
emulate that link; the pass is then recorded as skipped with that reason.

Records, flat, under ``results``: arm, network, runs, ok, hangs, crashes, max_seconds, the final
loss's mean and std over finished runs, and the first errors seen.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import importlib
import json
import multiprocessing as mp
import os
import signal
import statistics
import sys
import tempfile
import time
from pathlib import Path

from benchmarks.arms import method_arms
from benchmarks.common import environment, free_port, replace_block, write_json

REPO = Path(__file__).resolve().parents[2]
TORCH_ARMS = ["torch_powersgd", "torch_fp16"]
ARMS = ["allreduce", *method_arms(), *method_arms("lgreco_"), "co2", "gnnpipe", *TORCH_ARMS]
LOSSY = {"delay": "20ms 10ms", "loss": "1%"}


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--json", required=True)
    p.add_argument("--quick", action="store_true", help="10 runs per arm instead of 100")
    p.add_argument("--runs", type=int, default=None, help="runs per arm (overrides --quick)")
    p.add_argument("--arms", default=",".join(ARMS))
    p.add_argument("--networks", default="loopback,lossy")
    p.add_argument("--steps", type=int, default=16, help="training steps per run")
    p.add_argument("--run-timeout", type=float, default=60.0,
                   help="wall-clock seconds a run may take before it counts as a hang")
    p.add_argument("--collective-timeout", type=float, default=30.0,
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


def worker_argv(arm: str, seed: int, out: Path, args) -> tuple[str, list[str]]:
    """(worker module, its arguments) for one rank of one run."""
    timeout = str(args.collective_timeout)
    if arm == "gnnpipe":
        return "benchmarks.gnn.worker", [
            "--mode", "pipeline", "--layers", "4", "--nodes", "2000",
            "--epochs", str(max(2, args.steps // 4)), "--warmup-epochs", "1", "--chunks", "4",
            "--seed", str(seed), "--timeout", timeout, "--out", str(out)]
    return "benchmarks.network.worker", [
        "--workload", "cnn", "--arm", arm, "--data", args.data, "--out", str(out),
        "--steps", str(args.steps), "--warmup-steps", "2", "--seed", str(seed),
        "--timeout", timeout, "--lgreco-warmup", "4", "--lgreco-period", "6",
        "--lgreco-window", "2", "--tau", "4", "--torch-ddp-buckets"]


def final_loss(arm: str, out: Path) -> float:
    if arm == "gnnpipe":
        return json.loads(next(out.glob("pipeline-*.json")).read_text())["final_loss"]
    losses = json.loads((out / f"cnn-{arm}-rank0.json").read_text())["losses"]
    return statistics.fmean(losses[-4:])


# Ranks are forked from a server that has imported torch and the workers once, which saves
# ~2.5 s of a run's ~6 s here; each rank is still a new process with its own process group,
# sockets and threads. Not torch._dynamo (imported by the first optimizer built): forked after
# it is imported, torch's fp16 DDP hook hung at teardown in 5 of 12 runs (0 of 12 without).
CTX = mp.get_context("forkserver")
CTX.set_forkserver_preload(["benchmarks.network.worker", "benchmarks.gnn.worker",
                            "distcomp.hooks", "distcomp.co2"])


def _rank(module: str, argv: list[str], env: dict, log: str, netns: str | None) -> None:
    """One rank: own process group (killable whole), output to ``log``, inside ``netns``."""
    os.setpgrp()
    fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_APPEND)
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    if netns is not None:
        libc = ctypes.CDLL(None, use_errno=True)
        ns = os.open(f"/var/run/netns/{netns}", os.O_RDONLY)
        if libc.setns(ns, CLONE_NEWNET) != 0:
            raise OSError(ctypes.get_errno(), f"setns into {netns} failed")
    os.environ.update(env)
    code = importlib.import_module(module).main(argv)
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code or 0)


CLONE_NEWNET = 0x40000000


def one_run(arm: str, seed: int, root: Path, args, net=None) -> dict:
    """Start both ranks (inside ``net``'s namespaces when given), wait up to --run-timeout;
    {"status": "ok" | "hang" | "crash", "seconds", "loss" | "error"}."""
    out = Path(tempfile.mkdtemp(prefix=f"{arm}-{seed}-", dir=root))
    module, argv = worker_argv(arm, seed, out, args)
    master = net.addr["a"] if net else "127.0.0.1"
    port = 29600 + seed % 300 if net else free_port()
    procs = []
    start = time.monotonic()
    for rank in range(2):
        env = {"OMP_NUM_THREADS": "1", "RANK": str(rank), "LOCAL_RANK": "0",
               "WORLD_SIZE": "2", "MASTER_ADDR": master, "MASTER_PORT": str(port)}
        if net is not None:
            env["GLOO_SOCKET_IFNAME"] = net.iface["ab"[rank]]
        netns = net.ns["ab"[rank]] if net is not None else None
        procs.append(CTX.Process(target=_rank, args=(module, argv, env,
                                                      str(out / f"rank{rank}.log"), netns)))
        procs[-1].start()
    while any(p.is_alive() for p in procs) and time.monotonic() - start < args.run_timeout:
        time.sleep(0.05)
    seconds = time.monotonic() - start
    hung = any(p.is_alive() for p in procs)
    for p in procs:
        if p.is_alive():
            with contextlib.suppress(ProcessLookupError):
                os.killpg(p.pid, signal.SIGKILL)
        p.join()
    codes = [p.exitcode for p in procs]
    if hung or any(codes):
        logs = [(out / f"rank{r}.log").read_text(errors="replace").strip() for r in range(2)]
        tail = " | ".join(t.splitlines()[-1][:200] for t in logs if t)
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


def lossy_pass(arms: list[str], args, root: Path):
    """The lossy-link records, one per arm as it finishes. netem gives 1% loss and 20 ms +- 10
    ms delay; on a kernel without sch_netem the loss alone is emulated (iptables), and each
    record's ``link`` says which; skipped records say why neither could be set up."""
    from benchmarks.network.netns import NetnsError, TwoHosts

    with contextlib.ExitStack() as stack:
        try:
            try:
                net = stack.enter_context(TwoHosts(bandwidth=None, **LOSSY))
                link = "netem: 1% loss, 20 ms +- 10 ms delay"
            except NetnsError as err:
                if "netem" not in str(err):
                    raise
                net = stack.enter_context(TwoHosts(bandwidth=None))
                net.drop(0.01)
                link = "1% loss each way (iptables); no delay: this kernel has no sch_netem"
        except NetnsError as err:
            for arm in arms:
                yield {"arm": arm, "network": "lossy", "runs": 0, "ok": 0, "hangs": 0,
                       "crashes": 0, "max_seconds": None, "skipped": str(err)}
            return
        for arm in arms:
            yield {**soak_arm(arm, "lossy", args, root, net), "link": link}


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
    lines = ["| arm | network | runs | ok | hangs | crashes | slowest run (s) | final loss within "
             "loopback spread |", "|---|---|---|---|---|---|---|---|"]
    for r in records:
        if "skipped" in r:
            lines.append(f"| {r['arm']} | {r['network']} | not run: {r['skipped']} ||||||")
            continue
        same = {True: "yes", False: "no"}.get(r.get("loss_matches_loopback"), "-")
        lines.append(f"| {r['arm']} | {r['network']} | {r['runs']} | {r['ok']} | {r['hangs']} "
                     f"| {r['crashes']} | {r['max_seconds']} | {same} |")
    links = sorted({r["link"] for r in records if r.get("link")})
    lines += [f"\nLossy link: {link}." for link in links]
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.readme:
        body = table(json.loads(Path(args.json).read_text())["results"])
        replace_block(args.readme, "<!-- soak:start -->", "<!-- soak:end -->", body)
        return 0
    from distcomp.workloads import prepare

    prepare(args.data)
    arms, networks = args.arms.split(","), args.networks.split(",")
    records: list[dict] = []

    def save(record: dict | None) -> None:  # after every arm: a cut-short soak keeps its runs
        if record is not None:
            records.append(record)
            print(f"  {record['arm']:16s} {record['network']:8s} {record['ok']}/{record['runs']} "
                  f"ok, {record['hangs']} hangs, {record['crashes']} crashes, slowest "
                  f"{record['max_seconds']} s", flush=True)
        compare(records)
        write_json(args.json, {"benchmark": "soak", "environment": environment(),
                               "config": vars(args), "results": records})

    with tempfile.TemporaryDirectory() as tmp:
        if "loopback" in networks:
            for arm in arms:
                save(soak_arm(arm, "loopback", args, Path(tmp)))
        if "lossy" in networks:
            for record in lossy_pass(arms, args, Path(tmp)):
                save(record)
    save(None)
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
