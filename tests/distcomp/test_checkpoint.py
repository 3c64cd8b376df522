"""Checkpoint files: atomic, verified, plain torch files, safe to load, and a resume falls back
past a damaged one."""

from __future__ import annotations

import hashlib
import io
import json
import shutil
import subprocess

import pytest
import torch

from distcomp.checkpoint import LEGACY_MAGIC, latest, load_rank, save_rank


def test_round_trip_fallback_and_pruning(tmp_path):
    assert latest(tmp_path, 1) is None
    for epoch in range(3):
        save_rank(tmp_path, epoch, 0, 1, {"w": torch.full((3,), float(epoch))})
    names = sorted(p.name for p in tmp_path.iterdir())
    assert names == ["ckpt1-rank0.pt", "ckpt1-rank0.pt.sha256", "ckpt2-rank0.pt",
                     "ckpt2-rank0.pt.sha256", "latest.json"]  # keep 2, no temps
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


def test_a_checkpoint_is_a_plain_torch_file_with_its_sha256_beside_it(tmp_path):
    save_rank(tmp_path, 5, 0, 1, {"w": torch.arange(4.0), "step": 5})
    path = tmp_path / "ckpt5-rank0.pt"
    assert torch.load(path)["w"].tolist() == [0.0, 1.0, 2.0, 3.0]  # torch's defaults
    if shutil.which("sha256sum"):
        check = subprocess.run(["sha256sum", "-c", "ckpt5-rank0.pt.sha256"], cwd=tmp_path,
                               capture_output=True, text=True)
        assert check.returncode == 0, check.stdout + check.stderr


def test_a_save_without_its_sha256_is_skipped_on_resume(tmp_path):
    for step in (1, 2):
        save_rank(tmp_path, step, 0, 1, {"step": step})
    (tmp_path / "ckpt2-rank0.pt.sha256").unlink()  # died between the file and its sidecar
    assert latest(tmp_path, 1) == 1
    with pytest.raises(ValueError, match="no ckpt2-rank0.pt.sha256 beside it"):
        load_rank(tmp_path, 2, 0)


class Payload:
    def __reduce__(self):
        return (print, ("this ran while loading a checkpoint",))


def test_a_checkpoint_carrying_a_pickled_callable_is_refused(tmp_path, capsys):
    save_rank(tmp_path, 1, 0, 1, {"w": torch.ones(2), "evil": Payload()})
    assert latest(tmp_path, 1) == 1  # intact on disk: the SHA-256 matches
    with pytest.raises(ValueError, match="refused"):
        load_rank(tmp_path, 1, 0)
    assert "this ran" not in capsys.readouterr().out


def test_a_checkpoint_of_distcomp_0_1_is_still_read_and_checked(tmp_path):
    buf = io.BytesIO()
    torch.save({"step": 7, "w": torch.zeros(2)}, buf)
    data = buf.getvalue()
    path = tmp_path / "ckpt7-rank0.pt"
    path.write_bytes(LEGACY_MAGIC + hashlib.sha256(data).hexdigest().encode() + b"\n" + data)
    (tmp_path / "latest.json").write_text(json.dumps({"index": 7, "world": 1}))
    assert latest(tmp_path, 1) == 7 and load_rank(tmp_path, 7, 0)["step"] == 7
    path.write_bytes(path.read_bytes()[:-3])
    assert latest(tmp_path, 1) is None
