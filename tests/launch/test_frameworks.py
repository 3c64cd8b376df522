"""The hook inside the frameworks users already train with, for real on 2 CPU ranks under
torchrun: PyTorch Lightning (state built before the process group, passed to DDPStrategy) and
HF accelerate (prepare(), then ``attach``)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.multiproc import free_port

REPO = Path(__file__).resolve().parents[2]
STEPS = 40


def torchrun(script: str, *args: str, tmp: Path) -> list[dict]:
    log = tmp / f"{Path(script).stem}-{args[1]}.json"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2",
           f"--master_port={free_port()}", str(REPO / "launch" / script), *args,
           "--steps", str(STEPS), "--log-json", str(log)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, cwd=tmp,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    return [json.loads(Path(f"{log}.rank{r}").read_text()) for r in range(2)]


def check(plain: list[dict], compressed: list[dict]) -> None:
    for run in (plain, compressed):
        assert run[0]["checksum"] == run[1]["checksum"]  # the ranks hold the same model
    assert all(r["steps"] == STEPS for r in compressed)  # the hook ran every step
    stats = compressed[0]["stats"]
    assert stats["steps"] == STEPS and stats["ratio"] > 1.5
    tail = lambda r: sum(r[0]["losses"][-10:]) / 10  # noqa: E731
    assert tail(compressed) < 0.8 * compressed[0]["losses"][0]  # it learns
    assert tail(compressed) < 1.1 * tail(plain)  # and keeps up with the framework's own DDP


def test_lightning_ddp_strategy_takes_the_state_and_hook_unchanged(tmp_path):
    pytest.importorskip("lightning", reason="needs PyTorch Lightning (the frameworks extra)")
    check(torchrun("train_lightning.py", "--comm", "none", tmp=tmp_path),
          torchrun("train_lightning.py", "--comm", "powersgd", tmp=tmp_path))


def test_accelerate_prepare_then_attach_reads_the_wrapped_optimizer(tmp_path):
    """``attach(model, name, optimizer=opt)`` after ``prepare()``; for top-k its momentum
    correction takes the SGD momentum from inside accelerate's optimizer wrapper."""
    pytest.importorskip("accelerate", reason="needs HF accelerate (the frameworks extra)")
    check(torchrun("train_accelerate.py", "--comm", "none", tmp=tmp_path),
          torchrun("train_accelerate.py", "--comm", "powersgd", tmp=tmp_path))
    topk = torchrun("train_accelerate.py", "--comm", "topk", "--density", "0.05", tmp=tmp_path)
    assert topk[0]["checksum"] == topk[1]["checksum"] and topk[0]["stats"]["ratio"] > 1.5
    assert topk[0]["config"]["momentum"] == 0.9
