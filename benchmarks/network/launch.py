"""Starting ``benchmarks.network.netbench``'s two ranks, one per namespace, and watching them.

Each host runs ``torchrun --nnodes=2 --nproc_per_node=N`` with c10d rendezvous on host A's
address and gloo bound to its own veth, so every byte the ranks exchange crosses the shaped link.
A launch is watched, never waited on blindly: ranks write a heartbeat file per step, and a
launch that stops beating, runs too long, or loses one host is killed and reported.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

from benchmarks.network.netns import TwoHosts

REPO = Path(__file__).resolve().parents[2]
PEER_GRACE_S = 20.0


def launch(net: TwoHosts, worker: list[str], port: int, log_prefix: Path,
           ranks_per_host: int = 1) -> tuple[dict, dict]:
    """Start ``python -m <worker...>`` under torchrun on hosts a and b, ``ranks_per_host``
    ranks each (they talk to each other over the namespace's unshaped loopback); returns the
    processes and their open log files (``{log_prefix}-{host}.log``), by host."""
    procs, logs = {}, {}
    for host in ("a", "b"):
        env = dict(os.environ, OMP_NUM_THREADS="1", GLOO_SOCKET_IFNAME=net.iface[host],
                   NETBENCH_IFACE=net.iface[host], NETBENCH_HOST=host, PYTHONPATH=str(REPO),
                   PYTHONFAULTHANDLER="1")  # a crash prints every thread's Python stack
        cmd = [
            sys.executable, "-m", "torch.distributed.run", "--nnodes=2",
            f"--nproc_per_node={ranks_per_host}",
            "--rdzv_backend=c10d", f"--rdzv_endpoint={net.addr['a']}:{port}",
            f"--rdzv_id=netbench-{os.getpid()}-{port}",
            f"--rdzv_conf=is_host={int(host == 'a')}", f"--local_addr={net.addr[host]}",
            "--max_restarts=0", "-m", *worker,
        ]
        logs[host] = open(f"{log_prefix}-{host}.log", "w+")
        procs[host] = net.popen(host, cmd, env=env, cwd=REPO, stdout=logs[host],
                                stderr=subprocess.STDOUT)
    return procs, logs


def watch(procs: dict, out_dir: Path, pattern: str, args) -> str | None:
    """Wait for both ranks; return why the launch counts as hung (None if both exited): no step
    finished for ``--stall-timeout`` seconds (heartbeat files ``out_dir/pattern``), the whole
    launch ran past ``--arm-timeout``, or one host failed and the other still runs
    ``PEER_GRACE_S`` later (it waits on the dead peer: a collective, or torchrun's exit barrier,
    would hold it for the full process-group timeout)."""
    start = time.monotonic()
    failed_at = None
    while any([p.poll() is None for p in procs.values()]):  # a list: poll every one
        now = time.monotonic()
        if now - start > args.arm_timeout:
            return f"still running after {args.arm_timeout:.0f}s"
        dead = {h: p.returncode for h, p in procs.items() if p.returncode}
        if dead and failed_at is None:
            failed_at = now
        if failed_at is not None and now - failed_at > PEER_GRACE_S:
            return f"host exited {dead}, its peer still ran {PEER_GRACE_S:.0f}s later"
        beats = [f.stat().st_mtime for f in out_dir.glob(pattern)]
        last = max(beats) if beats else None
        silent = time.time() - last if last is not None else now - start
        if silent > args.stall_timeout:
            steps = [f.read_text() for f in out_dir.glob(pattern)]
            return f"no step finished for {args.stall_timeout:.0f}s (last steps started: {steps})"
        time.sleep(0.5)
    return None


def error_excerpt(texts: dict[str, str], limit: int = 600) -> str:
    """The most telling lines of the ranks' output (gloo's what(), Python errors, signals)."""
    keys = ("what():", "terminate", "Abort", "Error", "error", "Signal", "SIGABRT", "Killed",
            "mismatch")
    lines = []
    for host, text in texts.items():
        for line in text.splitlines():
            line = line.strip()
            if any(k in line for k in keys) and "File " not in line and line not in lines:
                lines.append(f"[{host}] {line}")
    return " | ".join(lines)[:limit] or "no output"
