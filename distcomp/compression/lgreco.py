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

Errors per candidate (of the windowed sum G):
  PowerSGD rank r:  ||G - G_r||_F, the SVD tail, from the top singular values (exact SVD for
                    small matrices, randomized subspace iteration for large ones);
  top-k density d:  norm of all but the k largest entries (one sort serves every density);
  QSGD b bits:      expected stochastic-rounding error, sqrt(sum (scale/L)^2 p (1 - p)),
                    p the fractional level of each entry: deterministic, no sampling noise.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields

import torch

from distcomp.compression.compressor import Compressor
from distcomp.compression.methods.powersgd import as_matrix, matrix_shape
from distcomp.compression.planner import solve

QSGD_BITS = (2, 3, 4, 6, 8)
ERROR_MEASURES = ("gradient", "layer_sum", "relative")


@dataclass(frozen=True)
class LGreCoConfig:
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
    gamma, beta: PowerSGD candidate ranks are the integers in [ceil(gamma r), floor(beta r)].
    topk_span, topk_points: top-k candidates: topk_points densities log-spaced in
        [d / topk_span, d * topk_span] (capped at 1).
    qsgd_bits: QSGD candidate bit widths.
    bins: resolution of the discretised error axis of the dynamic program.
    """

    warmup_steps: int = 50
    period: int = 500
    window: int = 5
    alpha: float = 1.0
    gamma: float = 0.5
    beta: float = 2.0
    topk_span: float = 4.0
    topk_points: int = 9
    qsgd_bits: tuple[int, ...] = QSGD_BITS
    bins: int = 10000
    error_measure: str = "gradient"

    def __post_init__(self) -> None:
        for name in ("period", "window", "topk_points", "bins"):
            _check_int(name, getattr(self, name), low=1)
        _check_int("warmup_steps", self.warmup_steps, low=self.window)
        if self.window > self.period:
            raise ValueError(f"window ({self.window}) must be <= period ({self.period})")
        for name, low in (("alpha", 0.0), ("gamma", 0.0), ("topk_span", 1.0), ("beta", 0.0)):
            value = getattr(self, name)
            ok = isinstance(value, (int, float)) and not isinstance(value, bool)
            if not (ok and math.isfinite(value) and low < value <= 1e6):
                raise ValueError(f"{name} must be a finite number in ({low}, 1e6], got {value!r}")
        if self.beta < self.gamma:
            raise ValueError(f"beta must be >= gamma ({self.gamma}), got {self.beta!r}")
        if self.error_measure not in ERROR_MEASURES:
            raise ValueError(f"error_measure must be one of {ERROR_MEASURES}, "
                             f"got {self.error_measure!r}")
        bits = tuple(self.qsgd_bits)
        if not bits or any(b not in (2, 3, 4, 5, 6, 7, 8, 16, 32) for b in bits):
            raise ValueError(f"qsgd_bits must be a non-empty subset of 2..8, 16, 32, got {bits}")
        object.__setattr__(self, "qsgd_bits", tuple(sorted(set(bits))))


    @classmethod
    def from_dict(cls, d: dict) -> LGreCoConfig:
        unknown = set(d) - {f.name for f in fields(cls)}
        if unknown:
            raise ValueError(f"unknown L-GreCo options {sorted(unknown)}")
        return cls(**{k: tuple(v) if k == "qsgd_bits" else v for k, v in d.items()})


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


def _check_int(name: str, value, low: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise ValueError(f"{name} must be an integer >= {low}, got {value!r}")


def candidates(comp: Compressor, cfg: LGreCoConfig, shape: torch.Size, uniform: float,
               min_rate: float) -> list[float]:
    """Settings to choose from for one layer; only those that compress it, uniform included."""
    if comp.name == "powersgd":
        cap = min(matrix_shape(shape))
        lo, hi = max(1, math.ceil(cfg.gamma * uniform)), min(cap, math.floor(cfg.beta * uniform))
        opts: list[float] = list(range(lo, hi + 1))
    elif comp.name == "topk":
        n = cfg.topk_points
        exps = [2 * i / (n - 1) - 1 for i in range(n)] if n > 1 else [0.0]  # symmetric in [-1, 1]
        opts = [min(1.0, uniform * cfg.topk_span**t) for t in exps]
    else:
        opts = list(cfg.qsgd_bits)
    opts = sorted({*opts, uniform})
    return [s for s in opts if comp.compresses(shape, s, min_rate)]


def candidate_errors(comp: Compressor, g: torch.Tensor, settings: list[float]) -> list[float]:
    """||g - C_s(g)|| for every setting s (see the module docstring for each family)."""
    g = g.detach().float()
    if comp.name == "powersgd":
        m = as_matrix(g)
        top = top_singular_values(m, int(max(settings))).double().pow(2)
        total = float(m.double().pow(2).sum())
        head = [0.0] + top.cumsum(0).tolist()  # head[r] = sum of the r largest s_i^2
        return [math.sqrt(max(0.0, total - head[min(int(r), len(head) - 1)]))
                if int(r) < min(m.shape) else 0.0 for r in settings]
    if comp.name == "topk":
        flat = g.reshape(-1)
        total = float(flat.double().pow(2).sum())
        ks = [comp.k_for(flat.numel(), d) for d in settings]
        # only the largest max(k) magnitudes matter: a partial top-k, not a full sort
        top = torch.topk(flat.abs(), max(ks), sorted=True).values.double().pow(2).cumsum(0)
        return [math.sqrt(max(0.0, total - float(top[k - 1]))) for k in ks]
    return qsgd_expected_errors(g, [int(b) for b in settings], comp.bucket_size, comp.norm)


def top_singular_values(m: torch.Tensor, k: int, oversample: int = 8, iters: int = 4,
                        seed: int = 0) -> torch.Tensor:
    """The k largest singular values of m (n, m'). Exact (svdvals) for small matrices; for large
    ones randomized subspace iteration (Halko et al. 2011) with a private generator, so the
    caller's RNG stream is untouched: O(n m' (k + oversample) iters) instead of a full SVD."""
    p = k + oversample
    if min(m.shape) <= 2 * p:
        return torch.linalg.svdvals(m)[:k]
    gen = torch.Generator(device=m.device).manual_seed(seed)
    q = torch.randn(m.shape[1], p, generator=gen, device=m.device, dtype=m.dtype)
    for _ in range(iters):
        y = torch.linalg.qr(m @ q).Q
        q = torch.linalg.qr(m.t() @ y).Q
    return torch.linalg.svdvals(m @ q)[:k]


def qsgd_expected_errors(g: torch.Tensor, bits: list[int], bucket_size: int,
                         norm: str) -> list[float]:
    """sqrt(E||Q_b(g) - g||^2) of QSGD stochastic rounding for each bit width b, exactly: an
    entry at fractional level p contributes (scale / L)^2 p (1 - p). The scales are shared by
    every b, so they are computed once."""
    x = g.reshape(-1).float()
    nb = math.ceil(x.numel() / bucket_size)
    padded = torch.zeros(nb * bucket_size, dtype=torch.float32, device=x.device)
    padded[: x.numel()] = x
    buckets = padded.view(nb, bucket_size)
    scale = buckets.abs().amax(1) if norm == "max" else buckets.norm(dim=1)
    safe = torch.where(scale > 0, scale, torch.ones_like(scale))
    unit = buckets.abs_().div_(safe.unsqueeze(1))  # |x| / scale in [0, 1]
    out = []
    for b in bits:
        levels = (1 << (b - 1)) - 1
        y = unit * levels
        p = y.sub_(y.floor())
        per_bucket = p.mul_(1 - p).sum(1, dtype=torch.float64)
        out.append(float((per_bucket * (safe.double() / levels) ** 2).sum().sqrt()))
    return out


def qsgd_expected_error(g: torch.Tensor, bits: int, bucket_size: int, norm: str) -> float:
    """:func:`qsgd_expected_errors` for one bit width."""
    return qsgd_expected_errors(g, [bits], bucket_size, norm)[0]


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
        measured = dict(zip(squeezing, candidate_errors(self.comp, g, squeezing)))
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
            "config": asdict(self.config),
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
