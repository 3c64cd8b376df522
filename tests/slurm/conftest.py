"""A real single-node SLURM cluster for the template tests: munged, slurmctld and slurmd from
Debian's packages, a generated slurm.conf in a temporary directory, stopped afterwards."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

import pytest

DAEMONS = ("munged", "slurmctld", "slurmd", "sbatch", "scontrol", "scancel", "sinfo")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _munge_works() -> bool:
    munge = subprocess.run(["munge", "-n"], capture_output=True)
    return munge.returncode == 0 and subprocess.run(
        ["unmunge"], input=munge.stdout, capture_output=True).returncode == 0


def _start_munged() -> bool:
    """Start munged as the munge user unless one already answers; True if we started it."""
    if _munge_works():
        return False
    for d in ("/etc/munge", "/var/lib/munge", "/var/log/munge", "/run/munge"):
        Path(d).mkdir(parents=True, exist_ok=True)
        shutil.chown(d, "munge", "munge")
    key = Path("/etc/munge/munge.key")
    if not key.exists():
        subprocess.run(["runuser", "-u", "munge", "--", "mungekey", "--create"], check=True)
    subprocess.run(["runuser", "-u", "munge", "--", "munged"], check=True)
    for _ in range(50):
        if _munge_works():
            return True
        time.sleep(0.1)
    raise RuntimeError("munged started but munge -n | unmunge still fails")


def _kill_pidfile(path: Path) -> None:
    try:
        pid = int(path.read_text().strip())
    except (OSError, ValueError):
        return
    try:
        os.kill(pid, signal.SIGTERM)
        for _ in range(50):
            os.kill(pid, 0)
            time.sleep(0.1)
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


@pytest.fixture(scope="session")
def slurm(tmp_path_factory):
    """Yields the environment (SLURM_CONF set) in which sbatch talks to the test cluster."""
    if os.geteuid() != 0:
        pytest.skip("needs root to start munged, slurmctld and slurmd")
    missing = [d for d in DAEMONS if shutil.which(d) is None]
    if missing:
        pytest.skip(f"needs {', '.join(missing)} (Debian: slurm-wlm munge; make test installs "
                    "them as root)")
    tmp = tmp_path_factory.mktemp("slurm")
    for d in ("state", "spool"):
        (tmp / d).mkdir()
    mem_mib = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") // 2**20 // 2
    conf = tmp / "slurm.conf"
    conf.write_text(f"""\
ClusterName=distcomptest
SlurmctldHost=localhost
SlurmctldPort={_free_port()}
SlurmdPort={_free_port()}
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
MpiDefault=none
ReturnToService=2
StateSaveLocation={tmp}/state
SlurmdSpoolDir={tmp}/spool
SlurmctldPidFile={tmp}/slurmctld.pid
SlurmdPidFile={tmp}/slurmd.pid
SlurmctldLogFile={tmp}/slurmctld.log
SlurmdLogFile={tmp}/slurmd.log
NodeName=localhost CPUs={os.cpu_count()} RealMemory={mem_mib} State=UNKNOWN
PartitionName=test Nodes=localhost Default=YES MaxTime=INFINITE State=UP
""")
    env = {**os.environ, "SLURM_CONF": str(conf)}
    started_munged = _start_munged()
    try:
        subprocess.run(["slurmctld", "-f", str(conf)], env=env, check=True)
        subprocess.run(["slurmd", "-f", str(conf), "-N", "localhost"], env=env, check=True)
        deadline = time.monotonic() + 60
        while True:
            state = subprocess.run(["sinfo", "-h", "-o", "%T"], env=env, capture_output=True,
                                   text=True).stdout.strip()
            if state == "idle":
                break
            if time.monotonic() > deadline:
                logs = "".join(p.read_text()[-1500:] for p in tmp.glob("*.log"))
                raise RuntimeError(f"SLURM node not idle after 60 s (state {state!r}): {logs}")
            time.sleep(0.5)
        yield env
    finally:
        _kill_pidfile(tmp / "slurmd.pid")
        _kill_pidfile(tmp / "slurmctld.pid")
        if started_munged:
            _kill_pidfile(Path("/run/munge/munged.pid"))
