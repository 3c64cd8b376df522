"""Property tests of the reducer over random shapes (empty and one-element included) and dtypes,
on a real one-rank gloo group: the error-feedback invariant, and the ledger counting exactly
the bytes handed to the collectives."""

from __future__ import annotations

import datetime

import pytest
import torch
import torch.distributed as dist
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from distcomp import LGreCoConfig, get_compressor, method_names
from distcomp.comm import TorchComm
from distcomp.compression.config import CompressionConfig
from distcomp.compression.reducer import CompressedReducer


def _settings(name: str) -> tuple[str, list]:
    """(knob, settings) of a method: its L-GreCo candidates for a small matrix, its default
    and its gentle setting."""
    comp = get_compressor(name)
    plan = LGreCoConfig().plan_for(name)
    values = {*comp.candidates(comp.setting, torch.Size([16, 16]), plan), comp.setting,
              comp.gentle(comp.setting)}
    return comp.knob, sorted(values)


SETTINGS = {name: _settings(name) for name in method_names()}
DTYPES = [torch.float32, torch.float16, torch.bfloat16, torch.float64]


class CountingComm(TorchComm):
    """The real gloo collectives; also sums the bytes of every tensor handed to them."""

    def __init__(self):
        super().__init__(None, timeout_s=60)
        self.sent = 0

    def all_reduce_sum(self, t):
        self.sent += t.numel() * t.element_size()
        return super().all_reduce_sum(t)

    def all_gather(self, t):
        self.sent += t.numel() * t.element_size()
        return super().all_gather(t)


@pytest.fixture(scope="module", autouse=True)
def one_rank_group():
    store = dist.HashStore()
    dist.init_process_group("gloo", store=store, rank=0, world_size=1,
                            timeout=datetime.timedelta(seconds=60))
    yield
    dist.destroy_process_group()


shapes = st.lists(st.lists(st.integers(0, 24), min_size=1, max_size=3).map(tuple),
                  min_size=1, max_size=4)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(method=st.sampled_from(sorted(SETTINGS)), pick=st.integers(0, 20), shapes=shapes,
       dtype=st.sampled_from(DTYPES), seed=st.integers(0, 2**31 - 1))
def test_error_feedback_invariant_and_ledger_equal_bytes_sent(method, pick, shapes, dtype,
                                                              seed):
    """Over two steps, on one rank: averaged output + new residual = input + old residual (what
    compression dropped is kept, never lost or doubled), and the ledger's bytes for each step
    equal the bytes handed to the collectives (control flag included)."""
    knob, values = SETTINGS[method]
    config = CompressionConfig(method=method, min_compression_rate=0.0,
                               **{knob: values[pick % len(values)]})
    reducer = CompressedReducer(config)
    comm = CountingComm()
    keys = [f"p{i}" for i in range(len(shapes))]
    gen = torch.Generator().manual_seed(seed)
    tol = {torch.float16: 2e-2, torch.bfloat16: 1e-1}.get(dtype, 1e-4)
    for step in range(2):
        grads = [torch.randn(s, generator=gen).to(dtype) for s in shapes]
        inputs = [g.double() + reducer.residuals.get(k, torch.zeros(s)).double()
                  for g, k, s in zip(grads, keys, shapes)]
        before = comm.sent
        reducer.reduce(grads, keys, comm, step)
        assert reducer.ledger.step_bytes(step) == comm.sent - before
        for g, k, s, x in zip(grads, keys, shapes, inputs):
            assert g.shape == torch.Size(s) and g.dtype == dtype
            kept = reducer.residuals.get(k, torch.zeros(s)).double()
            scale = 1.0 + x.abs().max().item() if x.numel() else 1.0
            torch.testing.assert_close(g.double() + kept, x, rtol=0, atol=tol * scale)
