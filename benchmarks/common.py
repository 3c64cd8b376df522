"""Helpers every benchmark shares: JSON output written atomically, environment description."""

from __future__ import annotations

import json
import os
import platform
import tempfile
from pathlib import Path

import torch


def environment() -> dict:
    return {
        "torch": torch.__version__,
        "python": platform.python_version(),
        "cpus": os.cpu_count(),
        "threads": torch.get_num_threads(),
        "machine": platform.machine(),
    }


def write_json(path: str | Path, payload: dict) -> None:
    """Write via a temporary file and rename, so a crash never leaves half a file behind."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name, suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(payload, f, indent=2)
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise
