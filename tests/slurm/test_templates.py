"""Each sbatch template submitted for real to the local SLURM cluster (see conftest.py), on
small settings: the job must exit 0 and print what a user reads; bad input must fail fast."""

from __future__ import annotations

import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[2]
VENV_BIN = str(Path(sys.executable).parent)


FINAL = ("COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY",
         "PREEMPTED", "BOOT_FAIL", "DEADLINE")


def job_env(slurm_env: dict, **params: str) -> dict:
    """The job's environment: the test's venv on PATH, no checkpoints unless asked (the default
    would write them under the repository)."""
    return {**slurm_env, "CHECKPOINT_DIR": "", **params, "VENV": "", "OMP_NUM_THREADS": "1",
            "PATH": f"{VENV_BIN}:{slurm_env['PATH']}"}


def sbatch(slurm_env: dict, template: str, out: Path, *options: str, timeout: float = 300,
           **params: str) -> tuple[int, str]:
    """Submit ``slurm/<template>`` with the given environment parameters and wait for the job;
    returns (the job's exit code, its output). Polls ``scontrol`` every 0.2 s: ``sbatch
    --wait`` sleeps up to 32 s between its own checks."""
    env = job_env(slurm_env, **params)
    job = submit(env, template, out, *options)
    return wait_job(env, job, timeout), out.read_text() if out.exists() else ""


