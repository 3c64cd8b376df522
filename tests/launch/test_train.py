"""launch/train.py for real: every --comm under torchrun, two-node c10d rendezvous, mpirun,
resume equal to an uninterrupted run, and a killed rank ending the others with a clear error."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.multiproc import free_port

REPO = Path(__file__).resolve().parents[2]
SCRIPT = str(REPO / "launch" / "train.py")
SMALL = ["--epochs", "2", "--steps-per-epoch", "4", "--width", "32", "--batch-size", "32"]
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}


def torchrun(*args: str, nproc: int = 2, timeout: float = 180) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone",
           f"--nproc_per_node={nproc}", "--max_restarts=0", SCRIPT, *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=ENV)


@pytest.mark.parametrize("comm", ["none", "powersgd", "topk", "qsgd", "lgreco-powersgd",
                                  "lgreco-topk", "lgreco-qsgd", "co2"])
def test_every_comm_trains_under_torchrun(comm):
    proc = torchrun("--comm", comm, *SMALL)
    assert proc.returncode == 0, proc.stderr[-2000:]
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith(f"[{comm}] epoch")]
    assert len(lines) == 2 and "bytes/step" in lines[0], proc.stdout
    if comm not in ("none", "co2"):  # compressed: fewer bytes than the dense gradient
        assert "dense/sent 1.0x" not in lines[-1]


def test_two_node_c10d_rendezvous():
    port = free_port()
    procs = [subprocess.Popen(
        [sys.executable, "-m", "torch.distributed.run", "--nnodes=2", "--nproc_per_node=1",
         "--rdzv_backend=c10d", f"--rdzv_endpoint=127.0.0.1:{port}", "--rdzv_id=t2n",
         f"--rdzv_conf=is_host={int(i == 0)}", "--max_restarts=0", SCRIPT, "--comm", "qsgd",
         *SMALL], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=ENV)
        for i in range(2)]
    outs = [p.communicate(timeout=180) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], [o[1][-1500:] for o in outs]
    assert "[qsgd] epoch 2/2" in outs[0][0] + outs[1][0]


@pytest.mark.parametrize("comm", ["powersgd", "co2", "lgreco-topk"])
def test_resume_takes_the_same_steps_as_an_uninterrupted_run(comm, tmp_path):
    """Epoch 2 after a restart equals epoch 2 of one run (CPU, bit for bit); CO2 with tau 3
    has an outer round in flight at the epoch boundary."""
    extra = ["--comm", comm, "--tau", "3"]
    whole = tmp_path / "whole.json"
    assert torchrun(*extra, *SMALL, "--log-json", str(whole)).returncode == 0
    ckpt, part = tmp_path / "ckpt", tmp_path / "part.json"
    first = torchrun(*extra, *SMALL[:1], "1", *SMALL[2:], "--checkpoint-dir", str(ckpt))
    assert first.returncode == 0, first.stderr[-2000:]
    second = torchrun(*extra, *SMALL, "--checkpoint-dir", str(ckpt), "--resume", "--log-json",
                      str(part))
    assert second.returncode == 0, second.stderr[-2000:]
    assert "resumed after epoch 1 (step 4)" in second.stdout
    assert json.loads(part.read_text()) == json.loads(whole.read_text())[4:]


@pytest.mark.skipif(shutil.which("mpirun") is None, reason="needs mpirun (Debian: openmpi-bin)")
def test_mpirun_launch():
    cmd = ["mpirun", "--allow-run-as-root", "--oversubscribe", "-n", "2", "-x",
           "OMP_NUM_THREADS", sys.executable, SCRIPT, "--comm", "topk", *SMALL]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=180, env=ENV)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "[topk] epoch 2/2" in proc.stdout


def test_no_launcher_is_a_clear_error():
    env = {k: v for k, v in ENV.items() if k not in ("RANK", "OMPI_COMM_WORLD_RANK")}
    proc = subprocess.run([sys.executable, SCRIPT], capture_output=True, text=True,
                          timeout=60, env=env)
    assert proc.returncode != 0 and "no launcher found" in proc.stderr
    bad = subprocess.run([sys.executable, SCRIPT, "--comm", "zip"], capture_output=True,
                         text=True, timeout=60, env=env)
    assert bad.returncode == 2 and "--comm must be one of" in bad.stderr


@pytest.mark.parametrize("comm", ["none", "powersgd", "co2"])
def test_a_killed_rank_ends_the_survivor_with_a_clear_error(comm):
    """Rank 1 is SIGKILLed mid-training: rank 0 must exit non-zero, naming the failure,
    within the collective timeout + 10 s."""
    timeout_s, port = 15, free_port()
    procs = []
    for rank in range(2):
        env = {**ENV, "RANK": str(rank), "WORLD_SIZE": "2", "LOCAL_RANK": str(rank),
               "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port)}
        procs.append(subprocess.Popen(
            [sys.executable, SCRIPT, "--comm", comm, "--epochs", "100000", "--steps-per-epoch",
             "2", "--width", "32", "--timeout-s", str(timeout_s)],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env))
    try:
        first = procs[0].stdout.readline()  # training is running
        assert "epoch 1/" in first, procs[0].stderr.read()
        procs[1].send_signal(signal.SIGKILL)
        start = time.monotonic()
        code = procs[0].wait(timeout=timeout_s + 10)
        elapsed = time.monotonic() - start
        err = procs[0].stderr.read()
        assert code != 0 and "train.py: rank 0:" in err, err[-1500:]
        assert elapsed < timeout_s + 10
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
            p.wait()
