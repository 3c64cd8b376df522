"""L-GreCo (Markov et al., MLSys 2024): layer-wise adaptive compression settings.

Layers differ hugely in size and in how much a given compression hurts them, so one setting
for all is wasteful. Periodically, L-GreCo measures for every compressed layer and every
candidate setting the error it would cause and the bytes it would cost, and picks per layer
the combination that minimises total bytes while total error stays <= alpha x the total error
of the user's uniform setting (the budget). Total error is by default that of the whole model
gradient, sqrt(sum of squared layer errors); ``error_measure="layer_sum"`` sums the layer norms
instead. See :mod:`distcomp.compression.planner` for the solver.

Schedule (steps counted by the reducer): plans are made at steps warmup_steps + k * period.
During the `window` steps before each plan, every compressed layer's compensated gradient
(gradient + error-feedback residual) is summed; at the plan step every rank measures its local
error table, one all-reduce averages it, and every rank solves the same problem on the same
numbers, so all ranks adopt the identical plan (mismatched plans would mismatch collectives).

Errors per candidate (of the windowed sum G) come from each method
(:meth:`~distcomp.compression.compressor.Compressor.candidate_errors`): PowerSGD's SVD tail,
top-k's dropped entries, QSGD's expected rounding error, ...
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, fields
from typing import Any, Literal

import torch

from distcomp.compression.compressor import Compressor, knob_owners, method_class, method_names
from distcomp.compression.planner import solve
from distcomp.knobs import Knobs, knob

ERROR_MEASURES = ("gradient", "layer_sum", "relative")


@dataclass(frozen=True, init=False)
class LGreCoConfig(Knobs):
    """Knobs of the adaptive planner.

    warmup_steps: first plan at this step (before it: the uniform setting), or at the end of
        the compression's dense warm-up where that is later. >= window.
    period: steps between re-plans.
    window: steps of gradients summed for the statistics of each plan.
    alpha: error budget as a multiple of the uniform setting's total error (1.0: no worse).
    error_measure: what "total error" is.
        "gradient" (default): the error of the whole model gradient, sqrt(sum_l e_l^2). This is
            the quantity error-feedback convergence bounds use (the concatenated compressor is
            at least as contractive as the uniform one on the measured gradients), and it lets
            the planner trade rank between layers by their squared error, so a layer whose tail
            is tiny next to another's costs nothing to compress harder.
        "layer_sum": the plain sum of per-layer norms, sum_l e_l: every layer's error counts
            linearly, which protects small layers but saves fewer bytes.
        "relative": sqrt(sum_l (e_l / |g_l|)^2), each layer's error relative to its own
            gradient norm. For optimizers that rescale every coordinate (Adam), a layer's update
            direction is what its relative error perturbs, whatever its gradient's size: the
            absolute measure lets the planner starve layers whose gradients are small.
    bins: resolution of the discretised error axis of the dynamic program.
    plans: method name -> the knobs of its candidates (its class's ``Plan``: PowerSGD's
        ``gamma``, ``beta``; top-k's ``topk_span``, ``topk_points``; QSGD's ``qsgd_bits``),
        built from the flat keywords like the other fields and read as attributes too.
    """

    warmup_steps: int = knob(50, low=1)
    period: int = knob(500, low=1)
    window: int = knob(5, low=1)
    alpha: float = knob(1.0, low=0.0, high=1e6, low_open=True)
    bins: int = knob(10000, low=1)
    error_measure: Literal["gradient", "layer_sum", "relative"] = "gradient"
    plans: dict = field(default=None, metadata={"nested": True})

    def __init__(self, plans: dict | None = None, **flat: Any):
        shared = {f.name for f in fields(self)} - {"plans"}
        owners = knob_owners("Plan")
        unknown = sorted(k for k in flat if k not in shared and k not in owners)
        if unknown:
            raise ValueError(f"unknown L-GreCo options {unknown}")
        if plans is None:
            plans = {}
            for name in method_names():
                kind = method_class(name).Plan
                if kind is not None:
                    mine = {f.name for f in fields(kind)}
                    plans[name] = kind(**{k: v for k, v in flat.items() if k in mine})
        defaults = {f.name: f.default for f in fields(self) if f.name in shared}
        for name, value in {**defaults, **{k: v for k, v in flat.items() if k in shared},
                            "plans": plans}.items():
            object.__setattr__(self, name, value)
        self.__post_init__()

    def __getattr__(self, name: str) -> Any:
        # called only for names that are not fields: a method's candidate knob
        if name.startswith("_") or name == "plans":
            raise AttributeError(name)
        for plan in object.__getattribute__(self, "plans").values():
            if hasattr(plan, name):
                return getattr(plan, name)
        raise AttributeError(f"LGreCoConfig has no option {name!r}")

    def check(self) -> None:
        if self.warmup_steps < self.window:
            raise ValueError(f"warmup_steps must be an integer >= window ({self.window}), "
                             f"got {self.warmup_steps!r}")
        if self.window > self.period:
            raise ValueError(f"window ({self.window}) must be <= period ({self.period})")

    def plan_for(self, method: str) -> Knobs | None:
        """The candidate knobs of ``method`` (None: it declares none)."""
        return self.plans.get(method)

    def to_dict(self) -> dict:
        """Every knob flat: the planner's and each method's candidate knobs."""
        out = {f.name: getattr(self, f.name) for f in fields(self) if f.name != "plans"}
        for plan in self.plans.values():
            out.update(plan.to_dict())
        return out

    @classmethod
    def from_dict(cls, d: dict, what: str | None = None) -> LGreCoConfig:
        return cls(**d)


def total_error(errors: list[float], measure: str, norms: list[float] | None = None) -> float:
    """Total of per-layer error norms under ``measure`` (see LGreCoConfig.error_measure);
    ``norms``: the layers' gradient norms, which "relative" divides by (0: the layer counts 0)."""
    if measure == "relative":
        errors = relative(errors, norms or [0.0] * len(errors))
    if measure in ("gradient", "relative"):
        return math.sqrt(sum(e * e for e in errors))
    return sum(errors)


