"""An image classification task of the kind users train, built offline: cluttered digits and a
ResNet with BatchNorm.

Data ("cluttered digits"): scikit-learn's bundled 1,797 handwritten digits (8x8, 16 grey levels,
no download) are each warped onto a 32x32 canvas at a random scale (45-70% of the side),
rotation (+-20 degrees) and position; three rotated fragments of other digits are laid over
the canvas as clutter, then Gaussian pixel noise. The network has to find the digit among
look-alike strokes, so loss keeps falling for thousands of steps instead of reaching zero in a
hundred (plain 8x8 digits are solved almost at once). Train and test images come from disjoint
source digits (the first 1,500 and the last 297), so test accuracy measures generalisation to
unseen handwriting. Stored as uint8, (N, 32, 32).

Model: a ResNet-18-style network sized for a CPU: a stride-2 3x3 stem, four stages of one
BasicBlock each (32, 64, 128, 256 channels, strides 1, 2, 2, 2), BatchNorm after every
convolution, global average pooling, one linear layer: 1.23 M parameters (4.9 MB of fp32
gradients a step), ~45 ms per step of 32 images on one thread here.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

SIDE = 32
TRAIN_SOURCES = 1500  # source digits 0..1499 render the train set, the rest the test set


def _affine(n: int, scale: torch.Tensor, angle: torch.Tensor, tx: torch.Tensor,
            ty: torch.Tensor) -> torch.Tensor:
    """(n, 2, 3) inverse maps for ``F.affine_grid``: a source image drawn at ``scale`` of the
    canvas side, rotated by ``angle`` (radians) and centred at (tx, ty) in [-1, 1]."""
    cos, sin = torch.cos(angle) / scale, torch.sin(angle) / scale
    row0 = torch.stack([cos, -sin, -(cos * tx - sin * ty)], 1)
    row1 = torch.stack([sin, cos, -(sin * tx + cos * ty)], 1)
    return torch.stack([row0, row1], 1)


def _warp(src: torch.Tensor, theta: torch.Tensor) -> torch.Tensor:
    grid = F.affine_grid(theta, (len(src), 1, SIDE, SIDE), align_corners=False)
    return F.grid_sample(src.unsqueeze(1), grid, align_corners=False)


def render(digits: torch.Tensor, index: torch.Tensor, g: torch.Generator,
           clutter: int = 3, noise: float = 0.25) -> np.ndarray:
    """Cluttered canvases of ``digits[index]``: (len(index), 32, 32) uint8.

    digits: (D, 8, 8) float in [0, 1]; every draw comes from ``g``, so a seed fixes the set."""
    n = len(index)

    def uniform(lo: float, hi: float) -> torch.Tensor:
        return torch.empty(n).uniform_(lo, hi, generator=g)

    scale = uniform(0.45, 0.7)
    theta = _affine(n, scale, uniform(-0.35, 0.35), uniform(-1, 1) * (1 - scale),
                    uniform(-1, 1) * (1 - scale))
    canvas = _warp(digits[index], theta)
    for _ in range(clutter):
        other = digits[torch.randint(0, len(digits), (n,), generator=g)].clone()
        other[:, :4, :] = 0  # a fragment: the lower half of another digit
        theta = _affine(n, uniform(0.3, 0.6), uniform(-math.pi, math.pi), uniform(-1, 1),
                        uniform(-1, 1))
        canvas = torch.maximum(canvas, 0.7 * _warp(other, theta))
    canvas = canvas + noise * torch.randn(canvas.shape, generator=g)
    return (canvas.clamp(0, 1) * 255).round().to(torch.uint8).squeeze(1).numpy()


def make_dataset(train: int = 30000, test: int = 5000, seed: int = 0) -> dict[str, np.ndarray]:
    """{"x", "y", "x_test", "y_test"}: uint8 images (N, 32, 32) and int64 labels."""
    from sklearn.datasets import load_digits

    d = load_digits()
    digits = torch.tensor(d.images, dtype=torch.float32) / 16.0
    labels = torch.tensor(d.target, dtype=torch.int64)
    g = torch.Generator().manual_seed(seed)
    out = {}
    for name, n, lo, hi in (("", train, 0, TRAIN_SOURCES), ("_test", test, TRAIN_SOURCES,
                                                            len(digits))):
        index = torch.randint(lo, hi, (n,), generator=g)
        out["x" + name] = render(digits, index, g)
        out["y" + name] = labels[index].numpy()
    return out


class BasicBlock(nn.Module):
    """Two 3x3 convolutions with BatchNorm and a residual connection (1x1 conv + BN when the
    shape changes), as in ResNet-18."""

    def __init__(self, cin: int, cout: int, stride: int):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.shortcut = nn.Identity()
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False),
                                          nn.BatchNorm2d(cout))

    def forward(self, x):
        h = F.relu(self.bn1(self.conv1(x)))
        return F.relu(self.bn2(self.conv2(h)) + self.shortcut(x))


class ResNet(nn.Module):
    """Stem + one BasicBlock per stage + linear head; input (B, 1, 32, 32), output (B, 10)."""

    def __init__(self, widths: tuple[int, ...] = (32, 64, 128, 256), classes: int = 10):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(1, widths[0], 3, 2, 1, bias=False),
                                  nn.BatchNorm2d(widths[0]), nn.ReLU())
        blocks, cin = [], widths[0]
        for i, w in enumerate(widths):
            blocks.append(BasicBlock(cin, w, 1 if i == 0 else 2))
            cin = w
        self.blocks = nn.Sequential(*blocks)
        self.fc = nn.Linear(cin, classes)

    def forward(self, x):
        return self.fc(F.adaptive_avg_pool2d(self.blocks(self.stem(x)), 1).flatten(1))
