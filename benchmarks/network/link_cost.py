"""What the emulated link costs the compute it shares two cores with.

    sudo python -m benchmarks.network.link_cost [--bursts 32kbit,1mbit] [--seconds 15] --json PATH

netbench's two "hosts" are namespaces on one machine, so the shaping and the TCP stack run on
the same cores as training. An overlapped schedule (CO2) computes while a transfer runs and pays
that cost; a real NIC does not put it on the host. Per tbf bucket size, this runs a
single-threaded compute loop in each namespace for ``--seconds``, alternately alone and next to
a TCP flow saturating the link (no torch.distributed involved), and reports the loop's slowdown
and the softirq time. Phases alternate (idle, flow, idle, flow, ...) because this box is noisy.
"""

from __future__ import annotations

import argparse
import socket
import subprocess
import sys
import time

from benchmarks.common import environment, write_json
from benchmarks.network.netns import SUBNET, NetnsError, TwoHosts, require_root

PORT = 5999


def compute(seconds: float) -> None:
    import torch

    torch.set_num_threads(1)
    a, n, t0 = torch.randn(512, 512), 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        for _ in range(20):
            a = torch.tanh(a @ a * 0.01)
        n += 1
    print(n)


def send(addr: str, seconds: float) -> None:
    s, buf, t0 = socket.create_connection((addr, PORT)), b"x" * (1 << 20), time.time()
    while time.time() - t0 < seconds:
        s.sendall(buf)


def receive() -> None:
    srv = socket.socket()
    srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    srv.bind(("0.0.0.0", PORT))
    srv.listen(1)
    conn, _ = srv.accept()
    n = 0
    while chunk := conn.recv(1 << 20):
        n += len(chunk)
    print(n)


def softirq_jiffies() -> int:
    with open("/proc/stat") as f:
        return int(f.readline().split()[7])


def phase(net: TwoHosts, seconds: float, flow: bool) -> dict:
    me = [sys.executable, "-m", "benchmarks.network.link_cost"]
    before = softirq_jiffies()
    if flow:
        recv = net.popen("b", [*me, "--role", "receive"], stdout=subprocess.PIPE, text=True)
        time.sleep(1.0)
        sender = net.popen("a", [*me, "--role", "send", "--seconds", str(seconds + 1)])
    loops = [net.popen(h, [*me, "--role", "compute", "--seconds", str(seconds)],
                       stdout=subprocess.PIPE, text=True) for h in ("a", "b")]
    iters = [int(p.communicate(timeout=seconds + 60)[0]) for p in loops]
    moved = 0
    if flow:
        sender.wait(timeout=60)
        moved = int(recv.communicate(timeout=60)[0])
    return {"flow": flow, "iters": iters, "bytes": moved,
            "softirq_jiffies": softirq_jiffies() - before}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--role", choices=("bench", "compute", "send", "receive"), default="bench")
    p.add_argument("--bandwidth", default="100mbit")
    p.add_argument("--bursts", default="32kbit,1mbit")
    p.add_argument("--seconds", type=float, default=15.0)
    p.add_argument("--pairs", type=int, default=2, help="idle/flow phase pairs per burst")
    p.add_argument("--json", default="bench-results/link_cost.json")
    args = p.parse_args(argv)
    if args.role == "compute":
        return compute(args.seconds)
    if args.role == "send":
        return send(f"{SUBNET}.2", args.seconds)  # host b
    if args.role == "receive":
        return receive()
    try:
        require_root()
    except NetnsError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    results = []
    for burst in args.bursts.split(","):
        with TwoHosts(args.bandwidth, burst=burst) as net:
            phases = [phase(net, args.seconds, flow) for _ in range(args.pairs)
                      for flow in (False, True)]
        idle = sum(sum(ph["iters"]) for ph in phases if not ph["flow"])
        busy = sum(sum(ph["iters"]) for ph in phases if ph["flow"])
        moved = sum(ph["bytes"] for ph in phases)
        results.append({
            "burst": burst, "slowdown": 1 - busy / idle,  # fraction of loop iterations lost
            "flow_MB_per_s": moved / 1e6 / (args.pairs * (args.seconds + 1)),
            "softirq_jiffies_per_flow_phase":
                sum(ph["softirq_jiffies"] for ph in phases if ph["flow"]) / args.pairs,
            "phases": phases,
        })
    payload = {"benchmark": "link_cost", "config": {**vars(args), "env": environment(),
               "command": "python -m benchmarks.network.link_cost "
                          + " ".join(argv or sys.argv[1:])},
               "results": results}
    write_json(args.json, payload)
    print(f"link_cost {args.bandwidth}: " + ", ".join(
        f"burst {r['burst']}: {100 * r['slowdown']:.0f}% less compute next to a "
        f"{r['flow_MB_per_s']:.1f} MB/s flow" for r in results) + f" -> {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
