"""Deep GNNs on a whole graph: single process vs graph parallel vs GNNPipe vs the hybrid.

    python -m benchmarks.gnn.gnnpipe [--quick] [--layers 8,16,32] [--bandwidth 100mbit|none]
        [--json PATH]

Graph: a stochastic block model generated offline (``distcomp.gnn.graph.sbm``: 10,000 vertices,
8 blocks, average degree 10, 80% of edges inside a block, noisy block-mean features); model:
``deep_gcn`` (encoder, L residual GCN layers of width 64, head); Adam, a fixed number of
full-graph epochs, same seed in every mode. Modes: ``single`` (1 process), ``graph_parallel``
(2 ranks, METIS halves, halo exchange at every layer), ``pipeline`` (2 stages, 4 chunks) and
``hybrid`` (4 ranks = 2 stages x 2 partitions). As root with iproute2, multi-rank modes run on
the two-host network of ``benchmarks.network.netbench`` (ranks split over two network
namespaces joined by a ``tc tbf`` link, default 100 Mbit/s); otherwise on loopback, and the
records say so.
Records (flat, under ``results``): {"mode", "layers", "ranks", "status", "bytes_per_epoch",
"epoch_time_s", "test_acc", ...}; bytes are what the ledger counts summed over ranks; epoch
time is the slowest rank's mean after two warm-up epochs; accuracy is the final model's.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from contextlib import nullcontext
from pathlib import Path

from benchmarks.common import NATIVE_ABORT, RETRY_PORT_OFFSET, environment, reap, write_json
from benchmarks.network.launch import error_excerpt
from benchmarks.network.netns import NetnsError, TwoHosts, require_root

REPO = Path(__file__).resolve().parents[2]
RANKS = {"single": 1, "graph_parallel": 2, "pipeline": 2, "hybrid": 4}


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="small graph, 8/16 layers: minutes")
    p.add_argument("--modes", default=",".join(RANKS))
    p.add_argument("--layers", default=None, help="comma list (default 8,16,32; quick 8,16)")
    p.add_argument("--epochs", type=int, default=None, help="default 40 (quick 12)")
    p.add_argument("--nodes", type=int, default=None, help="default 10000 (quick 3000)")
    p.add_argument("--chunks", type=int, default=4)
    p.add_argument("--bandwidth", default="100mbit", help="tc rate, or 'none' for loopback")
    p.add_argument("--run-timeout", type=float, default=None,
                   help="seconds a run may take (default 900, quick 300)")
    p.add_argument("--stall-timeout", type=float, default=120.0,
                   help="seconds without a finished epoch = hung")
    p.add_argument("--logs", default=None, help="keep every rank's log here (default: a "
                   "temporary directory, removed at the end)")
    p.add_argument("--json", default=str(REPO / "bench-results" / "gnnpipe.json"))
    args = p.parse_args(argv)
    args.layers = [int(v) for v in (args.layers or ("8,16" if args.quick else "8,16,32"))
                   .split(",")]
    args.epochs = args.epochs or (12 if args.quick else 40)
    args.nodes = args.nodes or (3000 if args.quick else 10_000)
    args.run_timeout = args.run_timeout or (300.0 if args.quick else 900.0)
    args.modes = args.modes.split(",")
    bad = set(args.modes) - set(RANKS)
    if bad:
        p.error(f"unknown modes {sorted(bad)}; choose from {list(RANKS)}")
    return args


def worker_args(args, mode: str, layers: int, out: Path) -> list[str]:
    return ["-m", "benchmarks.gnn.worker", f"--mode={mode}", f"--layers={layers}",
            f"--epochs={args.epochs}", f"--nodes={args.nodes}", f"--chunks={args.chunks}",
            f"--timeout={min(120.0, args.stall_timeout)}", f"--out={out}"]


def launch(args, net: TwoHosts | None, mode: str, layers: int, index: int, out: Path
           ) -> tuple[dict, dict]:
    """Start the run's processes: {name: Popen}, {name: log file}."""
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(REPO))
    procs, logs = {}, {}
    ranks = RANKS[mode]
    if ranks == 1:
        logs["single"] = open(out / f"{mode}-{layers}.log", "w+")
        procs["single"] = subprocess.Popen([sys.executable, *worker_args(args, mode, layers, out)],
                                           env=env, cwd=REPO, stdout=logs["single"],
                                           stderr=subprocess.STDOUT, start_new_session=True)
        return procs, logs
    if net is None:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone",
               f"--nproc_per_node={ranks}", "--max_restarts=0",
               *worker_args(args, mode, layers, out)]
        logs["local"] = open(out / f"{mode}-{layers}.log", "w+")
        procs["local"] = subprocess.Popen(cmd, env=env, cwd=REPO, stdout=logs["local"],
                                          stderr=subprocess.STDOUT, start_new_session=True)
        return procs, logs
    port = 29600 + index
    for host in ("a", "b"):
        cmd = [sys.executable, "-m", "torch.distributed.run", "--nnodes=2",
               f"--nproc_per_node={ranks // 2}", "--rdzv_backend=c10d",
               f"--rdzv_endpoint={net.addr['a']}:{port}",
               f"--rdzv_id=gnnpipe-{os.getpid()}-{index}",
               f"--rdzv_conf=is_host={int(host == 'a')}", f"--local_addr={net.addr[host]}",
               "--max_restarts=0", *worker_args(args, mode, layers, out)]
        henv = dict(env, GLOO_SOCKET_IFNAME=net.iface[host], GNNBENCH_HOST=host)
        logs[host] = open(out / f"{mode}-{layers}-{host}.log", "w+")
        procs[host] = net.popen(host, cmd, env=henv, cwd=REPO, stdout=logs[host],
                                stderr=subprocess.STDOUT)
    return procs, logs