def relative(errors: list[float], norm: float | list[float]) -> list[float]:
    """Errors over a gradient norm (one per error, or one for all); 0 where the norm is 0."""
    norms = norm if isinstance(norm, list) else [norm] * len(errors)
    return [e / n if n > 0 else 0.0 for e, n in zip(errors, norms)]


def candidates(comp: Compressor, cfg: LGreCoConfig, shape: torch.Size, uniform: float,
               min_rate: float) -> list[float]:
    """Settings to choose from for one layer (the method's, uniform included); only those that
    compress it."""
    opts = sorted({*comp.candidates(uniform, shape, cfg.plan_for(comp.name)), uniform})
    return [s for s in opts if comp.compresses(shape, s, min_rate)]


class LGreCo:
    """Planner state of one process. Fields:

    layers: key -> shape of every compressed layer seen (in first-seen order).
    acc: key -> windowed sum of compensated gradients (only during a window).
    table: key -> (candidate settings, rank-averaged errors, bytes) of the last measurement;
        :meth:`choose` solves against any baseline from it without measuring again (the
        Accordion schedule changes the baseline between plans).
    norms: key -> rank-averaged norm of the windowed gradient of the last measurement (what
        the "relative" error measure divides by).
    plans: list of {"step", "settings", "bytes", "uniform_bytes", "error", "uniform_error",
        "ratios"}, one per re-plan: totals under the configured error measure, and "ratios"
        (plan / uniform) under every measure. "rows" of the latest give the per-layer table.
    """

    def __init__(self, config: LGreCoConfig, comp: Compressor, uniform: float, min_rate: float):
        self.config, self.comp, self.uniform, self.min_rate = config, comp, uniform, min_rate
        self.layers: dict[str, torch.Size] = {}
        self.acc: dict[str, torch.Tensor] = {}
        self.plans: list[dict] = []
        self.rows: list[dict] = []
        self.table: dict[str, tuple[list[float], list[float], list[int]]] = {}
        self.norms: dict[str, float] = {}

    def plan_steps_due(self, step: int) -> bool:
        c = self.config
        return step >= c.warmup_steps and (step - c.warmup_steps) % c.period == 0

    def in_window(self, step: int) -> bool:
        c = self.config
        if step < c.warmup_steps - c.window:
            return False
        nxt = c.warmup_steps if step < c.warmup_steps else (
            c.warmup_steps + ((step - c.warmup_steps) // c.period + 1) * c.period)
        return nxt - c.window <= step < nxt

    def observe(self, key: str, compensated: torch.Tensor, step: int) -> None:
        """Record a compressed layer's gradient + residual of this step (if in a window)."""
        self.layers.setdefault(key, compensated.shape)
        if self.in_window(step):
            if key in self.acc:
                self.acc[key] += compensated.to(self.acc[key].device)
            else:
                self.acc[key] = compensated.detach().clone()

    def plan(self, step: int, all_reduce_mean,
             baseline: dict[str, float] | None = None) -> dict[str, float]:
        """Measure (:meth:`measure`) and solve against ``baseline`` (:meth:`choose`; default:
        the uniform setting everywhere); returns the new per-layer settings."""
        self.measure(all_reduce_mean, (self.uniform,) if baseline is None else
                     tuple(sorted(set(baseline.values()))))
        return self.choose(step, baseline)

    def measure(self, all_reduce_mean, budgets: tuple[float, ...]) -> None:
        """Measure this rank's error table over the candidates of every setting in ``budgets``
        (the settings a baseline may use), average it across ranks with ``all_reduce_mean``
        (one flat fp64 tensor -> same) and keep it in ``table`` for :meth:`choose`."""
        keys = sorted(self.layers)
        cands = []
        for k in keys:
            opts = {s for b in budgets for s in
                    candidates(self.comp, self.config, self.layers[k], b, self.min_rate)}
            cands.append(sorted(opts | set(budgets)))
        local = []
        for k, cs in zip(keys, cands):
            g = self.acc.get(k)
            local += self._errors(g, self.layers[k], cs)
        local += [float(self.acc[k].norm()) if k in self.acc else 0.0 for k in keys]
        errors_flat = all_reduce_mean(torch.tensor(local, dtype=torch.float64)).tolist()
        self.acc.clear()
        self.norms = dict(zip(keys, errors_flat[len(errors_flat) - len(keys):]))
        self.table, pos = {}, 0
        for k, cs in zip(keys, cands):
            shape = self.layers[k]
            self.table[k] = (cs, errors_flat[pos : pos + len(cs)],
                             [self.cost_bytes(shape, s) for s in cs])
            pos += len(cs)

    def _errors(self, g: torch.Tensor | None, shape: torch.Size, cs: list[float]) -> list[float]:
        """||g - C_s(g)|| per candidate; 0 for a setting that would travel dense."""
        squeezing = [s for s in cs if self.comp.compresses(shape, s, self.min_rate)]
        if g is None or not squeezing:
            return [0.0] * len(cs)
        measured = dict(zip(squeezing, self.comp.candidate_errors(g, squeezing)))
        return [measured.get(s, 0.0) for s in cs]

    def cost_bytes(self, shape: torch.Size, setting: float) -> int:
        """Bytes the layer costs at ``setting``: its payload, or dense fp32 where the setting
        would not compress it (the reducer then sends it uncompressed)."""
        if self.comp.compresses(shape, setting, self.min_rate):
            return self.comp.wire_bytes(shape, setting)
        return self.comp.dense_bytes(shape)

    def choose(self, step: int, baseline: dict[str, float] | None = None) -> dict[str, float]:
        """Minimum-bytes settings whose total error is <= alpha x that of ``baseline`` (key ->
        the setting each layer would otherwise get; default: the uniform setting), from the
        last measured table. Records the plan in ``plans`` and ``rows``."""
        keys = sorted(self.table)
        base = {k: self.uniform for k in keys} if baseline is None else baseline
        cands = [self.table[k][0] for k in keys]
        errors = [self.table[k][1] for k in keys]
        bytes_ = [self.table[k][2] for k in keys]
        norms = [self.norms.get(k, 0.0) for k in keys]
        uni = [cs.index(base.get(k, self.uniform)) for k, cs in zip(keys, cands)]
        u_bytes = sum(b[i] for b, i in zip(bytes_, uni))
        measure = self.config.error_measure
        power = 1 if measure == "layer_sum" else 2
        scaled = [relative(e, n) for e, n in zip(errors, norms)] if measure == "relative" \
            else errors
        costs = [[x**power for x in e] for e in scaled]
        budget = self.config.alpha**power * sum(c[i] for c, i in zip(costs, uni))
        result = solve(bytes_, costs, budget, self.config.bins)
        if result is None or result.total_bytes > u_bytes:
            choice = uni  # never worse than the baseline
        else:
            choice = list(result.choice)
        settings = {k: cs[c] for k, cs, c in zip(keys, cands, choice)}
        self.rows = [
            {"name": k, "shape": list(self.layers[k]), "setting": cs[c],
             "bytes": b[c], "error": e[c], "uniform_setting": cs[u], "uniform_bytes": b[u],
             "uniform_error": e[u], "grad_norm": n}
            for k, cs, c, b, e, u, n in zip(keys, cands, choice, bytes_, errors, uni, norms)
        ]
        totals = {m: (total_error([r["error"] for r in self.rows], m, norms),
                      total_error([r["uniform_error"] for r in self.rows], m, norms))
                  for m in ERROR_MEASURES}
        error, u_error = totals[self.config.error_measure]
        self.plans.append({
            "step": step, "settings": settings,
            "bytes": sum(r["bytes"] for r in self.rows), "uniform_bytes": u_bytes,
            "error": error, "uniform_error": u_error,
            "ratios": {m: a / b if b else None for m, (a, b) in totals.items()},
        })
        return settings

    @property
    def error_ratio(self) -> float | None:
        """Total error of the latest plan / that of the uniform setting (None before a plan)."""
        if not self.plans or not self.plans[-1]["uniform_error"]:
            return None
        return self.plans[-1]["error"] / self.plans[-1]["uniform_error"]

    def state_dict(self) -> dict:
        return {
            "config": self.config.to_dict(),
            "layers": {k: list(v) for k, v in self.layers.items()},
            "acc": {k: v.clone() for k, v in self.acc.items()},
            "plans": list(self.plans),
            "rows": list(self.rows),
            "table": {k: [list(c) for c in v] for k, v in self.table.items()},
            "norms": dict(self.norms),
        }

    def load_state_dict(self, state: dict) -> None:
        saved = LGreCoConfig.from_dict(state["config"])
        if saved != self.config:
            raise ValueError(f"checkpoint was planned with {saved}, this run uses {self.config}")
        self.layers = {k: torch.Size(v) for k, v in state["layers"].items()}
        self.acc = {k: v.clone() for k, v in state["acc"].items()}
        self.plans = list(state["plans"])
        self.rows = list(state["rows"])
        self.table = {k: tuple(list(c) for c in v) for k, v in state.get("table", {}).items()}
        self.norms = dict(state.get("norms", {}))
