"""Embeddings from a user's torch model, in batches (the default model is in ``dynamics``)."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from distcomp.data.progress import track


@torch.no_grad()
def embed_with_model(model: nn.Module, x: np.ndarray, *, batch_size: int = 1024,
                     progress: bool = False) -> np.ndarray:
    """model(x) for batches of rows of x, flattened to (n, d) float32. The model sees float32
    tensors shaped like x's rows; it runs in eval mode on the CPU."""
    model.eval()
    xs = torch.as_tensor(np.asarray(x, dtype=np.float32))
    batches = track(xs.split(batch_size), "embed (batches)", progress)
    out = [model(b).reshape(len(b), -1).float().numpy() for b in batches]
    return np.concatenate(out) if out else np.zeros((0, 0), np.float32)