def submit(env: dict, template: str, out: Path, *options: str) -> str:
    proc = subprocess.run(["sbatch", "--parsable", f"--output={out}", *options,
                           str(REPO / "slurm" / template)], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout.strip().split(";")[0]


def _show(env: dict, job: str) -> str:
    return subprocess.run(["scontrol", "-o", "show", "job", job], env=env, capture_output=True,
                          text=True, timeout=30).stdout


def _node_state(env: dict) -> str:
    return subprocess.run(["sinfo", "-h", "-N", "-o", "%T"], env=env, capture_output=True,
                          text=True, timeout=30).stdout.strip()


def wait_job(env: dict, job: str, timeout: float) -> int:
    """Poll until the job reaches a final state; its exit code."""
    deadline = time.monotonic() + timeout
    while True:
        info = subprocess.run(["scontrol", "-o", "show", "job", job], env=env,
                              capture_output=True, text=True, timeout=30).stdout
        state = re.search(r"JobState=(\S+)", info)
        if state and state.group(1) in FINAL:
            return int(re.search(r"ExitCode=(\d+):", info).group(1))
        if time.monotonic() > deadline:
            subprocess.run(["scancel", job], env=env, timeout=30)
            raise AssertionError(f"job {job} still {state and state.group(1)} after {timeout}s")
        time.sleep(0.2)


def test_time_limit_signal_checkpoints_requeues_and_resumes(slurm, tmp_path):
    """What SLURM does 120 s before the limit (USR1 to the batch shell), sent by hand: the
    ranks stop at the same step and save, the job requeues itself, and its second start
    resumes from that step and finishes."""
    env = job_env(slurm, NPROC_PER_NODE="2", COMM="powersgd",
                  CHECKPOINT_DIR=str(tmp_path / "ckpt"),
                  TRAIN_ARGS="--epochs 40 --steps-per-epoch 10 --width 256 --stop-check-steps 5")
    out = tmp_path / "requeue.out"
    job = submit(env, "train.sbatch", out, "--nodes=1")
    deadline = time.monotonic() + 120
    while "[powersgd] epoch 1/" not in (out.read_text() if out.exists() else ""):
        assert time.monotonic() < deadline, out.read_text() if out.exists() else "no output"
        time.sleep(0.2)
    subprocess.run(["scancel", "--signal=USR1", "--batch", job], env=env, check=True,
                   timeout=30)
    # SLURM holds a requeued job back (BeginTime, 2 minutes here): once the first start is
    # gone from the node (same job ID: a start while it is still cleaning up fails), start it.
    deadline = time.monotonic() + 120
    while ("Restarts=1" not in _show(env, job) or "JobState=PENDING" not in _show(env, job)
           or _node_state(env) != "idle"):
        assert time.monotonic() < deadline, _show(env, job)
        time.sleep(0.2)
    time.sleep(1)
    subprocess.run(["scontrol", "update", f"JobId={job}", "StartTime=now"], env=env,
                   check=True, timeout=30)
    code = wait_job(env, job, timeout=240)
    text = out.read_text()
    assert code == 0, text + _show(env, job)
    assert "USR1 (time limit or preemption): checkpointing, then requeueing" in text
    stopped = int(text.split("SIGTERM: stopped at step ")[1].split()[0])
    assert stopped % 5 == 0 and f"resumed at step {stopped}" in text, text
    assert "(start 2," in text and "[powersgd] epoch 40/40" in text
    assert "rendezvous localhost:" in text and "bytes/step" in text


def test_train_template_fails_cleanly_on_a_bad_option(slurm, tmp_path):
    code, text = sbatch(slurm, "train.sbatch", tmp_path / "bad.out", "--nodes=1",
                        COMM="nonsense", TRAIN_ARGS="--epochs 1")
    assert code != 0
    assert "--comm must be" in text


def test_train_template_runs_the_fsdp_script(slurm, tmp_path):
    """SCRIPT=launch/train_fsdp.py: one-level FSDP2 over 2 ranks as 2 nodes of 1, bf16 compute,
    fp8 reduce-scatter and 8-bit weight all-gathers, a checkpoint per epoch in CHECKPOINT_DIR."""
    code, text = sbatch(slurm, "train.sbatch", tmp_path / "fsdp.out", "--nodes=1",
                        NPROC_PER_NODE="2", COMM="fp8", SCRIPT="launch/train_fsdp.py",
                        CHECKPOINT_DIR=str(tmp_path / "ckpt"),
                        TRAIN_ARGS="--workload teacher --width 32 --batch-size 16 --epochs 2 "
                                   "--steps-per-epoch 3 --warmup-steps 0 --sharding flat "
                                   "--all-gather int8 --bf16 --ranks-per-node 1")
    assert code == 0, text
    assert "launch/train_fsdp.py --comm fp8" in text and "flat sharding, 2 nodes x 1" in text
    lines = [ln for ln in text.splitlines() if ln.startswith("[fsdp fp8] epoch")]
    assert len(lines) == 2 and "dense/sent 1.0x" not in lines[-1], text
    assert sorted(p.name for p in (tmp_path / "ckpt").iterdir()) == ["step-00000003",
                                                                   "step-00000006"]


def test_deepspeed_template_trains_with_compression(slurm, tmp_path):
    if importlib.util.find_spec("deepspeed") is None:
        pytest.skip("needs deepspeed (`make deepspeed`)")
    code, text = sbatch(slurm, "deepspeed.sbatch", tmp_path / "ds.out", "--nodes=1",
                        NPROC_PER_NODE="2", COMM="topk",
                        TRAIN_ARGS="--epochs 2 --steps-per-epoch 5 --width 64 "
                                   "--warmup-steps 0")
    assert code == 0, text
    assert "launch/train_deepspeed.py --comm topk" in text
    lines = [ln for ln in text.splitlines() if ln.startswith("[deepspeed zero0 topk] epoch")]
    assert len(lines) == 2 and "dense/sent 1.0x" not in lines[-1], text


@pytest.mark.skipif(shutil.which("mpirun") is None, reason="needs mpirun (Debian: openmpi-bin)")
def test_data_template_shards_over_mpi_tasks(slurm, tmp_path):
    pytest.importorskip("mpi4py", reason="needs mpi4py (the mpi extra)")
    pytest.importorskip("datasets", reason="needs Hugging Face datasets (the data extra)")
    from distcomp.data.quantize import class_targets

    rng = np.random.default_rng(0)
    y = rng.integers(0, 3, 240)
    np.savez(tmp_path / "t.npz", x=(rng.normal(size=(240, 6)) + y[:, None]).astype(np.float32),
             label=y)
    out = tmp_path / "pruned"
    code, text = sbatch(slurm, "data.sbatch", tmp_path / "data.out", "--ntasks=2",
                        INPUT=str(tmp_path / "t.npz"), OUTPUT=str(out),
                        MPIRUN="mpirun --allow-run-as-root --oversubscribe",
                        DATA_ARGS="--ratio 0.5 --method el2n --epochs 2")
    assert code == 0, text
    manifest = json.loads((out / "manifest.json").read_text())
    expected = sum(class_targets(y, 0.5).values())  # per-class rounding
    assert manifest["mpi_ranks"] == 2 and manifest["rows_kept"] == expected


def test_data_template_requires_its_paths(slurm, tmp_path):
    env = {k: v for k, v in slurm.items() if k not in ("INPUT", "OUTPUT")}
    code, text = sbatch(env, "data.sbatch", tmp_path / "nopath.out")
    assert code != 0 and "set INPUT" in text
    assert os.listdir(tmp_path) == ["nopath.out"]
