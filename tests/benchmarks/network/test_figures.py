"""netbench's figures over seeds: means and Student-t intervals worked out by hand, a figure
missing in one seed kept without a mean; ``--seeds`` parsed and checked."""

from __future__ import annotations

import pytest

from benchmarks.network import netbench
from benchmarks.network.figures import over_seeds


def test_over_seeds_mean_interval_and_missing_values():
    per_seed = [{"cnn": {"a_over_b_time": 0.5, "c_over_b_time": None, "d": None}},
                {"cnn": {"a_over_b_time": 0.7, "c_over_b_time": 2.0, "d": None}},
                {"cnn": {"a_over_b_time": 0.6, "c_over_b_time": 1.0, "d": None}}]
    out = over_seeds(per_seed)["cnn"]
    # mean 0.6, sample sd 0.1, t(0.975, 2) = 4.3027: half-width 4.3027 * 0.1 / sqrt(3)
    assert out["a_over_b_time"]["mean"] == pytest.approx(0.6)
    assert out["a_over_b_time"]["ci95"] == pytest.approx(4.3027 * 0.1 / 3 ** 0.5, rel=1e-4)
    assert out["c_over_b_time"] == {"mean": None, "ci95": None, "per_seed": [None, 2.0, 1.0]}
    assert "d" not in out


def test_seeds_flag():
    assert netbench.parse_args(["--seeds", "0,1,2", "--arms", "allreduce"]).seeds == [0, 1, 2]
    assert netbench.parse_args(["--seed", "4", "--arms", "allreduce"]).seeds == [4]
    for bad in ("0,0", "a,1", ","):
        with pytest.raises(SystemExit):
            netbench.parse_args(["--seeds", bad, "--arms", "allreduce"])
