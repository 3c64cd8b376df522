"""Two "hosts" on one machine: network namespaces joined by a bandwidth-limited veth pair.

    with TwoHosts(bandwidth="100mbit", delay="20ms") as net:
        net.popen("a", ["python", ...])        # runs inside host A's namespace
        net.counters("a")                       # (tx_bytes, rx_bytes) of A's veth

Addresses live in a private /24 that exists only inside the two namespaces. The link is shaped on
both ends (egress of each veth) with ``tc tbf``; an optional ``netem`` delay sits above it. The
namespaces are always removed on exit from the ``with`` block, also on an exception, Ctrl-C or
SIGTERM; namespaces left by a killed run (named with a dead pid) are removed on the next start.
Needs root and iproute2 (``ip``, ``tc``).
"""

from __future__ import annotations

import itertools
import json
import os
import re
import signal
import subprocess
from pathlib import Path

PREFIX = "dcnb"  # distcomp netbench
_SERIAL = itertools.count()
SUBNET = "10.213.77"  # the /24 exists only inside our namespaces


class NetnsError(RuntimeError):
    pass


def require_root() -> None:
    if os.geteuid() != 0:
        raise NetnsError(
            "benchmarks.network.netbench needs root: it creates network namespaces, a veth pair "
            "and tc qdiscs (run it as root, e.g. with sudo)"
        )
    for tool in ("ip", "tc"):
        if subprocess.run(["which", tool], capture_output=True).returncode != 0:
            raise NetnsError(f"'{tool}' not found: install iproute2 (apt-get install iproute2)")


def _run(*cmd: str) -> str:
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise NetnsError(f"{' '.join(cmd)} failed: {proc.stderr.strip()}")
    return proc.stdout


def list_namespaces() -> list[str]:
    out = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    return [line.split()[0] for line in out.splitlines() if line.strip()]


def ours(names: list[str]) -> list[str]:
    return [n for n in names if n.startswith(PREFIX + "-")]


def kill_inside(ns: str) -> None:
    pids = subprocess.run(["ip", "netns", "pids", ns], capture_output=True, text=True).stdout
    for pid in pids.split():
        try:
            os.kill(int(pid), signal.SIGKILL)
        except (ProcessLookupError, ValueError):
            pass


def remove_stale() -> list[str]:
    """Delete namespaces of earlier runs whose process is gone; returns what was removed."""
    removed = []
    for name in ours(list_namespaces()):
        m = re.fullmatch(rf"{PREFIX}-(\d+)-\d+-[ab]", name)
        if m and not Path(f"/proc/{m.group(1)}").exists():
            kill_inside(name)
            subprocess.run(["ip", "netns", "del", name], capture_output=True)
            removed.append(name)
    return removed


