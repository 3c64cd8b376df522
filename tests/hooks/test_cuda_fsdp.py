"""FSDPCompression's pieces on CUDA (``make gpu-check``): the 8-bit weight all-gather on a 1-rank
NCCL group, and, with two GPUs, launch/train_fsdp.py on NCCL (hybrid
PowerSGD across 2 nodes of 1, flat fp8 reduce-scatter with the 8-bit all-gather) training like
the same commands on gloo CPU ranks. ``DISTCOMP_TEST_DEVICE=cpu`` dry-runs the first on gloo."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.distributed as dist

from distcomp.compression.weight_gather import QuantizedAllGather, decode, encode
from tests.multiproc import run_ranks

DEV = os.environ.get("DISTCOMP_TEST_DEVICE", "cuda")
pytestmark = pytest.mark.skipif(
    DEV == "cuda" and not torch.cuda.is_available(),
    reason="needs a CUDA device (none here); `make gpu-check` runs these on a GPU machine")
REPO = Path(__file__).resolve().parents[2]


def _one_rank_gather(rank, world):
    """FSDP2 skips its all-gather on a 1-rank mesh, so the comm object is called as FSDP2
    calls it: the flat input a view of the output's own chunk, on the device's stream."""
    group = dist.new_group(backend="nccl" if DEV == "cuda" else "gloo")
    gather = QuantizedAllGather(timeout_s=60, splits=[700, 300])
    x = torch.randn(1000, generator=torch.Generator().manual_seed(0))
    output = torch.empty(1000, device=DEV)
    output.copy_(x)
    gather(output, output[:1000], group)
    expected = torch.empty(1000)
    decode(encode(x, splits=[700, 300]), 1000, expected, splits=[700, 300])
    dist.destroy_process_group(group)
    return output.cpu(), expected, gather.summary()


def test_8bit_all_gather_on_the_device_group():
    (r,) = run_ranks(_one_rank_gather, world=1, timeout_s=300)
    got, expected, stats = r
    torch.testing.assert_close(got, expected, rtol=0, atol=float(expected.abs().max()) / 127)
    assert stats["sent_bytes"] == 1000 + 4 * (3 + 2) and stats["dense_bytes"] == 4000


def test_weight_codes_on_the_device_decode_like_the_cpu():
    x = torch.randn(5000, generator=torch.Generator().manual_seed(0))
    cpu, dev = torch.empty(5000), torch.empty(5000, device=DEV)
    decode(encode(x), 5000, cpu)
    decode(encode(x.to(DEV)), 5000, dev)
    torch.testing.assert_close(dev.cpu(), cpu, rtol=0, atol=float(x.abs().max()) / 127)


def _train_fsdp(nproc: int, env: dict, *args: str) -> list[str]:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone",
           f"--nproc_per_node={nproc}", "--max_restarts=0", str(REPO / "launch" / "train_fsdp.py"),
           "--workload", "teacher", "--width", "64", "--batch-size", "32", "--epochs", "2",
           "--steps-per-epoch", "5", "--warmup-steps", "0", "--ranks-per-node", "1", *args]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return [ln for ln in proc.stdout.splitlines() if "] epoch" in ln]


@pytest.mark.skipif(torch.cuda.device_count() < 2 or not dist.is_nccl_available(),
                    reason="needs two CUDA devices and NCCL (FSDPCompression needs 2 nodes; "
                           "NCCL refuses two ranks on one device)")
@pytest.mark.parametrize("args", [["--comm", "powersgd"],
                                  ["--comm", "fp8", "--sharding", "flat", "--all-gather", "int8"]])
def test_train_fsdp_on_nccl_trains_like_gloo(args):
    base = {**os.environ, "OMP_NUM_THREADS": "1"}
    gpu = _train_fsdp(2, base, *args)
    cpu = _train_fsdp(2, {**base, "CUDA_VISIBLE_DEVICES": ""}, *args)
    loss = [float(ln.split(" loss ")[1].split()[0]) for ln in (gpu[-1], cpu[-1])]
    assert loss[0] == pytest.approx(loss[1], rel=2e-2), (gpu, cpu)
