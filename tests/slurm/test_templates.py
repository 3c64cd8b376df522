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


def sbatch(slurm_env: dict, template: str, out: Path, *options: str, timeout: float = 300,
           **params: str) -> tuple[int, str]:
    """Submit ``slurm/<template>`` with the given environment parameters and wait for the job;
    returns (the job's exit code, its output). Polls ``scontrol`` every 0.2 s: ``sbatch
    --wait`` sleeps up to 32 s between its own checks."""
    env = {**slurm_env, **params, "VENV": "", "OMP_NUM_THREADS": "1",
           "PATH": f"{VENV_BIN}:{slurm_env['PATH']}"}
    proc = subprocess.run(["sbatch", "--parsable", f"--output={out}", *options,
                           str(REPO / "slurm" / template)], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    job = proc.stdout.strip().split(";")[0]
    deadline = time.monotonic() + timeout
    while True:
        info = subprocess.run(["scontrol", "-o", "show", "job", job], env=env,
                              capture_output=True, text=True, timeout=30).stdout
        state = re.search(r"JobState=(\S+)", info)
        if state and state.group(1) in FINAL:
            break
        if time.monotonic() > deadline:
            subprocess.run(["scancel", job], env=env, timeout=30)
            raise AssertionError(f"job {job} still {state and state.group(1)} after {timeout}s")
        time.sleep(0.2)
    code = int(re.search(r"ExitCode=(\d+):", info).group(1))
    return code, out.read_text() if out.exists() else ""


def test_train_template_runs_torchrun_under_srun(slurm, tmp_path):
    code, text = sbatch(slurm, "train.sbatch", tmp_path / "train.out", "--nodes=1",
                        NPROC_PER_NODE="2", COMM="powersgd",
                        TRAIN_ARGS="--epochs 2 --steps-per-epoch 5 --width 64")
    assert code == 0, text
    assert "rendezvous localhost:" in text or "rendezvous " in text
    lines = [line for line in text.splitlines() if line.startswith("[powersgd] epoch")]
    assert len(lines) == 2 and "bytes/step" in lines[-1], text


def test_train_template_fails_cleanly_on_a_bad_option(slurm, tmp_path):
    code, text = sbatch(slurm, "train.sbatch", tmp_path / "bad.out", "--nodes=1",
                        COMM="nonsense", TRAIN_ARGS="--epochs 1")
    assert code != 0
    assert "--comm must be" in text


def test_deepspeed_template_trains_with_compression(slurm, tmp_path):
    if importlib.util.find_spec("deepspeed") is None:
        pytest.skip("needs deepspeed (`make deepspeed`)")
    code, text = sbatch(slurm, "deepspeed.sbatch", tmp_path / "ds.out", "--nodes=1",
                        NPROC_PER_NODE="2", COMM="topk",
                        TRAIN_ARGS="--epochs 2 --steps-per-epoch 5 --width 64")
    assert code == 0, text
    assert "launch/train_deepspeed.py --comm topk" in text
    lines = [ln for ln in text.splitlines() if ln.startswith("[deepspeed zero0 topk] epoch")]
    assert len(lines) == 2 and "dense/sent 1.0x" not in lines[-1], text


@pytest.mark.skipif(shutil.which("mpirun") is None, reason="needs mpirun (Debian: openmpi-bin)")
def test_data_template_shards_over_mpi_tasks(slurm, tmp_path):
    pytest.importorskip("mpi4py", reason="needs mpi4py (the mpi extra)")
    pytest.importorskip("datasets", reason="needs Hugging Face datasets (the data extra)")
    from data_compress.quantize import class_targets

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
