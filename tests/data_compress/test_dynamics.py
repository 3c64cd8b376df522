"""The probe run behind EL2N, forgetting and the default embedding: shapes, determinism, a
user-built probe model, and a probe that actually learns."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from distcomp.data.dynamics import train_probe


def _blobs(n: int = 300, d: int = 12, classes: int = 3, seed: int = 0):
    rng = np.random.default_rng(seed)
    y = rng.integers(classes, size=n)
    centres = rng.normal(scale=3.0, size=(classes, d))
    return (centres[y] + rng.normal(size=(n, d))).astype(np.float32), y


def test_fields_have_documented_shapes_and_the_probe_learns():
    x, y = _blobs()
    dyn = train_probe(x, y, epochs=4, score_epoch=1, hidden=16, batch_size=16, seed=0)
    assert dyn.probs.shape == dyn.final_probs.shape == (300, 3)
    assert dyn.correct.shape == (4, 300) and dyn.hidden.shape == (300, 16)
    assert dyn.correct[-1].mean() > 0.9  # well-separated blobs


def test_same_seed_same_dynamics_other_seed_other_dynamics():
    x, y = _blobs()
    a, b, c = (train_probe(x, y, epochs=2, score_epoch=1, seed=s) for s in (0, 0, 1))
    assert np.array_equal(a.hidden, b.hidden) and np.array_equal(a.probs, b.probs)
    assert not np.array_equal(a.hidden, c.hidden)


class _Conv(nn.Module):
    def __init__(self, d: int, classes: int):
        super().__init__()
        self.conv = nn.Conv1d(1, 4, 3, padding=1)
        self.head = nn.Linear(4 * d, classes)

    def forward(self, x):
        h = torch.relu(self.conv(x.unsqueeze(1))).flatten(1)
        return self.head(h), h


def test_a_user_built_probe_is_built_after_seeding_and_used():
    x, y = _blobs(d=8)
    a, b = (train_probe(x, y, epochs=2, score_epoch=2, seed=3, make_model=_Conv) for _ in "ab")
    assert a.hidden.shape == (300, 32)  # the conv's 4 channels x 8 positions
    assert np.array_equal(a.hidden, b.hidden)


def test_score_epoch_outside_the_run_is_refused():
    x, y = _blobs()
    with pytest.raises(ValueError, match="score_epoch"):
        train_probe(x, y, epochs=3, score_epoch=4)
