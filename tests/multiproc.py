"""Run a function on W real gloo ranks (separate processes) and collect what each returns.

Every test that touches torch.distributed goes through here: every rank is a new process,
OMP_NUM_THREADS=1, the process group has a timeout, and the whole run has a deadline after which
every rank is killed and the test fails, so a hang can never stall the suite.

Ranks are forked from a server that imported torch and the package once (per pytest worker):
a spawned rank spent ~1.5 s importing them, about a third of a typical two-rank test here.
Each rank still has its own process group, sockets and threads. Not ``torch._dynamo`` (the
first optimizer built imports it): forked after it is imported, torch's fp16 DDP hook hung
at teardown in soak runs (see benchmarks/reliability/soak.py).
"""

from __future__ import annotations

import datetime
import multiprocessing as mp
import os
import socket
import tempfile
import time
import traceback
from pathlib import Path

import torch

_CTX = mp.get_context("forkserver")
_CTX.set_forkserver_preload(["torch", "torch.distributed", "distcomp.compression.reducer",
                             "distcomp.hooks", "tests.models"])


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def enter_namespace(ns: str) -> None:
    """Move this process into network namespace ``ns`` (``ip netns`` names it): every socket
    opened afterwards, gloo's included, lives there. Python 3.11 has no ``os.setns``."""
    import ctypes

    clone_newnet = 0x40000000
    fd = os.open(f"/var/run/netns/{ns}", os.O_RDONLY)
    try:
        if ctypes.CDLL(None, use_errno=True).setns(fd, clone_newnet) != 0:
            raise OSError(ctypes.get_errno(), f"setns into {ns} failed")
    finally:
        os.close(fd)


def _child(fn, rank: int, world: int, port: int, out: str, pg_timeout_s: float, kwargs,
           host: tuple[str, str, str] | None = None) -> None:
    master = "127.0.0.1"
    if host is not None:  # (namespace, its veth, host a's address)
        enter_namespace(host[0])
        os.environ["GLOO_SOCKET_IFNAME"] = host[1]
        master = host[2]
    os.environ.update(OMP_NUM_THREADS="1", MASTER_ADDR=master, MASTER_PORT=str(port))
    import torch.distributed as dist

    torch.set_num_threads(1)
    try:
        dist.init_process_group(
            "gloo", rank=rank, world_size=world,
            timeout=datetime.timedelta(seconds=pg_timeout_s),
        )
        result = fn(rank, world, **kwargs)
        torch.save({"ok": True, "result": result}, out)
    except BaseException:  # noqa: BLE001 - reported to the parent
        torch.save({"ok": False, "error": traceback.format_exc()}, out)
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()


def run_ranks(fn, world: int = 2, timeout_s: float = 180.0, pg_timeout_s: float = 60.0,
              hosts=None, **kwargs):
    """Call ``fn(rank, world, **kwargs)`` on ``world`` gloo ranks; return the results by rank.

    ``fn`` must be a module-level function (it is pickled by reference). A rank that raises
    fails the test with its traceback; a run past ``timeout_s`` is killed and fails the test.
    ``hosts``: a ``benchmarks.network.netns.TwoHosts``; the first half of the ranks then run in host
    a's namespace and the rest in host b's, so traffic between the halves crosses its veth
    and traffic inside a half takes that namespace's loopback, as on two real nodes.
    """
    ctx = _CTX
    port = free_port()
    with tempfile.TemporaryDirectory() as tmp:
        outs = [str(Path(tmp) / f"rank{r}.pt") for r in range(world)]
        procs = [
            ctx.Process(target=_child, args=(fn, r, world, port, outs[r], pg_timeout_s, kwargs,
                                             _host_of(hosts, r, world)))
            for r in range(world)
        ]
        old = os.environ.get("OMP_NUM_THREADS")
        os.environ["OMP_NUM_THREADS"] = "1"
        try:
            for p in procs:
                p.start()
        finally:
            if old is None:
                os.environ.pop("OMP_NUM_THREADS")
            else:
                os.environ["OMP_NUM_THREADS"] = old
        deadline = time.monotonic() + timeout_s
        for p in procs:
            p.join(max(0.0, deadline - time.monotonic()))
        hung = [r for r, p in enumerate(procs) if p.is_alive()]
        for p in procs:
            if p.is_alive():
                p.kill()
                p.join()
        if hung:
            raise AssertionError(f"ranks {hung} still running after {timeout_s}s: killed (hang)")
        results = []
        for r, (p, out) in enumerate(zip(procs, outs)):
            if not os.path.exists(out):
                raise AssertionError(f"rank {r} died with exit code {p.exitcode} and no result")
            rec = torch.load(out, weights_only=False)
            if not rec["ok"]:
                raise AssertionError(f"rank {r} raised:\n{rec['error']}")
            results.append(rec["result"])
        return results


