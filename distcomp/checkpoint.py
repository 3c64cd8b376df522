"""Per-rank training checkpoints that are never half-written and never silently corrupt.

Every rank saves its own file per checkpoint (compression residuals and CO2's local state differ
per rank): ``<dir>/ckpt<I>-rank<R>.pt`` for a growing index I (``launch/train.py`` uses the
global step, so a save at an epoch's end and one on SIGTERM mid-epoch order naturally), written
to a temporary name, fsynced, then renamed, with a SHA-256 of the payload in its first line.
After every rank has saved (a barrier), rank 0 records the index in ``<dir>/latest.json`` the
same way. A resume takes the newest index whose files all exist and verify, so a crash in the
middle of saving, or a file cut short on disk, falls back to the previous good one. The newest
``keep`` checkpoints are kept.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import re
from pathlib import Path

import torch
import torch.distributed as dist

MAGIC = b"distcomp-checkpoint sha256="


def _atomic_write(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    tmp.replace(path)
    fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(fd)  # the rename itself survives a power loss
    finally:
        os.close(fd)


def _path(directory: str | Path, index: int, rank: int) -> Path:
    return Path(directory) / f"ckpt{index}-rank{rank}.pt"


def save_rank(directory: str | Path, index: int, rank: int, world: int, payload: dict,
              keep: int = 2) -> None:
    """Save this rank's ``payload`` as checkpoint ``index`` (>= 0, growing); collective over the
    default group (a barrier, then rank 0 marks the checkpoint complete)."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    buf = io.BytesIO()
    torch.save(payload, buf)
    data = buf.getvalue()
    _atomic_write(_path(directory, index, rank),
                  MAGIC + hashlib.sha256(data).hexdigest().encode() + b"\n" + data)
    if dist.is_initialized():
        dist.barrier()
    if rank == 0:
        _atomic_write(directory / "latest.json",
                      json.dumps({"index": index, "world": world}).encode())
        for old in sorted(_indices(directory))[:-keep]:
            for r in range(world):
                _path(directory, old, r).unlink(missing_ok=True)


def _indices(directory: Path) -> set[int]:
    return {int(m.group(1)) for p in directory.glob("ckpt*-rank*.pt")
            if (m := re.fullmatch(r"ckpt(\d+)-rank\d+\.pt", p.name))}


def _read(path: Path) -> bytes:
    """The payload of a checkpoint file; ValueError if it is cut short or altered."""
    raw = path.read_bytes()
    head, _, data = raw.partition(b"\n")
    if not head.startswith(MAGIC):
        raise ValueError(f"{path} is not a distcomp checkpoint (no header)")
    if hashlib.sha256(data).hexdigest().encode() != head[len(MAGIC):]:
        raise ValueError(f"{path} is corrupt: its SHA-256 does not match (cut short on disk?)")
    return data


def latest(directory: str | Path, world: int) -> int | None:
    """Index of the newest complete checkpoint: recorded in latest.json (or earlier) with every
    rank's file present and verified. None if there is none; ValueError if it was made with a
    different number of ranks."""
    directory = Path(directory)
    marker = directory / "latest.json"
    if not marker.exists():
        return None
    info = json.loads(marker.read_text())
    if info["world"] != world:
        raise ValueError(f"the checkpoint in {directory} was made by {info['world']} ranks, "
                         f"this run has {world}")
    for index in sorted((i for i in _indices(directory) if i <= info["index"]), reverse=True):
        try:
            for r in range(world):
                _read(_path(directory, index, r))
        except (OSError, ValueError):
            continue
        return index
    return None


def load_rank(directory: str | Path, index: int, rank: int) -> dict:
    return torch.load(io.BytesIO(_read(_path(directory, index, rank))), weights_only=False)
