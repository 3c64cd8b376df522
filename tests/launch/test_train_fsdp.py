"""launch/train_fsdp.py for real under torchrun: README's command at 4 ranks as 2 nodes x 2
(FSDPCompression's PowerSGD across nodes) checkpoints through torch.distributed.checkpoint and
resumes exactly; bad options fail before any process starts. The flat layout with the 8-bit
all-gather and bf16 runs through the SLURM template (tests/slurm/test_templates.py)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

from tests.one_process import run_modules

REPO = Path(__file__).resolve().parents[2]
SCRIPT = str(REPO / "launch" / "train_fsdp.py")
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}
TINY = ["--workload", "teacher", "--width", "64", "--batch-size", "16", "--steps-per-epoch", "3",
        "--warmup-steps", "0", "--fixed-setting", "--epochs", "3"]


def torchrun(*args: str, nproc: int = 4, timeout: float = 180) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone",
           f"--nproc_per_node={nproc}", "--max_restarts=0", SCRIPT, *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=ENV)


def test_readme_command_checkpoints_and_resumes_exactly(tmp_path):
    """3 epochs of 3 steps, a checkpoint after each (the newest two kept); from the second
    epoch's, the third epoch takes the same steps, bit for bit."""
    ckpt, whole, resumed = tmp_path / "ckpt", tmp_path / "whole.json", tmp_path / "resumed.json"
    command = ["--comm", "powersgd", "--ranks-per-node", "2", *TINY, "--checkpoint-dir", str(ckpt)]
    proc = torchrun(*command, "--log-json", str(whole))
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "hybrid sharding, 2 nodes x 2 ranks: powersgd across nodes" in proc.stdout
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("[fsdp powersgd] epoch")]
    assert len(lines) == 3 and "dense/sent 1.0x" not in lines[-1], proc.stdout
    assert sorted(p.name for p in ckpt.iterdir()) == ["step-00000006", "step-00000009"]
    shutil.rmtree(ckpt / "step-00000009")
    proc = torchrun(*command, "--resume", "--log-json", str(resumed))
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "resumed at step 6" in proc.stdout
    assert json.loads(resumed.read_text()) == json.loads(whole.read_text())[6:]


def test_bad_options_fail_before_any_process_group():
    cases = [(["--sharding", "tree"], "--sharding must be one of flat, hybrid"),
             (["--comm", "none", "--all-gather", "int8"], "belong to a --comm"),
             (["--all-gather", "int8"], "are for --sharding flat"),
             (["--comm", "qsgd", "--bits", "0"], "bits")]
    env = {**ENV, "PYTHONPATH": f"{REPO / 'launch'}{os.pathsep}{ENV.get('PYTHONPATH', '')}"}
    results = run_modules([[SCRIPT, *args] for args, _ in cases], cwd=REPO, env=env, timeout=120)
    for (args, message), result in zip(cases, results, strict=True):
        assert result["rc"] == 2 and message in result["stderr"], (args, result)