def _host_of(hosts, rank: int, world: int) -> tuple[str, str, str] | None:
    if hosts is None:
        return None
    host = "a" if rank < world // 2 else "b"
    return hosts.ns[host], hosts.iface[host], hosts.addr["a"]


def outcome(fn) -> dict:
    """Run ``fn()`` inside a rank; {"error": "Type: message" or None, "seconds": how long}.
    For tests that expect a rank to fail (a lost peer) and check how fast it did."""
    start = time.monotonic()
    try:
        fn()
    except Exception as err:  # noqa: BLE001 - the test inspects it
        return {"error": f"{type(err).__name__}: {err}", "seconds": time.monotonic() - start}
    return {"error": None, "seconds": time.monotonic() - start}


def spawn_script_ranks(script: str, args: list[str], env: dict, world: int = 2,
                       hosts=None) -> list:
    """Start ``python script args`` once per rank with torchrun's variables set by hand (so a
    test can signal one rank); stdout and stderr are pipes. ``hosts`` (a ``TwoHosts``): half
    the ranks per namespace, as in :func:`run_ranks`, each node's ranks told so the way
    torchrun tells them (LOCAL_RANK, LOCAL_WORLD_SIZE, GROUP_RANK)."""
    import subprocess
    import sys

    port = free_port()
    per_node = world // 2 if hosts is not None else world
    procs = []
    for rank in range(world):
        rank_env = {**env, "RANK": str(rank), "WORLD_SIZE": str(world),
                    "LOCAL_RANK": str(rank % per_node), "MASTER_ADDR": "127.0.0.1",
                    "MASTER_PORT": str(port)}
        argv = [sys.executable, script, *args]
        host = _host_of(hosts, rank, world)
        if host is not None:
            rank_env.update(GLOO_SOCKET_IFNAME=host[1], MASTER_ADDR=host[2],
                            LOCAL_WORLD_SIZE=str(per_node), GROUP_RANK=str(rank // per_node))
            argv = ["ip", "netns", "exec", host[0], *argv]
        procs.append(subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                      text=True, env=rank_env))
    return procs


def survivor_reports_lost_peer(script: str, args: list[str], env: dict, prefix: str,
                               timeout_s: float, world: int = 2, hosts=None,
                               expect: str = "") -> None:
    """Run ``script`` on ``world`` ranks until rank 0 prints its first epoch line (after a line
    holding ``expect``), then :func:`kill_one_check_survivor`; each survivor's first line
    starting ``prefix`` (e.g. ``train.py: rank``) must say a peer was lost."""
    procs = spawn_script_ranks(script, [*args, "--timeout-s", str(timeout_s)], env, world,
                               hosts)

    def running() -> None:
        seen = ""
        line = procs[0].stdout.readline()
        while line and "epoch 1/" not in line:
            seen += line
            line = procs[0].stdout.readline()
        assert "epoch 1/" in line, procs[0].stderr.read()[-2000:]
        assert expect in seen, seen

    kill_one_check_survivor(procs, running, timeout_s, lambda err: next(
        (ln for ln in err.splitlines() if ln.startswith(prefix)), ""))


def kill_one_check_survivor(procs: list, running, timeout_s: float, error_line,
                            jitter_s: float = 0.2) -> None:
    """SIGKILL the last of ``procs`` a random moment (up to ``jitter_s``) after ``running()``
    returns: every other must exit non-zero within the collective timeout + 10 s, and
    ``error_line(its stderr)`` must say a peer was lost. No process is left behind."""
    import random
    import signal

    try:
        running()
        time.sleep(random.uniform(0, jitter_s))
        procs[-1].send_signal(signal.SIGKILL)
        start = time.monotonic()
        for p in procs[:-1]:
            code = p.wait(timeout=max(1.0, timeout_s + 10 - (time.monotonic() - start)))
            err = p.stderr.read()
            assert code != 0 and "peer" in error_line(err), err[-1500:]
        assert time.monotonic() - start < timeout_s + 10
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
            p.wait()
