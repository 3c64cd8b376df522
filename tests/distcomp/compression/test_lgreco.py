import math

import pytest
import torch

from distcomp import get_compressor
from distcomp.compression.lgreco import LGreCo, LGreCoConfig, candidates
from distcomp.compression.methods.qsgd import expected_errors


def randn(*shape, seed=0):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


def test_powersgd_candidates_follow_gamma_beta_and_the_shape():
    ps = get_compressor("powersgd")
    cfg = LGreCoConfig()
    assert candidates(ps, cfg, torch.Size([256, 512]), 4, 1.0) == [2, 3, 4, 5, 6, 7, 8]
    wide = LGreCoConfig(gamma=0.25, beta=4)
    assert candidates(ps, wide, torch.Size([256, 512]), 4, 1.0) == list(range(1, 17))
    assert max(candidates(ps, cfg, torch.Size([6, 512]), 4, 0.0)) <= 6  # capped by the shape
    # only settings that still save bytes: 4 r (n + m) < 4 n m
    assert candidates(ps, cfg, torch.Size([16, 16]), 4, 1.0) == [2, 3, 4, 5, 6, 7]


def test_topk_and_qsgd_candidates():
    tk, qs = get_compressor("topk"), get_compressor("qsgd")
    cfg = LGreCoConfig()
    dens = candidates(tk, cfg, torch.Size([512, 512]), 0.01, 1.0)
    assert len(dens) == 9 and math.isclose(dens[0], 0.0025) and math.isclose(dens[-1], 0.04)
    assert 0.01 in dens
    assert all(math.isclose(b / a, dens[1] / dens[0]) for a, b in zip(dens, dens[1:]))  # log grid
    assert candidates(qs, cfg, torch.Size([512, 512]), 4, 1.0) == [2, 3, 4, 6, 8]


def test_powersgd_error_is_the_svd_tail():
    g = randn(40, 30)
    errs = get_compressor("powersgd").candidate_errors(g, [1, 5, 30])
    u, s, vh = torch.linalg.svd(g, full_matrices=False)
    for r, e in zip([1, 5, 30], errs):
        best = (u[:, :r] * s[:r]) @ vh[:r]
        assert math.isclose(e, float((g - best).norm()), rel_tol=1e-4, abs_tol=1e-4)


def test_topk_error_matches_the_compressor():
    tk = get_compressor("topk")
    g = randn(50, 20)
    for d, e in zip([0.01, 0.1, 0.5], tk.candidate_errors(g, [0.01, 0.1, 0.5])):
        assert math.isclose(e, float((g - tk.roundtrip(g, d)).norm()), rel_tol=1e-5)


@pytest.mark.parametrize("norm", ["max", "l2"])
@pytest.mark.parametrize("bits", [2, 4, 8])
def test_qsgd_expected_error_matches_sampling(bits, norm):
    qs = get_compressor("qsgd", qsgd_bucket_size=64, qsgd_norm=norm)
    g = randn(32, 32, seed=bits)
    gen = torch.Generator().manual_seed(0)
    mse = sum(float((qs.roundtrip(g, bits, gen) - g).pow(2).sum()) for _ in range(400)) / 400
    assert math.isclose(expected_errors(g, [bits], 64, norm)[0], math.sqrt(mse), rel_tol=0.05)


def test_schedule():
    lg = LGreCo(LGreCoConfig(warmup_steps=10, period=20, window=3), get_compressor("topk"),
                0.01, 1.0)
    assert [s for s in range(60) if lg.in_window(s)] == [7, 8, 9, 27, 28, 29, 47, 48, 49]
    assert [s for s in range(60) if lg.plan_steps_due(s)] == [10, 30, 50]


