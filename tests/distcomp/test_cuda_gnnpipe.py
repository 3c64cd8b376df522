"""GNNPipe's pipeline and graph-parallel modes on CUDA tensors (``make gpu-check``): two gloo
ranks sharing one GPU train like the single-process full-graph reference on the CPU.

Tolerance: sparse products on the GPU sum in another order than on the CPU: 1e-4 absolute on
losses near 1.4 (the CPU modes match each other to 1e-5)."""

from __future__ import annotations

import pytest
import torch

from tests.distcomp.gnn.test_pipeline import _losses, _reference_losses
from tests.distcomp.test_cuda import DEV
from tests.multiproc import run_ranks

pytestmark = pytest.mark.skipif(
    DEV == "cuda" and not torch.cuda.is_available(),
    reason="needs a CUDA device (none here); `make gpu-check` runs these on a GPU machine")


def _on_device(rank, world, kind, kw):
    return _losses(kind, device=DEV, **kw)


@pytest.mark.parametrize("kind,kw", [("pipe", {"num_chunks": 1}), ("gp", {})])
def test_two_ranks_on_one_gpu_train_like_the_cpu_reference(kind, kw):
    ref = _reference_losses()
    results = run_ranks(_on_device, world=2, kind=kind, kw=kw, timeout_s=300)
    for r in results:
        assert r["losses"] == pytest.approx(ref, abs=1e-4), kind
    assert results[0]["acc"] == results[1]["acc"]
