"""Per-rank training checkpoints that are never half-written, never silently corrupt, and safe
to open.

Every rank saves its own file per checkpoint (compression residuals and CO2's local state differ
per rank): ``<dir>/ckpt<I>-rank<R>.pt`` for a growing index I (``launch/train.py`` uses the
global step, so a save at an epoch's end and one on SIGTERM mid-epoch order naturally). Each is
a plain ``torch.save`` file, so ``torch.load(path)`` opens it, written to a temporary name,
fsynced, then renamed; its SHA-256 goes beside it in ``<file>.sha256`` (``sha256sum -c``
format), written the same way after the file. After every rank has saved (a barrier), rank 0
records the index in ``<dir>/latest.json``. A resume takes the newest index whose files all
exist and match their SHA-256, so a crash in the middle of saving, or a file cut short on disk,
falls back to the previous good one. The newest ``keep`` checkpoints are kept.

Loading unpickles with ``weights_only=True``: tensors, containers, numbers and strings only, so
a checkpoint from an untrusted place cannot run code (the SHA-256 detects corruption, not
tampering). Files of distcomp 0.1 (the SHA-256 in a first line inside the file) are still read,
verified and loaded the same safe way.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import pickle
import re
from pathlib import Path

import torch
import torch.distributed as dist

LEGACY_MAGIC = b"distcomp-checkpoint sha256="  # 0.1's in-file header


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


def _sidecar(path: Path) -> Path:
    return path.with_name(path.name + ".sha256")


def save_rank(directory: str | Path, index: int, rank: int, world: int, payload: dict,
              keep: int = 2) -> None:
    """Save this rank's ``payload`` (tensors, containers, numbers, strings) as checkpoint
    ``index`` (>= 0, growing); collective over the default group (a barrier, then rank 0 marks
    the checkpoint complete)."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    buf = io.BytesIO()
    torch.save(payload, buf)
    data = buf.getvalue()
    path = _path(directory, index, rank)
    _atomic_write(path, data)
    _atomic_write(_sidecar(path), f"{hashlib.sha256(data).hexdigest()}  {path.name}\n".encode())
    if dist.is_initialized():
        dist.barrier()
    if rank == 0:
        _atomic_write(directory / "latest.json",
                      json.dumps({"index": index, "world": world}).encode())
        for old in sorted(_indices(directory))[:-keep]:
            for r in range(world):
                _path(directory, old, r).unlink(missing_ok=True)
                _sidecar(_path(directory, old, r)).unlink(missing_ok=True)


def _indices(directory: Path) -> set[int]:
    return {int(m.group(1)) for p in directory.glob("ckpt*-rank*.pt")
            if (m := re.fullmatch(r"ckpt(\d+)-rank\d+\.pt", p.name))}


def _read(path: Path) -> bytes:
    """The verified bytes of a checkpoint file; ValueError if it is cut short, altered or has
    no SHA-256 beside it (a save that did not finish)."""
    raw = path.read_bytes()
    if raw.startswith(LEGACY_MAGIC):
        head, _, data = raw.partition(b"\n")
        want = head[len(LEGACY_MAGIC):].decode(errors="replace")
    else:
        side = _sidecar(path)
        if not side.exists():
            raise ValueError(f"{path} has no {side.name} beside it (its save did not finish)")
        data, want = raw, side.read_text().split(" ")[0].strip()
    if hashlib.sha256(data).hexdigest() != want:
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
    """This rank's payload of checkpoint ``index``, verified, then unpickled with
    ``weights_only=True``; ValueError naming the file if it holds anything else (a pickled
    callable, a custom class)."""
    path = _path(directory, index, rank)
    try:
        return torch.load(io.BytesIO(_read(path)), weights_only=True)
    except pickle.UnpicklingError as e:
        raise ValueError(f"{path} holds more than tensors, containers, numbers and strings; "
                         f"refused (weights_only=True): {str(e).splitlines()[0]}") from e