def run_one(args, net, mode: str, layers: int, index: int, out: Path) -> dict:
    """One run; a run whose rank died in a native abort (gloo's teardown has done so, rarely,
    under load, with no Python error before it) is run once more, and the record keeps the
    first attempt's error under ``first_attempt_error``."""
    rec = attempt(args, net, mode, layers, index, out)
    if rec["status"] == "error" and NATIVE_ABORT in rec["error"]:
        retry = attempt(args, net, mode, layers, index + RETRY_PORT_OFFSET, out)
        return {**retry, "first_attempt_error": rec["error"]}
    return rec


def attempt(args, net, mode: str, layers: int, index: int, out: Path) -> dict:
    base = {"mode": mode, "layers": layers, "ranks": RANKS[mode],
            "network": "none" if RANKS[mode] == 1 else
            (f"two hosts, {args.bandwidth}" if net else "loopback")}
    for stale in [out / f"{mode}-{layers}.json", *out.glob(f"{mode}-{layers}-rank*.progress")]:
        stale.unlink(missing_ok=True)
    procs, logs = launch(args, net, mode, layers, index, out)
    start, hung = time.monotonic(), None
    pattern = f"{mode}-{layers}-rank*.progress"
    while any(p.poll() is None for p in procs.values()):
        beats = [f.stat().st_mtime for f in out.glob(pattern)]
        silent = time.time() - max(beats) if beats else time.monotonic() - start
        if time.monotonic() - start > args.run_timeout:
            hung = f"still running after {args.run_timeout:.0f}s"
        elif silent > args.stall_timeout:
            hung = f"no epoch finished for {args.stall_timeout:.0f}s"
        if hung:
            break
        time.sleep(0.5)
    texts = reap(procs, logs)
    result = out / f"{mode}-{layers}.json"
    if hung or any(p.returncode for p in procs.values()) or not result.exists():
        why = hung or f"exit codes {[p.returncode for p in procs.values()]}"
        return {**base, "status": "error", "error": f"{why}: {error_excerpt(texts)}"}
    return {**base, **json.loads(result.read_text())}


def figures(results: list[dict], layers: int = 16) -> dict:
    """The issue's goal figures at ``layers`` (None where a run is missing or failed)."""
    ok = {r["mode"]: r for r in results if r["layers"] == layers and r["status"] == "ok"}

    def get(mode, key):
        return ok[mode][key] if mode in ok else None

    gp_b, pp_b = get("graph_parallel", "bytes_per_epoch"), get("pipeline", "bytes_per_epoch")
    gp_t, pp_t = get("graph_parallel", "epoch_time_s"), get("pipeline", "epoch_time_s")
    acc_s, acc_p = get("single", "test_acc"), get("pipeline", "test_acc")
    return {
        "layers": layers,
        "graph_parallel_over_pipeline_bytes": gp_b / pp_b if gp_b and pp_b else None,
        "pipeline_minus_single_test_acc_points":
            100 * (acc_p - acc_s) if acc_p is not None and acc_s is not None else None,
        "pipeline_over_graph_parallel_time": pp_t / gp_t if gp_t and pp_t else None,
    }


def main(argv=None) -> int:
    args = parse_args(argv)
    net = None
    if args.bandwidth != "none" and any(RANKS[m] > 1 for m in args.modes):
        try:
            require_root()
            net = TwoHosts(bandwidth=args.bandwidth)
        except NetnsError as err:
            print(f"gnnpipe: no two-host network ({err}); multi-rank modes run on loopback",
                  file=sys.stderr)
    start = time.perf_counter()
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(args.logs or tmp)
        out.mkdir(parents=True, exist_ok=True)
        with net if net is not None else nullcontext():
            index = 0
            for layers in args.layers:
                for mode in args.modes:
                    index += 1
                    rec = run_one(args, net, mode, layers, index, out)
                    results.append(rec)
                    print(f"  {mode:15s} L={layers:2d}: " + (
                        f"{rec['bytes_per_epoch'] / 1e6:8.2f} MB/epoch "
                        f"{rec['epoch_time_s']:6.2f} s/epoch test {100 * rec['test_acc']:5.1f}%"
                        if rec["status"] == "ok" else rec["error"][:300]),
                        file=sys.stderr, flush=True)
    payload = {
        "benchmark": "gnnpipe",
        "config": {"nodes": args.nodes, "epochs": args.epochs, "chunks": args.chunks,
                   "layers": args.layers, "modes": args.modes, "bandwidth": args.bandwidth,
                   "two_hosts": net is not None, "quick": args.quick,
                   "command": "python -m benchmarks.gnn.gnnpipe " + " ".join(
                       argv if argv is not None else sys.argv[1:]),
                   "seconds": round(time.perf_counter() - start, 1), "env": environment()},
        "results": results,
        "figures": figures(results, 16 if 16 in args.layers else max(args.layers)),
    }
    write_json(args.json, payload)
    f = payload["figures"]
    fmt = lambda v, spec: "n/a" if v is None else format(v, spec)  # noqa: E731
    print(f"gnnpipe: at {f['layers']} layers graph-parallel/pipeline bytes "
          f"{fmt(f['graph_parallel_over_pipeline_bytes'], '.2f')}x, pipeline - single test acc "
          f"{fmt(f['pipeline_minus_single_test_acc_points'], '+.1f')} pts, pipeline/graph-parallel "
          f"epoch time {fmt(f['pipeline_over_graph_parallel_time'], '.2f')} -> {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
