"""A small model briefly trained on the data itself: the default source of features and scores.

EL2N and GraNd score samples by the error of an early-training model, forgetting counts how
often a sample flips from right to wrong between epochs, and dataset quantization needs an
embedding; when the user brings neither a model nor an embedding column, all of them come from
one short run of an MLP on the raw (flattened, standardised) inputs. Deterministic given the
seed (single-threaded CPU kernels are; the run sets no thread count itself).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from distcomp.data.progress import track


@dataclass
class Dynamics:
    """What one short training run saw, per sample (n samples, C classes, H hidden units).

    probs: (n, C) float32 softmax at the end of epoch ``score_epoch`` (early training).
    correct: (epochs, n) bool, argmax == label after every epoch.
    hidden: (n, H) float32 penultimate activations of the final model (the embedding).
    final_probs: (n, C) float32 softmax of the final model (for GraNd with ``hidden``).
    model: the trained probe, in eval mode, to score other rows (standardise them with
    ``standardise(rows, like=x)``, the statistics the probe was trained with).
    """

    probs: np.ndarray
    correct: np.ndarray
    hidden: np.ndarray
    final_probs: np.ndarray
    model: nn.Module | None = field(default=None, repr=False)


class ProbeMLP(nn.Module):
    def __init__(self, d_in: int, classes: int, hidden: int = 128):
        super().__init__()
        self.body = nn.Sequential(nn.Linear(d_in, hidden), nn.ReLU(),
                                  nn.Linear(hidden, hidden), nn.ReLU())
        self.head = nn.Linear(hidden, classes)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = self.body(x)
        return self.head(h), h


def standardise(x: np.ndarray, like: np.ndarray | None = None) -> np.ndarray:
    """Rows of x flattened to (n, d) float32, each column shifted and scaled to mean 0 and
    standard deviation 1 using the statistics of ``like`` (default: x itself), e.g. held-out
    rows scaled as the training rows were. The 1e-6 keeps constant columns finite."""
    x = np.asarray(x, dtype=np.float32).reshape(len(x), -1)
    ref = x if like is None else np.asarray(like, dtype=np.float32).reshape(len(like), -1)
    return (x - ref.mean(0)) / (ref.std(0) + 1e-6)


def train_probe(x: np.ndarray, labels: np.ndarray, *, epochs: int = 10, score_epoch: int = 2,
                hidden: int = 128, batch_size: int = 256, lr: float = 3e-3, seed: int = 0,
                progress: bool = False, classes: int | None = None,
                make_model: Callable[[int, int], nn.Module] | None = None) -> Dynamics:
    """Train a probe for ``epochs`` on (x, labels) and record :class:`Dynamics`.

    x: (n, ...) numeric, flattened and standardised; labels: (n,) ints in [0, C).
    ``score_epoch`` (1-based) is the early epoch whose probabilities EL2N uses. ``classes``:
    the width of the output layer (default max label + 1; pass the full dataset's count when
    training on a subset that may miss the last class, so its scores stay comparable).
    ``make_model(d, C)`` builds the probe after seeding (so the run stays deterministic): a
    module mapping a (batch, d) float32 tensor to (logits (batch, C), hidden (batch, H)), for
    data whose structure an MLP misses (a 1-D CNN for signals, say); default
    :class:`ProbeMLP` with ``hidden`` units.
    """
    if not 1 <= score_epoch <= epochs:
        raise ValueError(f"score_epoch must be in [1, epochs={epochs}], got {score_epoch}")
    labels = np.asarray(labels)
    classes = int(labels.max()) + 1 if classes is None else classes
    xs = torch.from_numpy(standardise(x))
    ys = torch.from_numpy(labels.astype(np.int64))
    gen = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    if make_model is None:
        model = ProbeMLP(xs.shape[1], classes, hidden)
    else:
        model = make_model(xs.shape[1], classes)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=1e-4)
    correct = np.zeros((epochs, len(xs)), dtype=bool)
    early = None
    for epoch in track(range(epochs), "probe epochs", progress):
        model.train()
        for idx in torch.randperm(len(xs), generator=gen).split(batch_size):
            loss = F.cross_entropy(model(xs[idx])[0], ys[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        probs, hid = predict(model, xs)
        correct[epoch] = probs.argmax(1) == labels
        if epoch + 1 == score_epoch:
            early = probs
    return Dynamics(probs=early, correct=correct, hidden=hid, final_probs=probs, model=model)


def fit_probe(x: np.ndarray, labels: np.ndarray, *, steps: int, classes: int,
              hidden: int = 128, batch_size: int = 256, lr: float = 3e-3, seed: int = 0
              ) -> nn.Module:
    """The probe MLP trained for exactly ``steps`` AdamW steps (shuffled epochs of batches of
    ``batch_size``, the last epoch cut short) on (x, labels), without :func:`train_probe`'s
    per-epoch bookkeeping: for comparing training sets of different sizes at equal training
    length. x is standardised with its own statistics (score other rows with
    ``standardise(rows, like=x)``); returns the model in eval mode. Deterministic given seed.
    """
    labels = np.asarray(labels)
    xs = torch.from_numpy(standardise(x))
    ys = torch.from_numpy(labels.astype(np.int64))
    gen = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    model = ProbeMLP(xs.shape[1], classes, hidden)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=1e-4)
    model.train()
    done = 0
    while done < steps:
        for idx in torch.randperm(len(xs), generator=gen).split(batch_size)[:steps - done]:
            loss = F.cross_entropy(model(xs[idx])[0], ys[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            done += 1
    return model.eval()


@torch.no_grad()
def predict(model: nn.Module, xs: torch.Tensor, batch_size: int = 8192
            ) -> tuple[np.ndarray, np.ndarray]:
    """(softmax (n, C), hidden (n, H)) as float32 numpy, in batches."""
    model.eval()
    probs, hidden = [], []
    for chunk in xs.split(batch_size):
        logits, h = model(chunk)
        probs.append(F.softmax(logits, 1).numpy())
        hidden.append(h.numpy())
    return np.concatenate(probs), np.concatenate(hidden)
