"""Checkpoint files: atomic, verified, and a resume falls back past a damaged one."""

from __future__ import annotations

import json

import pytest
import torch

from distcomp.checkpoint import latest, load_rank, save_rank


def test_round_trip_fallback_and_pruning(tmp_path):
    assert latest(tmp_path, 1) is None
    for epoch in range(3):
        save_rank(tmp_path, epoch, 0, 1, {"w": torch.full((3,), float(epoch))})
    names = sorted(p.name for p in tmp_path.iterdir())
    assert names == ["ckpt1-rank0.pt", "ckpt2-rank0.pt", "latest.json"]  # keep 2, no temps
    assert latest(tmp_path, 1) == 2
    assert load_rank(tmp_path, 2, 0)["w"].tolist() == [2.0, 2.0, 2.0]
    newest = tmp_path / "ckpt2-rank0.pt"
    newest.write_bytes(newest.read_bytes()[:-10])  # cut short on disk
    assert latest(tmp_path, 1) == 1
    with pytest.raises(ValueError, match="corrupt"):
        load_rank(tmp_path, 2, 0)
    with pytest.raises(ValueError, match="made by 1 ranks, this run has 2"):
        latest(tmp_path, 2)
    (tmp_path / "ckpt1-rank0.pt").write_bytes(b"garbage")
    assert latest(tmp_path, 1) is None
    assert json.loads((tmp_path / "latest.json").read_text()) == {"index": 2, "world": 1}
