"""launch/train.py for real: every --comm under torchrun, two-node c10d rendezvous, mpirun,
resume equal to an uninterrupted run, and a killed rank ending the others with a clear error."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from tests.multiproc import free_port, spawn_script_ranks, survivor_reports_lost_peer
from tests.one_process import run_modules

REPO = Path(__file__).resolve().parents[2]
SCRIPT = str(REPO / "launch" / "train.py")
SMALL = ["--epochs", "2", "--steps-per-epoch", "4", "--width", "32", "--batch-size", "32",
         "--warmup-steps", "0"]  # 8 steps: all would be the hook's dense warm-up
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}


def torchrun(*args: str, nproc: int = 2, timeout: float = 180) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone",
           f"--nproc_per_node={nproc}", "--max_restarts=0", SCRIPT, *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=ENV)


# Under torchrun elsewhere in this file: none and powersgd (killed rank), lgreco-topk (resume at
# an epoch's end), co2 (SIGTERM mid-epoch, resume), lgreco-powersgd (c10d), topk (mpirun).
@pytest.mark.parametrize("comm", ["qsgd", "lgreco-qsgd"])
def test_every_comm_trains_under_torchrun(comm):
    """With a method option of the registry's on the command line, as every method's are."""
    proc = torchrun("--comm", comm, *SMALL, "--qsgd-norm", "l2")
    assert proc.returncode == 0, proc.stderr[-2000:]
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith(f"[{comm}] epoch")]
    assert len(lines) == 2 and "bytes/step" in lines[0], proc.stdout
    if comm not in ("none", "co2"):  # compressed: fewer bytes than the dense gradient
        assert "dense/sent 1.0x" not in lines[-1]


def test_two_node_c10d_rendezvous_averages_in_three_stages_without_a_flag():
    """Two torchrun agents of two ranks each: the hook reads LOCAL_WORLD_SIZE and compresses
    only between the two nodes, with nothing added to the command line."""
    port = free_port()
    procs = [subprocess.Popen(
        [sys.executable, "-m", "torch.distributed.run", "--nnodes=2", "--nproc_per_node=2",
         "--rdzv_backend=c10d", f"--rdzv_endpoint=127.0.0.1:{port}", "--rdzv_id=t2n",
         f"--rdzv_conf=is_host={int(i == 0)}", "--max_restarts=0", SCRIPT, "--comm",
         "lgreco-powersgd",
         *SMALL], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=ENV)
        for i in range(2)]
    outs = [p.communicate(timeout=180) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], [o[1][-1500:] for o in outs]
    assert "[lgreco-powersgd] epoch 2/2" in outs[0][0] + outs[1][0]
    assert "averaging in three stages, 2 nodes x 2 ranks" in outs[0][0] + outs[1][0]


def _workers(agent: int) -> dict[int, int]:
    """RANK -> pid of the worker processes torchrun's agent ``agent`` started."""
    found = {}
    for d in Path("/proc").iterdir():
        try:
            if int((d / "stat").read_text().rsplit(")", 1)[1].split()[1]) != agent:
                continue
            env = dict(kv.split("=", 1) for kv in (d / "environ").read_text().split("\0")
                       if "=" in kv)
        except (OSError, ValueError, IndexError):
            continue
        if "RANK" in env:
            found[int(env["RANK"])] = int(d.name)
    return found


def test_torchrun_restarts_after_a_killed_rank_and_resume_continues_exactly(tmp_path):
    """torchrun --max-restarts=1 with --resume: rank 1 is SIGKILLed after epoch 2; torchrun
    restarts both workers, which resume from the newest complete checkpoint (an epoch's end)
    and take the steps of one uninterrupted run (CPU, bit for bit: the L-GreCo compressor's
    residuals and plan statistics are restored)."""
    args = ["--comm", "lgreco-topk", "--epochs", "5", "--steps-per-epoch", "30", "--width",
            "256"]  # L-GreCo plans at step 55 (its 50-step warm-up and 5-step window)
    whole, ckpt, part = tmp_path / "whole.json", tmp_path / "ckpt", tmp_path / "part.json"
    assert torchrun(*args, "--log-json", str(whole)).returncode == 0
    agent = subprocess.Popen(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
         "--max_restarts=1", SCRIPT, *args, "--checkpoint-dir", str(ckpt), "--resume",
         "--log-json", str(part)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env=ENV)
    try:
        line = agent.stdout.readline()
        while line and "epoch 2/5" not in line:
            line = agent.stdout.readline()
        os.kill(_workers(agent.pid)[1], signal.SIGKILL)
        out, err = agent.communicate(timeout=180)
    finally:
        if agent.poll() is None:
            agent.kill()
            agent.wait()
    assert agent.returncode == 0, err[-2000:]
    resumed = re.search(r"resumed at step (\d+)", out)
    assert resumed and "epoch 5/5" in out, out
    step = int(resumed.group(1))
    assert step >= 30 and step % 30 == 0  # epoch 1's or 2's (if its save was complete)
    assert json.loads(part.read_text()) == json.loads(whole.read_text())[step:]


