"""The critical-regime schedule (Accordion): the decision rule, and its place in the reducer on
real ranks (every rank switches at the same step, the ledger counts the statistics)."""

from __future__ import annotations

import math

import pytest
import torch

from distcomp import CompressedReducer, CompressionConfig
from distcomp.compression.accordion import Accordion
from distcomp.compression.compressor import get_compressor
from tests.multiproc import run_ranks


def _decide(acc: Accordion, norms: dict[str, float], step: int) -> bool:
    for key, norm in norms.items():  # a gradient whose norm is exactly ``norm``
        acc.observe(key, torch.tensor([norm, 0.0]))
    return acc.decide(step, lambda t: t)


def test_a_layer_is_critical_while_its_gradient_norm_moves_by_the_threshold():
    acc = Accordion(interval=10, threshold=0.5, gentle=16, aggressive=4)
    assert acc.setting("w") == 16  # nothing known yet: gentle
    assert not _decide(acc, {"a": 10.0, "b": 10.0}, 10)  # first interval: still critical
    assert acc.baseline(["a", "b"]) == {"a": 16, "b": 16}
    assert _decide(acc, {"a": 9.0, "b": 4.0}, 20)  # a moved 10%, b 60%
    assert acc.baseline(["a", "b"]) == {"a": 4, "b": 16}
    assert acc.switches == [{"step": 20, "critical": ["b"]}]
    assert _decide(acc, {"a": 4.4, "b": 3.9}, 30)  # exactly at the threshold counts: critical
    assert acc.baseline(["a", "b"]) == {"a": 16, "b": 4}
    assert not acc.acc  # every interval starts from zero


def test_a_nonfinite_interval_keeps_the_regime():
    acc = Accordion(interval=5, threshold=0.5, gentle=8, aggressive=2)
    _decide(acc, {"a": 1.0}, 5)
    _decide(acc, {"a": 1.0}, 10)
    assert acc.setting("a") == 2
    _decide(acc, {"a": math.nan}, 15)
    assert acc.setting("a") == 2 and acc.norms["a"] == 1.0
    _decide(acc, {"a": 3.0}, 20)
    assert acc.setting("a") == 8


def test_state_dict_round_trip():
    acc = Accordion(interval=5, threshold=0.3, gentle=8, aggressive=2)
    _decide(acc, {"a": 1.0, "b": 2.0}, 5)
    acc.observe("a", torch.ones(2))
    copy = Accordion(interval=5, threshold=0.3, gentle=8, aggressive=2)
    copy.load_state_dict(acc.state_dict())
    assert copy.norms == acc.norms and copy.critical == acc.critical
    assert torch.equal(copy.acc["a"], acc.acc["a"])


@pytest.mark.parametrize("method,setting,gentle", [
    ("powersgd", 4, 16), ("topk", 0.01, 0.04), ("topk", 0.5, 1.0), ("qsgd", 2, 4),
    ("qsgd", 4, 8), ("qsgd", 6, 8), ("qsgd", 8, 16),
])
def test_default_gentle_setting(method, setting, gentle):
    assert get_compressor(method).gentle(setting) == gentle
    assert CompressionConfig(method, **{CompressionConfig(method).compressor().knob:
                                        setting}).gentle == gentle


def _shrinking_gradients(rank, world):
    """A layer whose gradient shrinks 4x at step 12 and then stays: critical at the first two
    decisions, stable after the change settles. Ranks feed different noise."""
    from distcomp.comm import TorchComm

    comm = TorchComm()
    red = CompressedReducer(CompressionConfig("powersgd", rank=2, warmup_steps=2,
                                              accordion_interval=4, min_compression_rate=1.0),
                            rank)
    gen = torch.Generator().manual_seed(rank)
    used = []
    for step in range(24):
        scale = 4.0 if step < 12 else 1.0
        g = scale * (torch.ones(32, 16) + 0.01 * torch.randn(32, 16, generator=gen))
        red.reduce([g, torch.ones(3)], ["w", "bias"], comm, step)
        used.append(red.setting_for("w", torch.Size([32, 16]), step))
    return {"used": used, "switches": red.accordion.switches,
            "control": red.ledger.per_key.get("<control>", 0)}


def test_ranks_switch_together_and_statistics_are_counted():
    r0, r1 = run_ranks(_shrinking_gradients)
    assert r0["used"] == r1["used"] and r0["switches"] == r1["switches"]
    # decisions at 4, 8 (first comparison: stable), 12 (4x drop seen at 16), ...
    assert r0["used"][:8] == [8] * 8  # warm-up and the first intervals: gentle (rank 2 x 4)
    assert r0["used"][8:16] == [2] * 8  # steps 4-7 vs 0-3: the same norm, aggressive
    assert r0["used"][16:20] == [8] * 4  # 12-15 vs 8-11: norm fell 4x, gentle again
    assert r0["used"][20:] == [2] * 4
    # one float64 per layer and decision, 5 decisions (steps 4 ... 20), plus the flag element
    # of every compressed step
    assert r0["control"] == 5 * 8 + 4 * 22
