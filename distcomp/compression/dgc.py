"""Deep Gradient Compression (Lin et al., ICLR 2018) for the methods that send a subset of each
tensor's entries (top-k, random-k): momentum correction and momentum-factor masking behind an
unchanged momentum-SGD optimizer, the density warm-up, and the options and L-GreCo grid those
methods share (:class:`Sparsifier`).

Why: with plain error feedback, an entry of the gradient that waits k steps in the residual is
sent once, as a lump, and the optimizer's momentum then replays that lump for ~1/(1 - m) steps:
delayed entries are applied far more strongly and later than in dense SGD, which destabilises
training at a density of 1%. DGC accumulates the
*velocity* locally instead of the gradient, so that what is finally sent is what momentum SGD
would have applied, and zeroes the velocity of the entries it sends (masking), so they are not
pushed again by stale momentum:

    u <- m u + g           local velocity (per rank)
    v <- v + u             the residual of error feedback accumulates velocity
    send top-k(v); v, u <- 0 where sent
    S_t = average of the ranks' sparse v: the update DGC applies, w <- w - lr S_t

The user's optimizer is ``torch.optim.SGD(momentum=m)``, which would apply momentum once more.
So the hook hands it ``x_t = S_t - m S_{t-1}`` instead of S_t: its buffer b_t = m b_{t-1} + x_t
then equals S_t exactly (induction from b = S = 0), and the step is DGC's. Weight decay, added by
the optimizer, keeps ordinary momentum. ``m`` must equal the optimizer's momentum (nesterov
off); other optimizers (Adam) should not use this.

Steps where a layer travels dense (the reducer's warm-up, an inf/NaN fallback) are momentum SGD:
the tracked buffer follows b <- m b + avg, and the velocity restarts from it, so training goes on
with the momentum it had.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import torch

from distcomp.knobs import Knobs, knob

log = logging.getLogger(__name__)
DENSITY_WARMUP_START = 0.25  # the density at the start of the warm-up (DGC's first stage)


class MomentumCorrection:
    """Per-layer DGC state of one process. Fields:

    momentum: m, the optimizer's momentum.
    velocity: key -> u, this rank's velocity (fp32, gradient shape).
    buffer: key -> what the optimizer's momentum buffer holds of the averaged gradients
        (S_{t-1} after a compressed step); identical on every rank.
    """

    def __init__(self, momentum: float):
        self.momentum = momentum
        self.velocity: dict[str, torch.Tensor] = {}
        self.buffer: dict[str, torch.Tensor] = {}
        self._pending: dict[str, torch.Tensor] = {}

    def accumulate(self, key: str, grad: torch.Tensor, residual: torch.Tensor) -> torch.Tensor:
        """u' = m u + g; returns v + u', what top-k selects from (a new tensor). u' is kept
        aside until :meth:`mask` commits it: a step that falls back (inf/NaN) changes nothing."""
        u = self.velocity.get(key)
        if u is None:
            u = self.buffer.get(key)
        u = torch.zeros_like(residual) if u is None else u.to(residual.device) * self.momentum
        u.add_(grad.to(u.dtype))
        self._pending[key] = u
        return residual + u

    def mask(self, key: str, sent: torch.Tensor) -> None:
        """Commit this step's velocity, zeroed where this rank's entries were sent (``sent``:
        bool, gradient shape)."""
        self.velocity[key] = self._pending.pop(key).masked_fill_(sent, 0.0)

    def deliver(self, key: str, update: torch.Tensor) -> torch.Tensor:
        """S_t -> the gradient to hand to the optimizer, x_t = S_t - m S_{t-1}."""
        prev = self.buffer.get(key)
        self.buffer[key] = update.detach().clone()
        return update if prev is None else update - self.momentum * prev.to(update.device)

    def dense(self, key: str, avg: torch.Tensor) -> None:
        """A dense step of this layer: the optimizer's buffer did b <- m b + avg."""
        prev = self.buffer.get(key)
        b = avg.detach().to(torch.float32, copy=True)
        if prev is not None:
            b.add_(prev.to(b.device), alpha=self.momentum)
        self.buffer[key] = b
        self.velocity.pop(key, None)

    def state_dict(self) -> dict:
        return {"velocity": {k: v.clone() for k, v in self.velocity.items()},
                "buffer": {k: v.clone() for k, v in self.buffer.items()}}

    def load_state_dict(self, state: dict) -> None:
        self.velocity = {k: v.clone() for k, v in state["velocity"].items()}
        self.buffer = {k: v.clone() for k, v in state["buffer"].items()}


