"""Every existing method gives the losses, bytes, plans and final parameters recorded before
the registry refactor (see :mod:`tests.distcomp.recorded_runs`)."""

from __future__ import annotations

import json
import math

import pytest

from tests.distcomp.recorded_runs import RECORD, run_all


@pytest.fixture(scope="module")
def runs() -> dict:
    return run_all()


RECORDED = json.loads(RECORD.read_text())


@pytest.mark.parametrize("case", sorted(RECORDED))
def test_same_losses_bytes_and_parameters_as_recorded(runs, case):
    """Bytes and plans exactly; losses and the parameter checksum to 1e-5 relative (the same
    arithmetic gives the same bits on this machine; the margin is for another CPU's matmul)."""
    for rank, (now, then) in enumerate(zip(runs[case], RECORDED[case], strict=True)):
        assert now["bytes"] == then["bytes"], f"rank {rank}"
        assert now.get("plans") == then.get("plans"), f"rank {rank}"
        for a, b in zip(now["losses"], then["losses"], strict=True):
            assert math.isclose(a, b, rel_tol=1e-5, abs_tol=1e-7), f"rank {rank}: {a} != {b}"
        assert math.isclose(now["checksum"], then["checksum"], rel_tol=1e-5, abs_tol=1e-6)