@pytest.mark.parametrize(
    "options,match",
    [
        ({"alpha": 0.0}, "alpha"),
        ({"alpha": float("inf")}, "alpha"),
        ({"gamma": 0.0}, "gamma"),
        ({"gamma": 3.0, "beta": 2.0}, "beta"),
        ({"qsgd_bits": (1, 4)}, "qsgd_bits"),
        ({"qsgd_bits": ()}, "qsgd_bits"),
        ({"window": 10, "warmup_steps": 5}, "warmup_steps"),
        ({"period": 0}, "period"),
        ({"bins": 0}, "bins"),
        ({"topk_span": 1.0}, "topk_span"),
        ({"beta": float("inf")}, "beta"),
        ({"alpha": True}, "alpha"),
        ({"window": 6, "period": 5, "warmup_steps": 6}, "period"),
        ({"error_measure": "l2"}, "error_measure"),
    ],
)
def test_invalid_configs_raise(options, match):
    with pytest.raises(ValueError, match=match):
        LGreCoConfig(**options)


def test_large_matrices_use_the_randomized_tail_accurately():
    u = randn(300, 12) @ torch.diag(torch.logspace(1, -1, 12)) @ randn(12, 200, seed=1)
    g = u + 0.05 * randn(300, 200, seed=2)
    errs = get_compressor("powersgd").candidate_errors(g, [2, 4, 8])
    s2 = torch.linalg.svdvals(g).double().pow(2)
    for r, e in zip([2, 4, 8], errs):
        assert math.isclose(e, float(s2[r:].sum().sqrt()), rel_tol=1e-3)


def _plan_once(measure: str, alpha: float = 1.0, scale0: float = 3.0) -> LGreCo:
    """Plan PowerSGD ranks (uniform 4) for three layers whose spectra decay very differently
    (layer0's gradient ``scale0`` times the others')."""
    lg = LGreCo(LGreCoConfig(warmup_steps=1, window=1, error_measure=measure, alpha=alpha),
                get_compressor("powersgd"), 4, 1.0)
    for i, decay in enumerate((0.3, 1.0, 3.0)):
        spectrum = torch.logspace(0, -decay, 24) * (scale0 if i == 0 else 1.0)
        g = randn(96, 24, seed=i) @ torch.diag(spectrum) @ torch.linalg.qr(randn(24, 24))[0]
        lg.observe(f"layer{i}", g, step=0)
    lg.plan(1, lambda t: t)
    return lg


@pytest.mark.parametrize("measure", ["gradient", "layer_sum", "relative"])
@pytest.mark.parametrize("alpha", [1.0, 1.5])
def test_plan_meets_its_budget_under_its_error_measure(measure, alpha):
    lg = _plan_once(measure, alpha)
    plan = lg.plans[-1]
    assert plan["bytes"] <= plan["uniform_bytes"]
    assert plan["bytes"] < plan["uniform_bytes"] or alpha == 1.0  # a looser budget saves
    assert plan["ratios"][measure] <= alpha * (1 + 1e-9)
    assert lg.error_ratio == pytest.approx(plan["ratios"][measure])
    errors = [r["error"] for r in lg.rows]
    if measure == "relative":
        errors = [e / r["grad_norm"] for e, r in zip(errors, lg.rows)]
    expected = sum(errors) if measure == "layer_sum" else math.sqrt(sum(e * e for e in errors))
    assert plan["error"] == pytest.approx(expected)


def test_relative_measure_plans_by_each_layers_own_scale():
    """Adam's case: a layer whose gradient is 100x smaller keeps its rank under "relative";
    the whole-gradient measure takes rank from it, since its absolute tail is negligible."""
    def settings(measure, scale0):
        return _plan_once(measure, scale0=scale0).plans[-1]["settings"]

    assert settings("relative", 1.0) == settings("relative", 100.0)
    assert settings("gradient", 100.0) != settings("gradient", 1.0)
    assert settings("gradient", 100.0)["layer1"] < settings("relative", 100.0)["layer1"]


def test_gradient_measure_moves_rank_to_the_layer_that_dominates_the_error():
    grad, layer = _plan_once("gradient").plans[-1], _plan_once("layer_sum").plans[-1]
    # the whole-gradient error is dominated by layer0's tail: spend rank there, cut the rest
    assert grad["settings"]["layer0"] > 4 > grad["settings"]["layer2"]
    assert grad["bytes"] < layer["bytes"]  # summed norms weigh the small tails as much