@pytest.mark.skipif(shutil.which("mpirun") is None, reason="needs mpirun (Debian: openmpi-bin)")
def test_mpirun_launch():
    cmd = ["mpirun", "--allow-run-as-root", "--oversubscribe", "-n", "2", "-x",
           "OMP_NUM_THREADS", sys.executable, SCRIPT, "--comm", "topk", *SMALL]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=180, env=ENV)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "[topk] epoch 2/2" in proc.stdout


def test_no_launcher_is_a_clear_error():
    env = {k: v for k, v in ENV.items() if k not in ("RANK", "OMPI_COMM_WORLD_RANK")}
    cases = [([], 1, "no launcher found"), (["--comm", "zip"], 2, "--comm must be one of"),
             (["--comm", "lgreco-powersgd", "--qsgd-norm", "linf"], 2, "invalid choice: 'linf'"),
             (["--comm", "lgreco-powersgd", "--rank", "0"], 2, "rank must be an integer >= 1")]
    results = run_modules([[SCRIPT, *args] for args, _, _ in cases], cwd=REPO, env=env,
                          timeout=120)
    for (args, rc, why), result in zip(cases, results, strict=True):
        assert result["rc"] == rc and why in result["stderr"], (args, result)


@pytest.mark.parametrize("comm", ["none", "powersgd", "co2"])
def test_a_killed_rank_ends_the_survivor_with_a_clear_error(comm):
    """Rank 1 is SIGKILLed mid-training: rank 0 must exit non-zero, naming the failure,
    within the collective timeout + 10 s."""
    survivor_reports_lost_peer(SCRIPT, ["--comm", comm, "--epochs", "100000",
                                        "--steps-per-epoch", "2", "--width", "32"], ENV,
                               "train.py: rank 0:", timeout_s=15)


@pytest.mark.parametrize(("comm", "nodes"), [("powersgd", "namespaces"), ("co2", "loopback")],
                         indirect=["nodes"])
def test_a_killed_rank_of_four_in_three_stages_ends_every_survivor(comm, nodes):
    """2 nodes x 2 ranks, on one loopback (``--ranks-per-node``) or in two namespaces (told
    their node the way torchrun tells it, no flag), each method in one of the two; rank 3 is
    SIGKILLed mid-training: ranks 0-2 (its node peer and the other node) each exit non-zero
    with the clear error."""
    flag = ["--ranks-per-node", "2"] if nodes is None else []
    survivor_reports_lost_peer(SCRIPT, ["--comm", comm, *flag, "--epochs", "100000",
                                        "--steps-per-epoch", "2", "--width", "32"], ENV,
                               "train.py: rank", timeout_s=15, world=4, hosts=nodes,
                               expect={"powersgd": "averaging in three stages, 2 nodes x 2",
                                       "co2": "CO2 across 2 nodes x 2 ranks"}[comm])


def test_sigterm_to_one_rank_saves_everywhere_and_resume_continues_exactly(tmp_path):
    """SLURM sends SIGTERM before a time limit; here only rank 1 gets it. Both ranks stop at
    the same step (a multiple of --stop-check-steps), save, exit 143; --resume then takes the
    steps an uninterrupted run takes. CO2 with tau 3 and checks every 5 steps: the stop lands
    with an outer round in flight (at step 5 of a round of 3, say)."""
    ckpt, part = tmp_path / "ckpt", tmp_path / "part.json"
    common = ["--comm", "co2", "--tau", "3", "--steps-per-epoch", "10", "--width", "64"]
    procs = spawn_script_ranks(SCRIPT, [*common, "--epochs", "100000", "--stop-check-steps",
                                        "5", "--checkpoint-dir", str(ckpt), "--log-json",
                                        str(part)], ENV)
    try:
        line = procs[0].stdout.readline()
        assert "epoch 1/" in line, procs[0].stderr.read()[-2000:]
        procs[1].send_signal(signal.SIGTERM)
        codes = [p.wait(timeout=60) for p in procs]
        out = procs[0].stdout.read()
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
            p.wait()
    assert codes == [143, 143], procs[1].stderr.read()[-2000:]
    stopped = int(out.split("SIGTERM: stopped at step ")[1].split()[0])
    assert stopped % 5 == 0 and f"(saved step {stopped})" in out
    epochs = str(stopped // 10 + 1)
    whole = tmp_path / "whole.json"
    assert torchrun(*common, "--epochs", epochs, "--log-json", str(whole)).returncode == 0
    resumed = tmp_path / "resumed.json"
    proc = torchrun(*common, "--epochs", epochs, "--checkpoint-dir", str(ckpt), "--resume",
                    "--log-json", str(resumed))
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert f"resumed at step {stopped}" in proc.stdout
    steps = json.loads(whole.read_text())
    assert json.loads(part.read_text()) == steps[:stopped]
    assert json.loads(resumed.read_text()) == steps[stopped:]