@dataclass(frozen=True)
class SparseOptions(Knobs):
    """Options of a method that sends a subset of each tensor's entries (top-k, random-k).

    density: fraction of entries sent, in (0, 1].
    momentum: the momentum m of an optimizer ``SGD(momentum=m)``: its momentum correction and
        momentum-factor masking (:class:`MomentumCorrection`). 0 (default) is plain error
        feedback, right for Adam and plain SGD; ``distcomp.hooks.attach`` reads it from the
        optimizer.
    density_warmup_steps: after the dense warm-up the density starts at 25% and falls
        exponentially to ``density`` over this many steps (DGC's sparsity warm-up).
    """

    density: float = knob(0.01, low=0.0, high=1.0, low_open=True)
    momentum: float = knob(0.0, low=0.0, high=1.0, high_open=True, strict=True)
    density_warmup_steps: int = knob(0, low=0, strict=True)


@dataclass(frozen=True)
class SparsePlan(Knobs):
    """L-GreCo's density candidates: ``topk_points`` densities log-spaced in
    [d / topk_span, d * topk_span] (capped at 1)."""

    topk_span: float = knob(4.0, low=1.0, high=1e6, low_open=True)
    topk_points: int = knob(9, low=1)


class Sparsifier:
    """What every sparsifying method shares, mixed into its :class:`Compressor` class:
    momentum correction, the density warm-up, its gentle density and its L-GreCo grid."""

    options: SparseOptions

    @property
    def momentum(self) -> float:
        return self.options.momentum

    def gentle(self, setting: float) -> float:
        """4x the density, at most 1."""
        return min(1.0, 4 * float(setting))

    def scheduled(self, setting: float, steps_compressed: int) -> float:
        """DGC's sparsity warm-up: from DENSITY_WARMUP_START down to ``setting``, exponentially
        over ``density_warmup_steps`` steps after the dense warm-up (each layer scaled by the
        same factor, so L-GreCo's and Accordion's ratios between layers are kept)."""
        total = self.options.density_warmup_steps
        if steps_compressed >= total:
            return setting
        factor = (DENSITY_WARMUP_START / self.options.density) ** (1.0 - steps_compressed / total)
        return min(max(DENSITY_WARMUP_START, setting), setting * factor)

    def candidates(self, uniform: float, shape: torch.Size, plan: SparsePlan) -> list[float]:
        n = plan.topk_points
        exps = [2 * i / (n - 1) - 1 for i in range(n)] if n > 1 else [0.0]  # symmetric in [-1, 1]
        return [min(1.0, uniform * plan.topk_span**t) for t in exps]

    @classmethod
    def options_from_optimizer(cls, optimizer: torch.optim.Optimizer) -> dict:
        """``momentum`` of a ``torch.optim.SGD`` with heavy-ball momentum; nothing for other
        optimizers (Adam needs no correction). Nesterov or dampened momentum is not what the
        correction models: logged, and left uncorrected."""
        if not isinstance(optimizer, torch.optim.SGD):
            return {}
        groups = optimizer.param_groups
        momenta = {float(g["momentum"]) for g in groups}
        if len(momenta) > 1:
            raise ValueError(f"the optimizer's parameter groups have different momenta "
                             f"{sorted(momenta)}; momentum correction needs one: pass momentum=")
        m = momenta.pop()
        if m and any(g.get("nesterov") or g.get("dampening") for g in groups):
            log.warning("distcomp: %s's momentum correction models heavy-ball SGD; with "
                        "nesterov or dampening it is left off", cls.__name__)
            return {}
        return {"momentum": m} if m else {}