class TwoHosts:
    """Hosts "a" and "b" (10.213.77.1 and .2) on one shaped veth link.

    bandwidth: tc rate such as "100mbit", "1gbit"; None for an unshaped link.
    delay: optional netem delay such as "20ms" (or "20ms 10ms" for jitter).
    loss: optional netem packet loss such as "1%" (each direction).
    burst: tbf bucket such as "1mbit"; None picks the smallest that works for the rate. A
      bucket smaller than one 64 KB GSO packet makes tbf segment every packet in software on
      the shared CPU: a 100 Mbit/s TCP flow then costs compute on the same cores 20-30% of
      its work (``python -m benchmarks.network.link_cost``), a cost a real NIC does not put
      on the host.
    """

    def __init__(self, bandwidth: str | None = "100mbit", delay: str | None = None,
                 burst: str | None = None, loss: str | None = None):
        self.bandwidth = bandwidth
        self.delay, self.loss = delay, loss
        self.burst = burst or (default_burst(bandwidth) if bandwidth else None)
        serial = next(_SERIAL)  # namespaces are deleted asynchronously: never reuse a name
        tag = f"{PREFIX}-{os.getpid()}-{serial}"
        self.ns = {"a": f"{tag}-a", "b": f"{tag}-b"}
        short = f"{PREFIX}{os.getpid() % 100000}{serial % 10}"  # interface names: <= 15 chars
        self.iface = {"a": f"{short}a", "b": f"{short}b"}
        self.addr = {"a": f"{SUBNET}.1", "b": f"{SUBNET}.2"}
        self._old_sigterm = None

    # -- lifecycle ----------------------------------------------------------------------------
    def __enter__(self) -> TwoHosts:
        require_root()
        remove_stale()
        self._old_sigterm = signal.signal(signal.SIGTERM, _raise_on_sigterm)
        try:
            self._create()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _create(self) -> None:
        for host in ("a", "b"):
            _run("ip", "netns", "add", self.ns[host])
        _run("ip", "link", "add", self.iface["a"], "type", "veth", "peer", "name", self.iface["b"])
        for host in ("a", "b"):
            ns, dev = self.ns[host], self.iface[host]
            _run("ip", "link", "set", dev, "netns", ns)
            # no IPv6 autoconfiguration chatter in the byte counters
            _run("ip", "netns", "exec", ns, "sysctl", "-qw", "net.ipv6.conf.all.disable_ipv6=1")
            _run("ip", "-n", ns, "addr", "add", f"{self.addr[host]}/24", "dev", dev)
            _run("ip", "-n", ns, "link", "set", dev, "up")
            _run("ip", "-n", ns, "link", "set", "lo", "up")
            self._shape(ns, dev)

    def _shape(self, ns: str, dev: str) -> None:
        tc = ["ip", "netns", "exec", ns, "tc", "qdisc", "add", "dev", dev]
        parent = ["root"]
        netem = [*(["delay", *self.delay.split()] if self.delay else []),
                 *(["loss", self.loss] if self.loss else [])]
        if netem:
            try:
                _run(*tc, "root", "handle", "1:", "netem", *netem)
            except NetnsError as err:
                if "unknown" in str(err):
                    raise NetnsError(
                        "this kernel has no netem qdisc (sch_netem), so delay and loss cannot "
                        "be emulated here; run without --delay"
                    ) from err
                raise
            parent = ["parent", "1:"]
        if self.bandwidth:
            _run(*tc, *parent, "handle", "2:", "tbf", "rate", self.bandwidth,
                 "burst", self.burst, "latency", "400ms")

    def close(self) -> None:
        """Kill whatever still runs inside the namespaces, then delete them (and the veth)."""
        existing = list_namespaces()
        for host in ("a", "b"):
            if self.ns[host] in existing:
                kill_inside(self.ns[host])
                subprocess.run(["ip", "-n", self.ns[host], "link", "del", self.iface[host]],
                               capture_output=True)
                subprocess.run(["ip", "netns", "del", self.ns[host]], capture_output=True)
        subprocess.run(["ip", "link", "del", self.iface["a"]], capture_output=True)  # if unmoved
        if self._old_sigterm is not None:
            signal.signal(signal.SIGTERM, self._old_sigterm)
            self._old_sigterm = None

    # -- use ----------------------------------------------------------------------------------
    def command(self, host: str, argv: list[str]) -> list[str]:
        return ["ip", "netns", "exec", self.ns[host], *argv]

    def popen(self, host: str, argv: list[str], **kwargs) -> subprocess.Popen:
        """Start a process inside ``host``'s namespace, in its own process group (so a hung run
        can be killed whole with ``os.killpg``)."""
        return subprocess.Popen(self.command(host, argv), start_new_session=True, **kwargs)

    def drop(self, probability: float) -> None:
        """Drop each packet either host receives with ``probability`` (iptables' statistic
        match on INPUT, loopback included): packet loss on a kernel without sch_netem. On
        INPUT the sender is not told (a drop on OUTPUT returns an error to it), so TCP
        recovers as from loss on a wire."""
        for host in ("a", "b"):
            _run(*self.command(host, ["iptables", "-A", "INPUT", "-m", "statistic", "--mode",
                                      "random", "--probability", str(probability), "-j",
                                      "DROP"]))

    def counters(self, host: str) -> tuple[int, int]:
        """(tx_bytes, rx_bytes) of the host's veth, headers included."""
        out = _run("ip", "-n", self.ns[host], "-s", "-j", "link", "show", "dev", self.iface[host])
        stats = json.loads(out)[0]["stats64"]
        return int(stats["tx"]["bytes"]), int(stats["rx"]["bytes"])


def default_burst(rate: str) -> str:
    """The smallest bucket that holds one packet per timer tick: 32 kbit, what the kernel docs
    suggest for ~100 mbit, scaled up for faster links."""
    m = re.fullmatch(r"(\d+(?:\.\d+)?)([kmg]?)bit", rate.lower())
    if not m:
        raise NetnsError(f"bandwidth must look like 100mbit, 1gbit or 500kbit, got {rate!r}")
    bits = float(m.group(1)) * {"": 1, "k": 1e3, "m": 1e6, "g": 1e9}[m.group(2)]
    return f"{max(32, int(bits / 1e6 * 0.32))}kbit"


def _raise_on_sigterm(signum, frame):
    raise SystemExit(128 + signum)
