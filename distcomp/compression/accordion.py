"""Gentle compression in critical regimes, aggressive elsewhere: a schedule in the style of
Accordion (Agarwal et al., MLSys 2021).

Why: compression error does not cost the same at every point of training. Early on, and after
a learning-rate change, the gradient changes fast and errors made then are not recovered
("critical regimes"); in the long stable stretches between, the same error costs little. A
single setting is either too gentle for the stable stretches (bytes wasted) or too aggressive
for the critical ones (accuracy lost). Accordion detects the regime from how fast the gradient
norm changes and switches between two settings.

Detection, per compressed layer, every ``interval`` steps: the layer's raw local gradients of
the interval are summed, the norm of that sum is averaged over ranks (one all-reduce of one
float64 per layer per interval, counted in the ledger as control bytes), and compared with the
previous interval's:

    critical  <=>  | ||G_prev|| - ||G_cur|| |  >=  threshold x ||G_prev||

A critical layer is compressed with the *gentle* setting over the next interval, any other with
the user's (*aggressive*) setting. Training starts critical (nothing is known yet), so the first
interval is always gentle. Every rank decides on the same averaged numbers, so all ranks switch
together (mismatched settings would mismatch collectives). Layers are judged one by one: a
layer whose gradient has settled is compressed hard while another still moves.

Units: ``interval`` in optimizer steps; ``threshold`` a fraction; settings as the method's knob
(PowerSGD rank, top-k density, QSGD bits). With L-GreCo the per-layer choice here is the error
budget the planner must meet (see :mod:`distcomp.compression.lgreco`).
"""

from __future__ import annotations

import math

import torch


class Accordion:
    """Regime state of one process. Fields:

    interval, threshold: see :class:`~distcomp.compression.config.CompressionConfig`
        (``accordion_*``).
    gentle, aggressive: the two settings.
    acc: key -> sum of this rank's raw gradients over the current interval (fp32, gradient
        shape); only for layers the compressor can compress.
    norms: key -> the previous interval's rank-averaged norm of that sum.
    critical: key -> whether the layer is in a critical regime now (absent: critical).
    switches: list of {"step", "critical": [keys]}, one per decision that changed anything.
    """

    def __init__(self, interval: int, threshold: float, gentle: float, aggressive: float):
        self.interval, self.threshold = interval, threshold
        self.gentle, self.aggressive = gentle, aggressive
        self.acc: dict[str, torch.Tensor] = {}
        self.norms: dict[str, float] = {}
        self.critical: dict[str, bool] = {}
        self.switches: list[dict] = []

    def setting(self, key: str) -> float:
        return self.gentle if self.critical.get(key, True) else self.aggressive

    def baseline(self, keys) -> dict[str, float]:
        """key -> this step's setting for every key in ``keys``."""
        return {k: self.setting(k) for k in keys}

    def observe(self, key: str, grad: torch.Tensor) -> None:
        """Add one step's raw local gradient of a compressible layer to the interval's sum."""
        if key in self.acc:
            self.acc[key] += grad.detach().to(self.acc[key].device, torch.float32)
        else:
            self.acc[key] = grad.detach().to(torch.float32, copy=True)

    def due(self, step: int) -> bool:
        return step > 0 and step % self.interval == 0 and bool(self.acc)

    def decide(self, step: int, all_reduce_mean) -> bool:
        """End an interval: average the layers' norms over ranks with ``all_reduce_mean``
        (flat float64 tensor -> same), update every layer's regime; True if any changed."""
        keys = sorted(self.acc)
        local = torch.tensor([float(self.acc[k].norm()) for k in keys], dtype=torch.float64)
        norms = all_reduce_mean(local).tolist()
        self.acc.clear()
        changed = False
        for k, cur in zip(keys, norms):
            if not math.isfinite(cur):  # an inf/NaN step (AMP skips it): decide next time
                continue
            prev = self.norms.get(k)
            critical = prev is None or abs(prev - cur) >= self.threshold * prev
            changed |= critical != self.critical.get(k, True)
            self.critical[k] = critical
            self.norms[k] = cur
        if changed:
            self.switches.append({"step": step, "critical": [k for k in keys if self.critical[k]]})
        return changed

    def state_dict(self) -> dict:
        return {"acc": {k: v.clone() for k, v in self.acc.items()}, "norms": dict(self.norms),
                "critical": dict(self.critical), "switches": list(self.switches)}

    def load_state_dict(self, state: dict) -> None:
        self.acc = {k: v.clone() for k, v in state["acc"].items()}
        self.norms = {k: float(v) for k, v in state["norms"].items()}
        self.critical = {k: bool(v) for k, v in state["critical"].items()}
        self.switches = list(state["switches"])
